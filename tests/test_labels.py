"""Class names: read from a graph's metadata (ONNX metadata_props, IR rt_info) or --labels."""

from __future__ import annotations

import json
import subprocess

import cv2
import openvino as ov
import pytest

from conftest import BIN, subprocess_env
from conftest import export_refused as refused
from conftest import read_manifest as manifest
from export import cli
from export.artifact.labels import names_from_metadata, parse_names
from graph_models import CLASSES, native_ir, tiny_classifier, to_ir, with_metadata

NAMES = ["cat", "dog", "red fox", "sea lion", "0"]
ENCODINGS = {
    "lines": ("character", "\n".join(NAMES) + "\n"),
    "json": ("labels", json.dumps(NAMES)),
    "python dict": ("names", str(dict(enumerate(NAMES)))),
}


@pytest.mark.parametrize("text, names", [
    ("a\nb\nc\n", ["a", "b", "c"]),
    ('["a", "b c"]', ["a", "b c"]),
    ("{0: 'a', 1: 'b'}", ["a", "b"]),
    ('{"1": "b", "0": "a"}', ["a", "b"]),  # JSON object keyed by index strings
    ("['a', 2]", ["a", "2"]),
    ("{0: 'a', 2: 'b'}", None),  # not indices 0..n-1
    ("__import__('os').getcwd()", None),  # never evaluated
    ("[__import__('os').getcwd()]", None),
    ("resnet50", None),
    ("", None),
])
def test_parse_names(text, names):
    assert parse_names(text) == names


def test_metadata_needs_one_name_per_class_and_prefers_label_keys():
    meta = {"author": "x\ny", "character": "a\nb\nc", "names": "{0: 'p', 1: 'q'}"}
    assert names_from_metadata(meta, 2) == ("names", ["p", "q"])
    assert names_from_metadata(meta, 3) == ("character", ["a", "b", "c"])
    assert names_from_metadata(meta, 4) is None


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The tiny classifier with its names in metadata_props, once per encoding."""
    d = tmp_path_factory.mktemp("labelled")
    return {kind: with_metadata(tiny_classifier(d / f"{kind.replace(' ', '_')}.onnx"),
                                {"producer": "test", key: value})
            for kind, (key, value) in ENCODINGS.items()}


@pytest.mark.parametrize("kind", ENCODINGS)
def test_names_from_onnx_metadata(kind, labelled, tmp_path):
    out = tmp_path / "art"
    assert cli.main([str(labelled[kind]), "--out", str(out), "-q"]) == 0
    assert manifest(out)["labels"] == NAMES


def test_names_from_ir_rt_info(labelled, tmp_path):
    """An ONNX model converted by OpenVINO keeps metadata_props in rt_info['framework']."""
    xml = to_ir(labelled["python dict"])
    assert ov.Core().read_model(str(xml)).has_rt_info(["framework", "names"])
    assert cli.main([str(xml), "--out", str(tmp_path / "a"), "-q"]) == 0
    assert manifest(tmp_path / "a")["labels"] == NAMES
    # OpenVINO Model API / YOLO exporters: model_info/labels, space-separated
    model = ov.Core().read_model(str(native_ir(tmp_path / "native.xml", softmax=False)))
    model.set_rt_info([n.replace(" ", "_") for n in NAMES], ["model_info", "labels"])
    ov.save_model(model, str(tmp_path / "model_api.xml"), compress_to_fp16=False)
    assert cli.main([str(tmp_path / "model_api.xml"), "--out", str(tmp_path / "b"), "-q"]) == 0
    assert manifest(tmp_path / "b")["labels"] == ["cat", "dog", "red_fox", "sea_lion", "0"]


def test_no_names_when_the_count_differs(tmp_path):
    path = with_metadata(tiny_classifier(tmp_path / "t.onnx"), {"classes": "a\nb\nc"})
    assert cli.main([str(path), "--out", str(tmp_path / "a"), "-q", "--format", "onnx"]) == 0
    assert manifest(tmp_path / "a")["labels"] is None


@pytest.mark.parametrize("form", ["lines", "json"])
def test_labels_file_overrides_the_graph(form, labelled, tmp_path, image):
    names = [f"label {i}" for i in range(CLASSES)]
    text = "\n".join(names) + "\n" if form == "lines" else json.dumps(names)
    (tmp_path / "names.txt").write_text(text)
    out = tmp_path / "art"
    assert cli.main([str(labelled["json"]), "--labels", str(tmp_path / "names.txt"),
                     "--out", str(out), "-q"]) == 0
    assert manifest(out)["labels"] == names
    # overlays and --json name the classes
    cv2.imwrite(str(tmp_path / "img.png"), image[..., ::-1])
    proc = subprocess.run([str(BIN / "reciprocam"), "explain", str(out), str(tmp_path / "img.png"),
                           "--json", "--out", str(tmp_path / "maps"), "--backend", "onnxruntime"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout.splitlines()[-1])
    top = record["top"][0]
    assert top["label"] == names[top["class"]]
    assert any(f"label_{top['class']}" in p.name for p in (tmp_path / "maps").glob("*.png"))


def test_labels_file_on_the_pytorch_path(tmp_path):
    (tmp_path / "names.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    out = tmp_path / "art"
    assert cli.main(["toy_models:tiny_gap", "--labels", str(tmp_path / "names.json"),
                     "--out", str(out), "-q", "--format", "onnx"]) == 0
    assert manifest(out)["labels"] == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("model", ["graph", "toy_models:tiny_gap"])
def test_bad_labels_files_are_refused(model, labelled, capsys, tmp_path):
    model = str(labelled["lines"]) if model == "graph" else model
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    (tmp_path / "gap.txt").write_text("a\n\nc\nd\ne\n")
    assert "has 3 names; the model has 5 classes" in refused(
        capsys, tmp_path, model, "--labels", str(tmp_path / "three.txt"))
    assert "found an empty line" in refused(capsys, tmp_path, model, "--labels",
                                            str(tmp_path / "gap.txt"))
    assert "not found" in refused(capsys, tmp_path, model, "--labels",
                                  str(tmp_path / "missing.txt"))
