"""Maps a reduced precision flattened: warned about on the real engines, never at f32."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from reciprocam_ir import ReciproCAM
from reciprocam_ir.cli import main
from reciprocam_ir.precision import MIN_LEVELS, PrecisionWarning, coarse, warn_if_coarse


@pytest.fixture(scope="module")
def offset_dir(export_once):
    return export_once("toy_models:offset_scores", fmt="both")


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)


def bf16_cam(folder, **kwargs) -> ReciproCAM:
    cam = ReciproCAM(folder, backend="openvino", precision="auto", **kwargs)
    if cam.backend.inference_precision != "bf16":
        pytest.skip("this CPU's OpenVINO default is not bf16")
    return cam


def test_coarse_counts_levels_against_the_grid():
    many = np.linspace(0, 1, 64, dtype=np.float32)[None]
    two = np.where(np.arange(64) < 10, 1.0, 0.0).astype(np.float32)[None]
    small_grid = np.array([[0.0, 0.5, 1.0, 1.0]], np.float32)  # 3 levels of 4 cells: enough
    assert not coarse(many)[0] and coarse(two)[0] and not coarse(small_grid)[0]
    assert coarse(np.zeros((1, 64), np.float32))[0]
    assert MIN_LEVELS <= 64 / 2


def test_a_bf16_map_of_rounded_scores_is_warned_once(offset_dir):
    cam = bf16_cam(offset_dir)
    assert cam.graph_path is not None
    with pytest.warns(PrecisionWarning, match="precision='f32'") as caught:
        exp = cam.explain([image(0), image(1)])
        cam.explain(image(2))
    assert len([w for w in caught if w.category is PrecisionWarning]) == 1
    assert coarse(exp.saliency.reshape(2, -1)).all()


def test_bf16_maps_that_keep_their_levels_say_nothing(offset_dir):
    cam = bf16_cam(offset_dir, explain_graph=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        exp = cam.explain([image(0), image(1)])
    assert not coarse(exp.saliency.reshape(2, -1)).any()


def test_the_same_maps_at_f32_keep_their_levels_and_say_nothing(offset_dir):
    cam = ReciproCAM(offset_dir, backend="openvino", precision="f32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        exp = cam.explain([image(0), image(1)])
    assert not coarse(exp.saliency.reshape(2, -1)).any()


def test_onnxruntime_computes_in_f32_and_never_warns(offset_dir):
    cam = ReciproCAM(offset_dir, backend="onnxruntime")
    assert cam.backend.inference_precision == "f32"
    assert not warn_if_coarse("x", np.array([0]), np.zeros((1, 64), np.float32),
                              cam.backend.inference_precision)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        cam.explain(image(0))


def test_the_cli_says_it_in_one_line(offset_dir, tmp_path, capsys):
    bf16_cam(offset_dir)
    path = tmp_path / "noise.png"
    import cv2

    cv2.imwrite(str(path), image(0))
    assert main(["explain", str(offset_dir), str(path), "--out", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith("reciprocam: warning: ")
    assert "--precision f32" in lines[0]
