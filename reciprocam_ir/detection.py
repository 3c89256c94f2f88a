"""Boxes from a YOLO detector's raw output, kept as Ultralytics' predict keeps them (numpy).

The raw output of an Ultralytics YOLOv8/YOLO11 detection graph is (4 + classes, anchors) per
image: box centre x, y, width, height in input pixels, then one sigmoid score per class.
Predict keeps an anchor whose best class score exceeds ``conf``, runs class-aware NMS at
``iou`` (boxes offset by class × 7680 px), keeps at most ``max_det`` boxes, then maps them from
the letterboxed input back to the image and clips them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.7
"""Ultralytics predict's defaults (``conf``, ``iou``)."""
MAX_DET = 300
MAX_NMS = 30000
MAX_WH = 7680
"""Ultralytics' limits: boxes kept per image, boxes into NMS, per-class offset in pixels."""


@dataclass(frozen=True)
class Detections:
    """The boxes kept for one image: ``anchors`` (K,) their index in the raw output,
    ``boxes`` (K, 4) x1 y1 x2 y2, ``scores`` (K,), ``classes`` (K,), best first."""

    anchors: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.anchors)


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """(..., 4) centre x, y, width, height → x1, y1, x2, y2."""
    xy, half = xywh[..., :2], xywh[..., 2:4] / 2
    return np.concatenate([xy - half, xy + half], axis=-1)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1 y1 x2 y2 ``box`` with each of ``boxes`` (M, 4) (0 for empty unions)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS, best score first: a box is dropped when its IoU with a kept
    one exceeds ``iou``."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    suppressed = np.zeros(len(boxes), bool)
    for pos, i in enumerate(order):
        if suppressed[pos]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        suppressed[pos + 1 :] |= box_iou(boxes[i], boxes[rest]) > iou
    return np.asarray(keep, np.int64)


def decode(raw: np.ndarray, conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU,
           max_det: int = MAX_DET) -> Detections:
    """The boxes Ultralytics keeps from one image's raw output (4 + classes, anchors); boxes
    in input pixels."""
    raw = np.asarray(raw, np.float32)
    cls = raw[4:]
    best = cls.max(axis=0)
    anchors = np.nonzero(best > conf)[0]
    if len(anchors) > MAX_NMS:
        anchors = anchors[np.argsort(-best[anchors], kind="stable")[:MAX_NMS]]
    scores = best[anchors]
    classes = cls[:, anchors].argmax(axis=0)
    boxes = xywh_to_xyxy(raw[:4, anchors].T)
    kept = nms(boxes + (classes * MAX_WH)[:, None].astype(np.float32), scores, iou)[:max_det]
    return Detections(anchors[kept], boxes[kept], scores[kept], classes[kept].astype(np.int64))


def to_image(boxes: np.ndarray, input_size: tuple[int, int],
             image_size: tuple[int, int]) -> np.ndarray:
    """Boxes in letterboxed input pixels → image pixels, clipped (Ultralytics' scale_boxes).

    ``input_size`` and ``image_size`` are (height, width).
    """
    (ih, iw), (h, w) = input_size, image_size
    gain = min(ih / h, iw / w)
    pad_x = round((iw - w * gain) / 2 - 0.1)
    pad_y = round((ih - h * gain) / 2 - 0.1)
    out = (np.asarray(boxes, np.float64) - [pad_x, pad_y, pad_x, pad_y]) / gain
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out.astype(np.float32)


def check_thresholds(conf: float, iou: float) -> None:
    """Refuse a ``conf`` or ``iou`` outside [0, 1] (ValueError, one line)."""
    for name, value in (("conf", conf), ("iou", iou)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
