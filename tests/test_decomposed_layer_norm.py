"""ViT ONNX files exported below opset 17, where torch writes each LayerNorm out as
ReduceMean → Sub → Pow → ReduceMean → Add(eps) → Sqrt → Div → Mul → Add: cut as the opset-17
file of the same model, with the class-token shortcut, maps equal to the torch model's; the
same ops computing something else are no LayerNorm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import toy_models
from conftest import read_manifest
from export.artifact.graph_files import tracing
from export.graphfile.onnx_graph import OnnxGraph
from export.graphfile.onnx_layer_norm import layer_norms
from export.graphfile.onnx_tokens import find_token_cuts
from export.graphfile.pipeline import export_graph_file
from reciprocam_ir import ReciproCAM
from reciprocam_ir.masking import spatial_masks
from reciprocam_ir.saliency import normalise
from torch_reference import masked_token_scores

pytest.importorskip("timm")

OPTIONS = {"mean": (0.5,) * 3, "std": (0.25,) * 3}


def timm_exportable() -> torch.nn.Module:
    """tiny_timm_vit as timm's exportable config builds it (attention not fused, so that
    opset 13, which has no scaled_dot_product_attention, can express it)."""
    model = toy_models.tiny_timm_vit()
    for block in model.blocks:
        block.attn.fused_attn = False
    return model


MODELS = {"hf": (toy_models.hf_vit, "layer.1"), "timm": (toy_models.tiny_timm_vit, "blocks.1"),
          "timm_eager": (timm_exportable, "blocks.1")}
DECOMPOSED = [("hf", 14), ("hf", 13), ("timm", 14), ("timm_eager", 13)]


def exported(model: torch.nn.Module, path: Path, opset: int) -> Path:
    """The model exported whole at ``opset`` by torch's TorchScript exporter."""
    with tracing():
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                          opset_version=opset, input_names=["pixel_values"],
                          output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "b"}, "logits": {0: "b"}})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[tuple[str, int], Path]:
    folder = tmp_path_factory.mktemp("decomposed")
    return {(name, opset): exported(MODELS[name][0](), folder / f"{name}_{opset}.onnx", opset)
            for name, opset in [*DECOMPOSED, ("hf", 17), ("timm", 17)]}


@pytest.fixture(scope="module")
def artifacts(files, tmp_path_factory) -> dict[tuple[str, int], tuple[Path, list[str]]]:
    folder = tmp_path_factory.mktemp("decomposed_artifacts")
    made = {}
    for (name, opset), path in files.items():
        logs: list[str] = []
        made[name, opset] = (export_graph_file(str(path), out=folder / f"{name}_{opset}",
                                               fmt="onnx", log=logs.append, **OPTIONS), logs)
    return made


def test_torch_writes_the_layer_norms_out_below_opset_17(files):
    ops = {key: {n.op_type for n in onnx.load(str(path)).graph.node}
           for key, path in files.items()}
    assert all("LayerNormalization" not in ops[key] and "Erf" in ops[key] for key in DECOMPOSED)
    assert "LayerNormalization" in ops["hf", 17]


def test_the_decomposed_norms_are_read_with_their_parameters(files):
    model = toy_models.hf_vit()
    torch_norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    found = layer_norms(onnx.load(str(files["hf", 14])).graph)
    assert len(found) == len(torch_norms) == 5
    for norm, module in zip(found, torch_norms, strict=True):
        np.testing.assert_array_equal(norm.gamma, module.weight.detach().numpy())
        np.testing.assert_array_equal(norm.beta, module.bias.detach().numpy())
        assert norm.epsilon == pytest.approx(module.eps)


@pytest.mark.parametrize("name, opset", DECOMPOSED)
def test_cut_and_tail_are_those_of_the_opset_17_file(artifacts, name, opset):
    folder, logs = artifacts[name, opset]
    same = read_manifest(artifacts[name.split("_")[0], 17][0])
    ours = read_manifest(folder)
    for field in ("target_layer", "feature", "token_tail"):
        assert ours[field] == same[field], field
    assert ours["token_tail"]["kind"] == "class_token"
    assert "tail: the class-token shortcut (checked equal to the masked sequences)" in logs


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name, opset", DECOMPOSED)
def test_maps_equal_the_torch_model(artifacts, name, opset, backend):
    factory, block = MODELS[name]
    cam = ReciproCAM(artifacts[name, opset][0], backend=backend, precision="f32")
    x = np.random.default_rng(opset).standard_normal((2, 3, 32, 32), dtype=np.float32)
    exp = cam.explain_tensor(x, top_k=2)
    masks = spatial_masks(4, 4, "gaussian")
    model = factory()
    reference = np.stack([normalise(masked_token_scores(model, block, x[i : i + 1], masks)
                                    [:, exp.targets[i]]).reshape(-1, 4, 4)
                          for i in range(len(x))])
    np.testing.assert_allclose(exp.saliency, reference, atol=1e-4)


def test_a_broken_last_norm_moves_the_cut_off_the_last_block(files, tmp_path):
    model = onnx.load(str(files["hf", 14]))
    graph = model.graph
    add = next(n for n in graph.node if n.name == "/layer.1/layernorm_before/Add")
    sqrt = next(n for n in graph.node if n.input and n.input[0] == add.output[0])
    sqrt.input[0] = add.input[0]
    graph.node.remove(add)
    path = tmp_path / "no_eps.onnx"
    onnx.save(model, str(path))
    cuts, _ = find_token_cuts(OnnxGraph(path))
    intact, _ = find_token_cuts(OnnxGraph(files["hf", 14]))
    assert [c.name for c in intact] == ["/Add_output_0", "/layer.0/Add_2_output_0"]
    assert [c.name for c in cuts] == ["/Add_output_0"]


def decomposed(variant: str = "") -> onnx.ModelProto:
    """One LayerNorm of a (2, 3, 4) tensor written out as torch writes it, or ``variant``:
    ``no_eps`` (the Add of epsilon left out), ``axis`` (means over axis 1), ``cube`` (x³ for
    x²), ``swapped`` (mean − x), ``shared`` (the mean also a graph output); ``identity``:
    the LayerNorm, its scale read through an ``Identity`` (torch's shared constants)."""
    const = numpy_helper.from_array
    inits = [const(np.array([1], np.int64), "axes"), const(np.float32(3 if variant == "cube"
                                                                     else 2), "two"),
             const(np.float32(1e-5), "eps"), const(np.linspace(0.5, 2, 4, dtype=np.float32),
                                                   "gamma"),
             const(np.linspace(-1, 1, 4, dtype=np.float32), "beta")]
    axes = [1] if variant == "axis" else [-1]
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=axes),
             helper.make_node("Sub", ["mean", "x"] if variant == "swapped" else ["x", "mean"],
                              ["d"]),
             helper.make_node("Pow", ["d", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=axes),
             helper.make_node("Add", ["var", "eps"], ["var_eps"]),
             helper.make_node("Sqrt", ["var" if variant == "no_eps" else "var_eps"], ["std"]),
             helper.make_node("Div", ["d", "std"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["scaled"]),
             helper.make_node("Add", ["scaled", "beta"], ["y"])]
    if variant == "no_eps":
        nodes.pop(4)
    if variant == "identity":
        nodes.insert(0, helper.make_node("Identity", ["gamma"], ["gamma_shared"]))
        nodes[-2].input[1] = "gamma_shared"
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])]
    if variant == "shared":
        outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, [2, 3, 1]))
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, 3, 4])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("variant", ["", "identity"])
def test_the_decomposition_is_the_layer_norm_it_is_read_as(variant):
    model = decomposed(variant)
    (norm,) = layer_norms(model.graph)
    assert (norm.input, norm.output, norm.readers) == ("x", "y", ("mean", "d"))
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    assert norm.gamma is not None and norm.beta is not None
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + norm.epsilon) * norm.gamma
                               + norm.beta, atol=1e-6)


@pytest.mark.parametrize("variant", ["no_eps", "axis", "cube", "swapped", "shared"])
def test_other_functions_of_the_same_ops_are_no_layer_norm(variant):
    assert layer_norms(decomposed(variant).graph) == []
