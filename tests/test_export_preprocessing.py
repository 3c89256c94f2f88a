"""The preprocessing the exporter writes: torchvision's recipe, callables, graph-file flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from conftest import export_refused as refused
from conftest import read_manifest as manifest
from export import cli
from export.errors import ExportError
from export.graphfile.pipeline import export_graph_file
from export.torch.model_source import load_model
from graph_models import tiny_classifier, to_ir, with_metadata
from reciprocam_ir import ReciproCAM
from reciprocam_ir.preprocess import Preprocessing


@pytest.mark.parametrize("name, interpolation, resize", [
    ("resnet18", "bilinear", 256), ("efficientnet_b0", "bicubic", 256), ("swin_t", "bicubic", 232),
])
def test_torchvision_manifest_records_the_weights_interpolation(name, interpolation, resize):
    p = load_model(name, weights="none").preprocessing
    assert (p.interpolation, p.antialias, p.resize_size, p.size) == (
        interpolation, True, resize, (224, 224))
    assert p.to_dict()["interpolation"] == interpolation


def test_callable_can_ask_for_the_pad_policy():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    model.reciprocam_input = {"size": 64, "resize": "pad", "pad_position": "top_left",
                              "pad_value": 127.5, "interpolation": "bicubic"}
    p = load_model(model).preprocessing
    assert (p.resize, p.pad_position, p.pad_value, p.interpolation) == (
        "pad", "top_left", 127.5, "bicubic")
    assert p.resize_size is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("graphs") / "tiny.onnx")


def test_graph_file_pad_policy(tiny, tmp_path):
    out = tmp_path / "padded"
    assert cli.main([str(tiny), "--out", str(out), "-q", "--format", "onnx", "--resize", "pad",
                     "--pad-position", "top_left", "--pad-value", "127.5",
                     "--interpolation", "bicubic", "--antialias", "off"]) == 0
    m = manifest(out)["input"]
    assert (m["resize"], m["pad_position"], m["pad_value"], m["resize_size"]) == (
        "pad", "top_left", 127.5, None)
    assert (m["interpolation"], m["antialias"]) == ("bicubic", False)
    line = np.random.default_rng(0).integers(0, 256, (8, 32, 3), dtype=np.uint8)
    exp = ReciproCAM(out, backend="onnxruntime").explain(line)
    assert exp.boxes[0] == pytest.approx((0.0, 0.0, 32.0, 32.0))  # 16x16: the line on top
    assert exp.upsample(0).shape == (1, 8, 32)


def test_graph_file_crop_flags(tiny, tmp_path):
    out = tmp_path / "crop"
    assert cli.main([str(tiny), "--out", str(out), "-q", "--format", "onnx", "--resize", "crop",
                     "--resize-size", "20"]) == 0
    assert manifest(out)["input"]["resize"] == "shorter_side_crop"


@pytest.mark.parametrize("args, match", [
    (["--resize", "crop"], "--resize-size N goes with --resize crop"),
    (["--resize", "pad", "--resize-size", "20"], "--resize-size N goes with --resize crop"),
    (["--pad-value", "3"], "apply only to --resize pad"),
    (["--resize-size", "10000000"], "resize_size must be an integer in 1..8192"),
])
def test_bad_graph_file_preprocessing(capsys, tmp_path, tiny, args, match):
    assert match in refused(capsys, tmp_path, str(tiny), "--format", "onnx", *args)


def test_graph_file_flags_are_refused_for_torch_models(capsys, tmp_path):
    assert "--resize, --pad-value apply only to .onnx/.xml" in refused(
        capsys, tmp_path, "resnet18", "--weights", "none", "--resize", "pad", "--pad-value", "1")
    assert "--resampler apply only to .onnx/.xml" in refused(
        capsys, tmp_path, "resnet18", "--weights", "none", "--resampler", "pil")


def test_resampler_flag(tiny, tmp_path, capsys):
    """``--resampler pil``: Pillow resizes; the manifest and the log say so. PIL cannot
    resize without antialiasing: ``--antialias off`` with it is refused in one line."""
    out = tmp_path / "pil"
    assert cli.main([str(tiny), "--out", str(out), "--format", "onnx", "--resize", "crop",
                     "--resize-size", "20", "--interpolation", "bicubic",
                     "--resampler", "pil"]) == 0
    assert "(bicubic, pil)" in capsys.readouterr().err
    assert manifest(out)["input"]["resampler"] == "pil"
    image = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    x = ReciproCAM(out, backend="onnxruntime").preprocessing(image)
    np.testing.assert_array_equal(x, Preprocessing(
        size=(16, 16), resize_size=20, interpolation="bicubic", resampler="pil")(image))
    message = refused(capsys, tmp_path, str(tiny), "--format", "onnx", "--resampler", "pil",
                      "--antialias", "off")
    assert "antialias false has no PIL equivalent" in message


def test_squash_then_crop_recipe(tmp_path, image, capsys):
    """``--resize squash-crop --resize-size N``: both sides to N, then the centre crop (the
    Caffe-era 256 x 256 then 224), equal to a direct resize to N x N cropped by hand."""
    model = tiny_classifier(tmp_path / "tiny.onnx")
    out = tmp_path / "squash"
    assert cli.main([str(model), "--resize", "squash-crop", "--resize-size", "20",
                     "--format", "onnx", "--out", str(out), "-q"]) == 0
    m = manifest(out)["input"]
    assert (m["resize"], m["resize_size"]) == ("squash_crop", 20)
    x = ReciproCAM(out, backend="onnxruntime").preprocessing(image)
    whole = Preprocessing(size=(20, 20), resize="direct")(image)
    np.testing.assert_array_equal(x, whole[:, :, 2:18, 2:18])
    assert "--resize-size" in refused(capsys, tmp_path, str(model), "--resize", "squash-crop")


def test_recipe_is_read_from_ultralytics_metadata(tmp_path):
    """Ultralytics' metadata (task classify, imgsz, names): its classify transforms and
    class names, without a flag; a flag overrides its field."""
    names = "{0: 'cat', 1: 'dog', 2: 'owl', 3: 'fox', 4: 'elk'}"
    model = with_metadata(tiny_classifier(tmp_path / "yolo.onnx"),
                          {"task": "classify", "imgsz": "[16, 16]", "names": names})
    said: list[str] = []
    out = export_graph_file(model, fmt="onnx", out=tmp_path / "o", log=said.append)
    m = manifest(out)
    assert (m["input"]["resize"], m["input"]["resize_size"]) == ("shorter_side_crop", 16)
    assert m["input"]["mean"] == [0, 0, 0] and m["input"]["std"] == [1, 1, 1]
    assert m["labels"] == ["cat", "dog", "owl", "fox", "elk"]
    assert "Ultralytics" in m["input"]["recipe_source"] and m["input"]["resampler"] == "pil"
    assert not [line for line in said if line.startswith("warning")]
    assert [line for line in said if line.startswith("preprocessing:") and "bilinear, pil" in line]
    ir = manifest(export_graph_file(to_ir(model), out=tmp_path / "ir"))
    assert ir["input"] == {**m["input"], "source_name": ir["input"]["source_name"]}
    assert ir["labels"] == m["labels"]
    out = export_graph_file(model, fmt="onnx", out=tmp_path / "flag", mean=(0.5, 0.5, 0.5))
    assert manifest(out)["input"]["mean"] == [0.5, 0.5, 0.5]
    assert manifest(out)["input"]["std"] == [1, 1, 1]


@pytest.mark.parametrize("config, size, resize, resize_size, interpolation", [
    ({"size": {"height": 32, "width": 32}, "resample": 2, "image_mean": [0.5] * 3,
      "image_std": [0.5] * 3}, [32, 32], "direct", None, "bilinear"),
    ({"size": {"shortest_edge": 28}, "crop_pct": 0.875, "resample": 3,
      "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
     [28, 28], "shorter_side_crop", 32, "bicubic"),
])
def test_recipe_is_read_from_optimums_preprocessor_config(tmp_path, config, size, resize,
                                                          resize_size, interpolation):
    """optimum's folder: model.onnx (dynamic H, W) and preprocessor_config.json beside it."""
    model = tiny_classifier(tmp_path / "model.onnx", dynamic_size=True)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    out = export_graph_file(model, fmt="onnx", out=tmp_path / "o")
    m = manifest(out)["input"]
    assert m["shape"] == [1, 3, *size]
    assert (m["resize"], m["resize_size"], m["interpolation"]) == (
        resize, resize_size, interpolation)
    assert m["mean"] == config["image_mean"] and m["std"] == config["image_std"]
    assert "preprocessor_config.json" in m["recipe_source"] and m["resampler"] == "pil"


def test_an_assumed_recipe_is_said_to_be_one(tmp_path):
    """No flags, nothing recorded: ImageNet's, with a warning and 'assumed' in the manifest."""
    said: list[str] = []
    out = export_graph_file(tiny_classifier(tmp_path / "bare.onnx"), fmt="onnx",
                            out=tmp_path / "o", log=said.append)
    assert manifest(out)["input"]["recipe_source"].startswith("assumed")
    assert [line for line in said if line.startswith("warning") and "ImageNet" in line]
    said.clear()
    export_graph_file(tiny_classifier(tmp_path / "bare.onnx"), fmt="onnx", out=tmp_path / "f",
                      log=said.append, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert not [line for line in said if line.startswith("warning")]
    assert [line for line in said if line.startswith("preprocessing:")]


def test_recipe_and_names_are_read_from_ultralytics_metadata_yaml_beside_an_ir(tmp_path):
    """Ultralytics' OpenVINO export writes ``metadata.yaml`` beside the ``.xml`` (the IR holds
    no ``task`` or ``imgsz``): the same recipe and names as from its ONNX metadata; a broken
    file is refused by name."""
    import yaml

    folder = tmp_path / "yolo_openvino_model"
    folder.mkdir()
    xml = to_ir(tiny_classifier(folder / "yolo.onnx"))
    (folder / "yolo.onnx").unlink()
    fields = {"author": "Ultralytics", "task": "classify", "batch": 1, "imgsz": [16, 16],
              "names": {0: "cat", 1: "dog", 2: "owl", 3: "fox", 4: "elk"},
              "args": {"batch": 1, "half": False}}
    (folder / "metadata.yaml").write_text(yaml.safe_dump(fields, sort_keys=False))
    m = manifest(export_graph_file(xml, out=tmp_path / "ir"))
    assert (m["input"]["resize"], m["input"]["resize_size"]) == ("shorter_side_crop", 16)
    assert m["input"]["mean"] == [0, 0, 0] and m["input"]["resampler"] == "pil"
    assert m["labels"] == ["cat", "dog", "owl", "fox", "elk"]
    assert "metadata.yaml" in m["input"]["recipe_source"]
    plain = manifest(export_graph_file(xml, out=tmp_path / "plain", labels=None,
                                       mean=(0.5, 0.5, 0.5)))
    assert plain["input"]["mean"] == [0.5, 0.5, 0.5] and plain["input"]["std"] == [1, 1, 1]
    (folder / "metadata.yaml").write_text("task: [classify\n")
    with pytest.raises(ExportError, match="metadata.yaml: not readable YAML"):
        export_graph_file(xml, out=tmp_path / "broken")
    assert not (tmp_path / "broken").exists()
