"""Graph files as the tools deliver them (issue 25): Hugging Face optimum's symbolic channel
axis, a static batch inside ``f`` (Ultralytics), tiny inputs, whole-map AveragePool."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from conftest import read_manifest as manifest
from export.graphfile.pipeline import export_graph_file
from graph_models import (
    SIZE,
    batch_dropping_classifier,
    static_batch_classifier,
    symbolic_channels,
    text_line_classifier,
    tiny_classifier,
    to_ir,
    whole_map_average_pool,
)
from reciprocam_ir import ReciproCAM


def tensor_of(path, name: str, x: np.ndarray) -> np.ndarray:
    """Tensor ``name`` of the ONNX graph at ``path`` on ``x``, by ONNX Runtime."""
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {model.graph.input[0].name: x})[0]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_symbolic_channel_axis_is_read_from_the_first_conv(tmp_path, image, layout, suffix):
    """optimum declares ``pixel_values`` ?x?x?x?: the first Conv's weights say 3 channels,
    and the maps equal those of the same graph with the channel axis written."""
    model = symbolic_channels(tmp_path / "optimum.onnx", layout)
    twin = tiny_classifier(tmp_path / "twin.onnx", layout=layout, dynamic_size=True)
    if suffix == ".xml":
        model, twin = to_ir(model), to_ir(twin)
    out = export_graph_file(model, size=SIZE, out=tmp_path / "out")
    ref = export_graph_file(twin, size=SIZE, out=tmp_path / "ref")
    shape = [1, 3, SIZE, SIZE] if layout == "NCHW" else [1, SIZE, SIZE, 3]
    assert manifest(out)["input"]["shape"] == shape
    assert manifest(out)["check"]["max_abs_error"] < 1e-5
    got = ReciproCAM(out, backend="openvino", precision="f32").explain(image, top_k=2)
    want = ReciproCAM(ref, backend="openvino", precision="f32").explain(image, top_k=2)
    np.testing.assert_allclose(got.saliency, want.saliency, atol=1e-6)


def test_batch_fixed_at_one_inside_f_is_made_free(tmp_path, photos):
    """Reshapes with a leading 1 in ``f`` (Ultralytics' default export): the export frees
    the batch, says so, and the runtime explains several images as it does one by one."""
    model = static_batch_classifier(tmp_path / "yolo_like.onnx")
    said: list[str] = []
    out = export_graph_file(model, out=tmp_path / "out", log=said.append)
    assert any("attn_view" in line and "free" in line for line in said)
    m = manifest(out)
    assert m["target_layer"] == "r2" and m["check"]["max_abs_error"] < 1e-5
    for backend in ("onnxruntime", "openvino"):
        cam = ReciproCAM(out, backend=backend, precision="f32")
        two = list(photos.values())[:2]
        both = cam.explain(two, top_k=2)
        for i, photo in enumerate(two):
            one = cam.explain(photo, top_k=2)
            np.testing.assert_allclose(both.saliency[i], one.saliency[0], atol=1e-5)


def test_batch_that_cannot_be_made_free_runs_f_one_image_at_a_time(tmp_path, photos):
    """A Reshape that drops the batch axis in ``f``: nothing to free, so the export records
    ``images_per_call: 1`` and says so; the runtime, asked for batches of 8, explains each
    image as it does alone, on both engines."""
    model = batch_dropping_classifier(tmp_path / "tf_like.onnx")
    said: list[str] = []
    out = export_graph_file(model, fmt="both", out=tmp_path / "out", log=said.append)
    assert any("one image at a time" in line for line in said)
    m = manifest(out)
    assert m["input"]["images_per_call"] == 1 and "f_per_image" not in m["check"]
    assert m["check"]["max_abs_error"] < 1e-5
    four = list(photos.values())[:4]
    for backend in ("onnxruntime", "openvino"):
        cam = ReciproCAM(out, backend=backend, precision="f32", batch_size=8)
        assert cam.batch_size == 1
        together = cam.explain(four, top_k=2)
        for i, photo in enumerate(four):
            alone = cam.explain(photo, top_k=2)
            np.testing.assert_allclose(together.saliency[i], alone.saliency[0], atol=1e-5)
            np.testing.assert_array_equal(together.targets[i], alone.targets[0])


def test_text_line_head_is_decided_alike_on_onnx_and_ir(tmp_path, image):
    """Paddle's head (Reshape by a computed shape, MatMul, Add, Softmax, Identity) resolves
    only at 48x192: both formats find the Softmax, drop it and cut at the same map."""
    model = text_line_classifier(tmp_path / "text_line.onnx")
    outs = {"onnx": export_graph_file(model, size=(48, 192), fmt="onnx", out=tmp_path / "o"),
            "ir": export_graph_file(to_ir(model), size=(48, 192), out=tmp_path / "i")}
    decided = [{k: manifest(o)[k] for k in ("output", "target_layer", "feature", "input")}
               for o in outs.values()]
    assert decided[0] == decided[1]
    assert decided[0]["output"]["softmax_removed"] and decided[0]["output"]["logits"]
    cams = {"onnx": ReciproCAM(outs["onnx"], backend="onnxruntime"),
            "ir": ReciproCAM(outs["ir"], backend="openvino", precision="f32")}
    x = cams["onnx"].preprocessing(image)
    logits = tensor_of(model, "logits", x)
    explained = [cam.explain_tensor(x, top_k=2) for cam in cams.values()]
    for exp in explained:
        np.testing.assert_allclose(exp.scores, logits, atol=1e-5)
    np.testing.assert_allclose(explained[0].saliency, explained[1].saliency, atol=1e-4)


@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_average_pool_over_the_whole_map_is_a_global_pool(tmp_path, image, suffix):
    """``AveragePool`` whose kernel is the map's size starts ``g`` as a GAP does (fast path),
    with the maps of the same graph written with GlobalAveragePool."""
    model = whole_map_average_pool(tmp_path / "avg.onnx")
    twin = tiny_classifier(tmp_path / "t.onnx")
    if suffix == ".xml":
        model, twin = to_ir(model), to_ir(twin)
    out = export_graph_file(model, out=tmp_path / "out")
    ref = export_graph_file(twin, out=tmp_path / "ref")
    m = manifest(out)
    assert m["target_layer"] == manifest(ref)["target_layer"] and m["g_starts_with_gap"]
    got = ReciproCAM(out, backend="openvino", precision="f32").explain(image, top_k=2)
    want = ReciproCAM(ref, backend="openvino", precision="f32").explain(image, top_k=2)
    np.testing.assert_allclose(got.saliency, want.saliency, atol=1e-5)


def test_a_coarse_default_cut_names_finer_ones(tmp_path):
    """At 8 x 8 the text-line classifier's last map is 2 x 2: the log names the 4 x 4 cut."""
    said: list[str] = []
    export_graph_file(text_line_classifier(tmp_path / "small.onnx"), size=8, fmt="onnx",
                      out=tmp_path / "out", log=said.append)
    hint = [line for line in said if "finer" in line]
    assert len(hint) == 1 and "--layer a1 (4 x 4)" in hint[0]
    said.clear()
    export_graph_file(text_line_classifier(tmp_path / "big.onnx"), size=16, fmt="onnx",
                      out=tmp_path / "big", log=said.append)
    assert not [line for line in said if "finer" in line]


def test_overlays_of_tiny_images_are_enlarged(tmp_path):
    """A 64 x 64 chip's overlay PNG is written at 256 x 256 (x4), a photo's at its own size;
    the enlarged overlay shrunk back is close to the one at the chip's size."""
    out = export_graph_file(tiny_classifier(tmp_path / "tiny.onnx"), fmt="onnx",
                            out=tmp_path / "art", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    cam = ReciproCAM(out, backend="onnxruntime")
    rng = np.random.default_rng(3)
    chip = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (9, 9), 3)
    photo = rng.integers(0, 256, (300, 320, 3), dtype=np.uint8)
    exp = cam.explain([chip, photo])
    written = exp.save(tmp_path / "png")
    assert cv2.imread(str(written[0])).shape[:2] == (256, 256)
    assert cv2.imread(str(written[1])).shape[:2] == (300, 320)
    small = cv2.resize(exp.overlay(0, 0, min_side=256), (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - exp.overlay(0, 0).astype(int)).mean() < 8
