"""Decoding a YOLO raw output as Ultralytics' predict does: thresholds, class-aware NMS, boxes
back on the image."""

from __future__ import annotations

import numpy as np
import pytest

from reciprocam_ir.detection import check_thresholds, decode, to_image
from reciprocam_ir.preprocess import Preprocessing


def raw_output(seed: int, classes: int = 4, anchors: int = 400) -> np.ndarray:
    """A raw output (4 + classes, anchors) with clusters of overlapping boxes, so that NMS
    has work to do, and scores spread across the threshold."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 230, (anchors // 8, 2))
    sizes = rng.uniform(10, 80, (anchors // 8, 2))
    xy = np.repeat(centres, 8, axis=0) + rng.normal(0, 4, (anchors, 2))
    wh = np.repeat(sizes, 8, axis=0) * rng.uniform(0.8, 1.2, (anchors, 2))
    scores = rng.beta(0.5, 2.0, (anchors, classes))
    return np.concatenate([xy, wh, scores], axis=1).T.astype(np.float32)


def reference_nms(raw: np.ndarray, conf: float, iou: float) -> list[int]:
    """An independent, plain-Python reading of predict's rules: each anchor's best class if it
    scores above ``conf``; within each class, best first, drop a box overlapping a kept one by
    more than ``iou``; all kept boxes best first."""
    kept = []
    for c in range(raw.shape[0] - 4):
        cands = [a for a in range(raw.shape[1])
                 if raw[4:, a].max() > conf and int(np.argmax(raw[4:, a])) == c]
        cands.sort(key=lambda a: -raw[4 + c, a])
        chosen: list[int] = []
        for a in cands:
            x, y, w, h = raw[:4, a]
            box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
            ok = True
            for b in chosen:
                x2, y2, w2, h2 = raw[:4, b]
                other = (x2 - w2 / 2, y2 - h2 / 2, x2 + w2 / 2, y2 + h2 / 2)
                iw = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
                ih = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
                inter = iw * ih
                union = w * h + w2 * h2 - inter
                if inter / union > iou:
                    ok = False
                    break
            if ok:
                chosen.append(a)
        kept += chosen
    return sorted(kept, key=lambda a: -raw[4:, a].max())


@pytest.mark.parametrize("seed, conf, iou", [(0, 0.25, 0.7), (1, 0.1, 0.45), (2, 0.5, 0.3)])
def test_decode_keeps_what_an_independent_nms_keeps(seed, conf, iou):
    raw = raw_output(seed)
    found = decode(raw, conf, iou)
    expected = reference_nms(raw, conf, iou)
    assert len(expected) > 5
    assert found.anchors.tolist() == expected
    assert np.array_equal(found.classes, raw[4:, expected].argmax(axis=0))
    assert np.allclose(found.scores, raw[4:, expected].max(axis=0))
    x, y, w, h = raw[:4, expected]
    assert np.allclose(found.boxes, np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1))


def test_decode_caps_boxes_and_keeps_none_below_conf():
    raw = raw_output(3)
    assert len(decode(raw, 0.0, 1.0, max_det=7)) == 7
    assert len(decode(raw, 1.0, 0.7)) == 0


def test_decode_equals_ultralytics_non_max_suppression():
    torch = pytest.importorskip("torch")
    nms = pytest.importorskip("ultralytics.utils.nms")
    raw = raw_output(4)
    out, idx = nms.non_max_suppression(torch.from_numpy(raw[None]), 0.25, 0.7,
                                       return_idxs=True)
    found = decode(raw, 0.25, 0.7)
    assert idx[0].view(-1).tolist() == found.anchors.tolist()
    assert np.allclose(out[0][:, :4].numpy(), found.boxes, atol=1e-4)


@pytest.mark.parametrize("height, width", [(180, 256), (256, 140), (512, 300)])
def test_to_image_undoes_the_letterbox(height, width):
    prep = Preprocessing(size=(256, 256), resize="pad", pad_value=114.0)
    (rh, top), (rw, left) = prep.placement(height, width)
    boxes = np.array([[10, 20, 100, 90], [0, 0, width, height]], np.float32)
    letterboxed = boxes * [rw / width, rh / height, rw / width, rh / height] \
        + [left, top, left, top]
    assert np.allclose(to_image(letterboxed, (256, 256), (height, width)), boxes, atol=1.0)


def test_to_image_clips_to_the_image():
    boxes = to_image(np.array([[-30, -5, 300, 270]], np.float32), (256, 256), (256, 256))
    assert boxes.tolist() == [[0, 0, 256, 256]]


@pytest.mark.parametrize("conf, iou", [(-0.1, 0.5), (0.5, 1.5), (True, 0.5), ("0.3", 0.5)])
def test_thresholds_out_of_range_are_refused(conf, iou):
    with pytest.raises(ValueError, match="conf|iou"):
        check_thresholds(conf, iou)
