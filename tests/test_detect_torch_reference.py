"""Maps per box equal a torch computation on the same Ultralytics model, with forward hooks
masking the same levels (needs ultralytics, AGPL-3.0, which the project does not install:
skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DETECTOR_IMAGES, TESTS
from reciprocam_ir import ReciproCAM
from reciprocam_ir.detection import decode
from reciprocam_ir.preprocess import read_image
from reciprocam_ir.saliency import normalise

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

WEIGHTS = TESTS / "data" / "yolo_synth.pt"
CUT = (4, 6, 9)
"""The YOLOv8 layers whose outputs the default cut takes (the backbone's, read by the neck)."""


def torch_maps(cam, x: np.ndarray, anchors: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The maps of the kept boxes from Ultralytics' own module: a first pass keeps the
    outputs of layers 4, 6 and 9 (the cut); on N copies of the image, forward hooks then
    replace each of those outputs by the kept one times the masks, so the neck reads the
    masked levels (and the backbone's own later layers are overwritten, as ``g`` never runs
    them)."""
    from ultralytics import YOLO

    model = YOLO(str(WEIGHTS)).model.float().eval().fuse()
    kept: dict[int, torch.Tensor] = {}
    hooks = [model.model[i].register_forward_hook(
        lambda module, args, out, i=i: kept.__setitem__(i, out)) for i in CUT]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for hook in hooks:
        hook.remove()
    masks = {i: torch.from_numpy(mask)[:, None] for i, mask in zip(CUT, cam.masks, strict=True)}
    hooks = [model.model[i].register_forward_hook(
        lambda module, args, out, i=i: kept[i] * masks[i]) for i in CUT]
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(x).repeat(len(cam.masks[0]), 1, 1, 1))
    finally:
        for hook in hooks:
            hook.remove()
    raw = (out[0] if isinstance(out, (tuple, list)) else out).numpy()
    scores = raw[:, 4 + classes, anchors]
    return normalise(scores).reshape(len(anchors), *cam.grid_shape)


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "auto"), ("openvino", "f32")])
def test_maps_equal_torch_with_forward_hooks(detector_dir, backend, precision):
    cam = ReciproCAM(detector_dir, backend=backend, precision=precision, grid=2,
                     box_score="anchor")
    cut = [lv["source_name"].split("/")[1] for lv in cam.artifact.manifest["feature"]["levels"]]
    assert cut == [f"model.{i}" for i in CUT]
    image = read_image(DETECTOR_IMAGES[0])
    x = cam.preprocessing(image)
    kept = decode(cam.predict(x)[0], 0.25, 0.7)
    exp = cam.explain(image)
    expected = torch_maps(cam, x, kept.anchors, kept.classes)
    assert len(kept) >= 2
    assert np.abs(exp.saliency[0] - expected).max() <= 1e-4


def test_boxes_equal_ultralytics_predict_on_the_onnx_graph(detector_dir, tmp_path):
    import cv2
    from ultralytics import YOLO

    from conftest import DETECTOR_ONNX

    wide = tmp_path / "wide.png"  # not square: the letterbox pads
    cv2.imwrite(str(wide), cv2.imread(str(DETECTOR_IMAGES[1]))[30:230])
    result = YOLO(str(DETECTOR_ONNX), task="detect").predict(
        str(wide), imgsz=256, conf=0.25, iou=0.7, verbose=False)[0]
    exp = ReciproCAM(detector_dir, backend="onnxruntime").explain(wide)
    assert len(result.boxes) >= 2
    assert exp.targets[0].tolist() == result.boxes.cls.numpy().astype(int).tolist()
    assert np.allclose(exp.scores[0], result.boxes.conf.numpy(), atol=2e-3)
    assert np.allclose(exp.boxes[0], result.boxes.xyxy.numpy(), atol=0.5)
