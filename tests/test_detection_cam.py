"""A map per kept box: ``ReciproCAM`` on a detection artifact, checked against the masking
done here by hand on the exported graphs, on both backends."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from conftest import DETECTOR_IMAGES, DETECTOR_ONNX
from reciprocam_ir import ReciproCAM
from reciprocam_ir.detection import decode, to_image
from reciprocam_ir.detection_cam import DetectionCAM, level_masks
from reciprocam_ir.preprocess import read_image

CONF = 0.25


@pytest.fixture(scope="module")
def cams(detector_dir):
    """Both backends, masks on the 8x8 grid (64 copies: fast tests)."""
    return {"onnxruntime": ReciproCAM(detector_dir, backend="onnxruntime", grid=2,
                                      box_score="anchor"),
            "openvino": ReciproCAM(detector_dir, backend="openvino", precision="f32", grid=2,
                                   box_score="anchor")}


@pytest.fixture(scope="module")
def explained(cams):
    return {name: cam.explain(DETECTOR_IMAGES, conf=CONF) for name, cam in cams.items()}


def by_hand(detector_dir, image, anchors, classes, boxes=None):
    """(K, 8, 8) maps from f.onnx and g.onnx run here: copy n keeps cell n of the 8x8 grid
    on every level (its 4x4 block at stride 8, its 2x2 block at stride 16)."""
    cam = ReciproCAM(detector_dir, backend="onnxruntime")
    x = cam.preprocessing(image)
    f = ort.InferenceSession(str(detector_dir / "f.onnx"), providers=["CPUExecutionProvider"])
    g = ort.InferenceSession(str(detector_dir / "g.onnx"), providers=["CPUExecutionProvider"])
    levels = f.run(None, {"input": x})
    batch = [np.zeros((64, *lv.shape[1:]), np.float32) for lv in levels]
    for n in range(64):
        r, c = divmod(n, 8)
        for level, out in zip(levels, batch, strict=True):
            k = level.shape[2] // 8
            out[n, :, k * r : k * r + k, k * c : k * c + k] = \
                level[0, :, k * r : k * r + k, k * c : k * c + k]
    raw = g.run(None, {f"feature{i}": m for i, m in enumerate(batch)})[0]
    if boxes is None:  # the box's own anchor's class score
        scores = raw[:, 4 + classes, anchors]
    else:  # D-RISE: the best IoU with the box x the box's class score, over all predictions
        x1, y1 = raw[:, 0] - raw[:, 2] / 2, raw[:, 1] - raw[:, 3] / 2
        x2, y2 = raw[:, 0] + raw[:, 2] / 2, raw[:, 1] + raw[:, 3] / 2
        scores = np.zeros((64, len(boxes)))
        for k, (bx1, by1, bx2, by2) in enumerate(boxes):
            inter = np.clip(np.minimum(x2, bx2) - np.maximum(x1, bx1), 0, None) * \
                np.clip(np.minimum(y2, by2) - np.maximum(y1, by1), 0, None)
            iou = inter / ((x2 - x1) * (y2 - y1) + (bx2 - bx1) * (by2 - by1) - inter)
            scores[:, k] = (iou * raw[:, 4 + classes[k]]).max(axis=1)
    span = scores.max(0) - scores.min(0)
    return ((scores - scores.min(0)) / np.where(span > 0, span, 1)).T.reshape(-1, 8, 8)


def test_a_detection_artifact_gives_a_detection_cam(cams):
    assert all(isinstance(cam, DetectionCAM) for cam in cams.values())


def test_boxes_are_the_source_graphs_kept_boxes(explained, cams):
    session = ort.InferenceSession(str(DETECTOR_ONNX), providers=["CPUExecutionProvider"])
    prep = cams["onnxruntime"].preprocessing
    for i, path in enumerate(DETECTOR_IMAGES):
        image = read_image(path)
        raw = session.run(None, {"images": prep(image)})[0][0]
        kept = decode(raw, CONF, 0.7)
        assert len(kept) >= 2
        for exp in explained.values():
            assert exp.targets[i].tolist() == kept.classes.tolist()
            assert np.allclose(exp.boxes[i], to_image(kept.boxes, (256, 256), image.shape[:2]),
                               atol=0.05)
            assert np.allclose(exp.scores[i], kept.scores, atol=1e-4)


def test_one_map_per_box_equal_to_masking_by_hand(explained, cams, detector_dir):
    cam = cams["onnxruntime"]
    image = read_image(DETECTOR_IMAGES[0])
    raw = cam.predict(cam.preprocessing(image))[0]
    kept = decode(raw, CONF, 0.7)
    expected = by_hand(detector_dir, image, kept.anchors, kept.classes)
    for name, exp in explained.items():
        assert exp.saliency[0].shape == (len(kept), 8, 8)
        assert exp.saliency[0].min() >= 0 and exp.saliency[0].max() <= 1
        assert np.abs(exp.saliency[0] - expected).max() < (1e-4 if name == "onnxruntime"
                                                            else 1e-3), name


def test_the_default_drise_score_equals_masking_by_hand(detector_dir):
    cam = ReciproCAM(detector_dir, backend="onnxruntime", grid=2)
    assert cam.box_score == "drise"
    image = read_image(DETECTOR_IMAGES[1])
    kept = decode(cam.predict(cam.preprocessing(image))[0], CONF, 0.7)
    expected = by_hand(detector_dir, image, kept.anchors, kept.classes, kept.boxes)
    assert np.abs(cam.explain(image).saliency[0] - expected).max() < 1e-4


def test_maps_of_two_boxes_differ(explained):
    maps = explained["openvino"].saliency[0]
    assert len(maps) >= 2 and np.abs(maps[0] - maps[1]).max() > 0.1


def test_window_mask(detector_dir):
    image = read_image(DETECTOR_IMAGES[1])
    window = ReciproCAM(detector_dir, backend="onnxruntime", mask="window", grid=2
                        ).explain(image, conf=CONF)
    onehot = ReciproCAM(detector_dir, backend="onnxruntime", grid=2).explain(image, conf=CONF)
    assert window.saliency[0].shape == onehot.saliency[0].shape
    assert len(window.saliency[0]) >= 1
    assert np.isfinite(window.saliency[0]).all()
    assert np.abs(window.saliency[0] - onehot.saliency[0]).max() > 0.05


@pytest.mark.parametrize("option", [{"mask": "drop"}, {"box_score": "iou"}, {"scores": "softmax"},
                                    {"grid": 5}, {"mask_sigma": 1.0}])
def test_options_that_do_not_apply_are_refused(detector_dir, option):
    with pytest.raises((ValueError, TypeError)):
        ReciproCAM(detector_dir, backend="onnxruntime", **option).explain(
            DETECTOR_IMAGES[0], conf=1.0)


def test_explain_refuses_thresholds_out_of_range(cams):
    with pytest.raises(ValueError, match="conf"):
        cams["onnxruntime"].explain(DETECTOR_IMAGES[0], conf=2.0)


def test_level_masks_nest_on_the_grid():
    masks = np.eye(4, dtype=np.float32).reshape(4, 2, 2)
    assert level_masks(masks, (4, 4))[1].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1],
                                                      [0, 0, 0, 0], [0, 0, 0, 0]]
    assert level_masks(masks, (1, 1))[:, 0, 0].tolist() == [0.25] * 4
    with pytest.raises(ValueError):
        level_masks(masks, (3, 3))
