"""Exporting a YOLO detector as Ultralytics exported it (ONNX and OpenVINO IR) into a
detection artifact: ``f`` to the backbone's levels, ``g`` from them to the raw output."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import openvino as ov

from conftest import DETECTOR_IR, DETECTOR_ONNX, export_refused
from export.artifact.verify import verification_images
from export.graphfile.detect_cut import anchor_count, detection_output, is_detector


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def source_raw(x: np.ndarray) -> np.ndarray:
    """The shipped graph itself on ``x``, one image at a time (it has a fixed batch of 1)."""
    session = ort.InferenceSession(str(DETECTOR_ONNX), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def test_the_shipped_graphs_are_recognised_as_detectors():
    assert is_detector(DETECTOR_ONNX) and is_detector(DETECTOR_IR)
    assert anchor_count((256, 256)) == 32 * 32 + 16 * 16 + 8 * 8
    assert detection_output([1, 8, 1344], (256, 256)) == 4
    assert detection_output([1, 1000], (224, 224)) is None


def test_onnx_detector_export_writes_a_detection_manifest(detector_dir):
    m = manifest(detector_dir)
    assert m["task"] == "detect"
    assert m["output"]["num_classes"] == 4
    assert m["labels"] == ["circle", "square", "triangle", "star"]
    assert [lv["shape"][1:] for lv in m["feature"]["levels"]] == [[32, 32], [16, 16], [8, 8]]
    assert set(m["graphs"]) == {"f", "g"} and set(m["graphs"]["g"]) == {"onnx", "ir"}
    assert m["input"]["resize"] == "pad" and m["input"]["pad_value"] == 114.0
    assert all(v < 1e-4 for v in m["check"]["max_rel_error"].values())


def test_f_then_g_on_a_batch_reproduces_the_source_graph(detector_dir):
    x = np.random.default_rng(0).uniform(0, 1, (3, 3, 256, 256)).astype(np.float32)
    f = ort.InferenceSession(str(detector_dir / "f.onnx"), providers=["CPUExecutionProvider"])
    g = ort.InferenceSession(str(detector_dir / "g.onnx"), providers=["CPUExecutionProvider"])
    levels = f.run(None, {"input": x})
    assert len(levels) == 3 and all(len(level) == 3 for level in levels)
    raw = g.run(None, {f"feature{i}": level for i, level in enumerate(levels)})[0]
    assert np.abs(raw - source_raw(x)).max() < 1e-3


def test_ir_detector_export_reproduces_the_source_in_f32(detector_ir_dir):
    m = manifest(detector_ir_dir)
    assert m["task"] == "detect" and set(m["graphs"]["f"]) == {"ir"}
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    x = verification_images((2, 3, 256, 256))
    f = core.compile_model(str(detector_ir_dir / "f.xml"), "CPU", config)
    g = core.compile_model(str(detector_ir_dir / "g.xml"), "CPU", config)
    levels = list(f(x).values())
    raw = g(levels)[0]
    reference = source_raw(x)  # Ultralytics converted the IR itself: not bit-equal to the ONNX
    assert np.abs(raw - reference).max() < 1e-4 * np.abs(reference).max()


def test_a_named_cut_is_used_and_a_partial_cut_refused(detector_dir, tmp_path, capsys):
    from export.graphfile.detect_pipeline import export_detector

    names = [lv["source_name"] for lv in manifest(detector_dir)["feature"]["levels"]]
    out = export_detector(DETECTOR_ONNX, layer=f"{names[0]}, {names[1]}", out=tmp_path / "b",
                          fmt="onnx")  # the neck reads level 3 only through level 2
    assert [lv["source_name"] for lv in manifest(out)["feature"]["levels"]] == names[:2]
    line = export_refused(capsys, tmp_path, str(DETECTOR_ONNX), "--layer", names[1])
    assert "around the cut" in line


def test_options_of_classifiers_are_refused_for_a_detector(tmp_path, capsys):
    line = export_refused(capsys, tmp_path, str(DETECTOR_ONNX), "--explain-top-k", "2")
    assert "--explain-top-k" in line


def test_an_ultralytics_model_of_another_task_is_refused(tmp_path, capsys):
    import onnx

    model = onnx.load(str(DETECTOR_ONNX))
    next(p for p in model.metadata_props if p.key == "task").value = "pose"
    pose = tmp_path / "pose.onnx"
    onnx.save(model, str(pose))
    line = export_refused(capsys, tmp_path, str(pose), "--task", "detect")
    assert "'pose'" in line
