"""Prove an exporter change keeps its output: export a fixed set, then compare two sets.

    python scripts/export_snapshot.py inputs DIR            # the graph files exported from
    PYTHONPATH=CODE python scripts/export_snapshot.py run DIR INPUTS OUT
    python scripts/export_snapshot.py compare BEFORE AFTER

``run`` exports with the ``export`` package on PYTHONPATH (an old checkout, say
``git archive REV | tar -x -C CODE``): map and token exports of PyTorch models (seeded
``--weights none``), graph-file exports of each format (.onnx, .xml) of a map and a token
model, explain-mask variants, ``--list-layers`` and refusals (their stderr). ``compare``
wants every file byte-identical; an ONNX file that is not may still be the same graph up to
the names of its tensors (same nodes, wiring, attributes and initializer values), which it
reports apart. Exit 1 when anything else differs.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import warnings
from pathlib import Path

TOY = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]


def exports(inputs: Path) -> dict[str, list[str]]:
    """Name → reciprocam-export arguments (``--out`` added for the exports)."""
    resnet, vit = str(inputs / "resnet18"), str(inputs / "vit")
    return {
        "map": ["resnet18", "--weights", "none"],
        "map_window": ["resnet18", "--weights", "none", "--format", "onnx", "--explain-mask",
                       "window", "--explain-mask-sigma", "1.5", "--explain-mask-strength", "0.5",
                       "--explain-top-k", "2"],
        "map_gaussian": ["resnet18", "--weights", "none", "--format", "ir", "--explain-mask",
                         "gaussian"],
        "token": ["vit_b_32", "--weights", "none", "--format", "ir"],
        "file_map_onnx": [resnet + ".onnx"],
        "file_map_xml": [resnet + ".xml"],
        "file_token_onnx": [vit + ".onnx", *TOY],
        "file_token_xml": [vit + ".xml", *TOY, "--explain-mask", "drop",
                           "--explain-mask-sigma", "1"],
        "list_torch": ["resnet18", "--list-layers"],
        "list_file": [vit + ".xml", "--list-layers", *TOY],
        "bad_sigma": ["resnet18", "--weights", "none", "--explain-mask", "onehot",
                      "--explain-mask-sigma", "2"],
        "bad_strength": ["resnet18", "--weights", "none", "--explain-mask-strength", "0.5"],
        "bad_file_flag": ["resnet18", "--weights", "none", "--mean", "0", "0", "0"],
        "bad_weights": [vit + ".onnx", "--weights", "none"],
    }


def make_inputs(folder: Path) -> None:
    """A seeded resnet18 and a tiny ViT, each exported whole to ONNX and converted to IR."""
    import openvino as ov
    import torch
    import torchvision
    from torchvision.models.vision_transformer import VisionTransformer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=16, mlp_dim=32, num_classes=10)
    torch.nn.init.normal_(vit.heads.head.weight)
    vit.eval()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel has no ONNX form
    for name, model, size in (("resnet18", resnet, 224), ("vit", vit, 32)):
        path = folder / f"{name}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                              opset_version=17, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "b"}, "logits": {0: "b"}})
        ov.save_model(ov.convert_model(str(path)), str(folder / f"{name}.xml"),
                      compress_to_fp16=False)


def run(inputs: Path, out: Path) -> None:
    """Every export of :func:`exports` into ``out``: its folder, stdout (the folder name
    written as OUT) and stderr, and the exit code."""
    out.mkdir(parents=True, exist_ok=False)
    for name, args in exports(inputs).items():
        folder = out / name
        extra = [] if "--list-layers" in args else ["--out", str(folder)]
        proc = subprocess.run([sys.executable, "-m", "export.cli", *args, *extra, "-q"],
                              capture_output=True, text=True, env=dict(os.environ))
        (out / f"{name}.stdout").write_text(
            proc.stdout.replace(str(folder), "OUT") + f"exit {proc.returncode}\n")
        (out / f"{name}.stderr").write_text(proc.stderr)
        print(f"{name}: exit {proc.returncode}", flush=True)


def onnx_structure(path: Path) -> tuple:
    """An ONNX graph with its tensor and node names replaced by their order of appearance
    (initializers by their values)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    names = {v.name: f"input:{v.name}" for v in graph.input}

    def ref(name: str) -> object:
        if name in values:
            return (values[name].dtype.str, values[name].shape, values[name].tobytes())
        return names.setdefault(name, f"t{len(names)}") if name else ""

    nodes = []
    for node in graph.node:
        attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
        nodes.append((node.op_type, node.domain, attrs, tuple(ref(i) for i in node.input),
                      tuple(ref(o) for o in node.output)))
    outputs = tuple((names.get(v.name), v.type.SerializeToString()) for v in graph.output)
    inputs = tuple(v.SerializeToString() for v in graph.input)
    return tuple(nodes), outputs, inputs, len(graph.initializer)


def compare(before: Path, after: Path) -> int:
    """Print each file that differs; 0 when all are byte-identical (or ONNX graphs the same
    up to names, listed), else 1."""
    files = sorted({p.relative_to(before) for p in before.rglob("*") if p.is_file()}
                   | {p.relative_to(after) for p in after.rglob("*") if p.is_file()})
    renamed, differ = [], []
    for rel in files:
        a, b = before / rel, after / rel
        if a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False):
            continue
        if a.is_file() and b.is_file() and rel.suffix == ".onnx" \
                and onnx_structure(a) == onnx_structure(b):
            renamed.append(rel)
        else:
            differ.append(rel)
    print(f"{len(files)} files: {len(files) - len(renamed) - len(differ)} byte-identical, "
          f"{len(renamed)} ONNX graphs the same up to names, {len(differ)} different")
    for rel in renamed:
        print(f"  same up to names: {rel}")
    for rel in differ:
        print(f"  different: {rel}")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("inputs").add_argument("folder", type=Path)
    r = sub.add_parser("run")
    r.add_argument("inputs", type=Path)
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = p.parse_args(argv)
    if args.command == "inputs":
        make_inputs(args.folder)
        return 0
    if args.command == "run":
        run(args.inputs, args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
