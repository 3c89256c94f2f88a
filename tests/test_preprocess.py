"""Preprocessing from the manifest: torchvision's recipe exactly, the pad policy, the bounds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from torchvision.transforms._presets import ImageClassification

from export.torch.model_source import _torchvision_preprocessing
from reciprocam_ir.artifact import FORMAT_VERSION, ArtifactError, validate_manifest
from reciprocam_ir.preprocess import MAX_SIDE, ImageError, Preprocessing, as_rgb

ONE_STEP = 1 / 255 / 0.224  # one 8-bit step in ImageNet-normalised units (largest of 1/std)


def test_direct_resize_scale_and_normalise():
    p = Preprocessing(size=(4, 6), resize="direct", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 255
    x = p(rgb)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)
    np.testing.assert_allclose(x[0, 1:], -1.0)


def test_bgr_colour_order_swaps_channels():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    p = Preprocessing(size=(4, 4), resize="direct", color="BGR", mean=(0, 0, 0), std=(1, 1, 1))
    x = p(rgb)
    assert x[0, 2].max() > 0.7 and x[0, 0].max() == 0


def _torchvision(transform, rgb: np.ndarray) -> np.ndarray:
    return transform(torch.from_numpy(rgb.copy()).permute(2, 0, 1))[None].numpy()


@pytest.mark.parametrize("weights", [torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
                                     torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1],
                         ids=["resnet50-bilinear", "efficientnet_b0-bicubic"])
def test_torchvision_weights_recipe_on_photos(photos, weights):
    """The manifest's recipe gives the network input torchvision's own transforms give.

    The old OpenCV path (no antialiasing, rounded long side, floored crop offset, the
    weights' bicubic dropped) was 0.016-0.14 off on average, up to 2.45.
    """
    p = _torchvision_preprocessing(weights)
    assert p.interpolation == weights.transforms().interpolation.value
    for name, rgb in photos.items():
        diff = np.abs(p(rgb) - _torchvision(weights.transforms(), rgb))
        assert diff.mean() <= 1e-2 and diff.max() <= 1.01 * ONE_STEP, (name, diff.mean())


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(300, 451), (451, 300), (37, 53), (4, 300), (224, 224)])
def test_crop_of_the_resize_equals_torchvision_resize_then_crop(interpolation, shape):
    """Only the crop is computed; it must equal the full resize cropped, including odd
    offsets (Python's round) and a long side truncated, and small images upscaled."""
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    p = Preprocessing(size=(224, 224), resize_size=256, interpolation=interpolation)
    t = ImageClassification(crop_size=224, resize_size=256,
                            interpolation=InterpolationMode(interpolation))
    diff = np.abs(p(rgb) - _torchvision(t, rgb))
    assert diff.max() <= 1.01 * ONE_STEP and diff.mean() < 1e-3


def test_non_square_crop_larger_than_the_resize_pads_as_torchvision():
    rgb = np.random.default_rng(1).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    p = Preprocessing(size=(48, 192), resize_size=64)
    resized = TF.resize(torch.from_numpy(rgb).permute(2, 0, 1), [64], antialias=True)
    expected = TF.normalize(TF.center_crop(resized, [48, 192]).float() / 255, p.mean, p.std)
    np.testing.assert_allclose(p(rgb)[0], expected.numpy(), atol=1.01 * ONE_STEP)


def test_lite0_top1_under_a_256_224_recipe_equals_torchvision(photos):
    """On the pretrained EfficientNet-Lite0 the old preprocessing changed the top-1 class on
    2 of the 6 photos (astronaut, flower)."""
    from export.pretrained import efficientnet_lite0

    model = efficientnet_lite0()
    p = Preprocessing(size=(224, 224), resize_size=256)
    t = ImageClassification(crop_size=224, resize_size=256)
    ours = np.concatenate([p(rgb) for rgb in photos.values()])
    theirs = np.concatenate([_torchvision(t, rgb) for rgb in photos.values()])
    with torch.no_grad():
        top1 = model(torch.from_numpy(np.concatenate([ours, theirs]))).argmax(1).numpy()
    assert list(top1[: len(photos)]) == list(top1[len(photos) :])


def test_antialias_off_is_opencv_interpolation():
    rgb = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    p = Preprocessing(size=(150, 180), resize="direct", antialias=False, mean=(0, 0, 0),
                      std=(1, 1, 1), scale=1.0)
    expected = cv2.resize(rgb, (180, 150), interpolation=cv2.INTER_LINEAR)
    assert np.abs(p(rgb)[0].transpose(1, 2, 0) - expected).max() <= 1


def _box_of_bright_pixels(x: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(x[0, 0] > 0.5)
    return ys.min(), xs.min(), ys.max() + 1.0, xs.max() + 1.0


@pytest.mark.parametrize("p", [
    Preprocessing(size=(224, 224), resize_size=256),
    Preprocessing(size=(224, 224), resize="direct"),
    Preprocessing(size=(48, 192), resize="pad", pad_position="top_left"),
    Preprocessing(size=(224, 224), resize="pad", pad_value=114),
], ids=["crop", "direct", "pad-top-left", "pad-centre"])
def test_crop_box_places_the_input_on_the_image(p):
    """A white rectangle found in the network input maps back onto the photo's rectangle."""
    rgb = np.zeros((300, 451, 3), np.uint8)
    rgb[100:180, 150:300] = 255
    x = p(rgb) * np.asarray(p.std)[:, None, None] + np.asarray(p.mean)[:, None, None]
    y0, x0, y1, x1 = p.crop_box(300, 451)
    sy, sx = (y1 - y0) / p.size[0], (x1 - x0) / p.size[1]
    t, le, b, r = _box_of_bright_pixels(x)
    found = (y0 + t * sy, x0 + le * sx, y0 + b * sy, x0 + r * sx)
    np.testing.assert_allclose(found, (100, 150, 180, 300), atol=1.5 * max(sy, sx))


def test_crop_box_numbers_for_torchvision_rounding():
    y0, x0, y1, x1 = Preprocessing(size=(224, 224), resize_size=256).crop_box(300, 400)
    # resized 256 x 341 (341.33 truncated); crop offsets 16 and round(58.5) = 58
    assert (y0, y1) == pytest.approx((16 * 300 / 256, 240 * 300 / 256))
    assert (x0, x1) == pytest.approx((58 * 400 / 341, 282 * 400 / 341))


@pytest.mark.parametrize("position", ["top_left", "center"])
def test_pad_policy_equals_opencv_resize_and_border(position):
    """A text line resized to height 48 keeping its aspect, padded to 192 (OpenCV by hand)."""
    rgb = np.random.default_rng(3).integers(0, 256, (32, 100, 3), dtype=np.uint8)
    p = Preprocessing(size=(48, 192), resize="pad", pad_position=position, pad_value=127.5,
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), antialias=False)
    resized = cv2.resize(rgb, (150, 48), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    left = 0 if position == "top_left" else 21
    expected = np.full((48, 192, 3), 127.5, np.float32)
    expected[:, left : left + 150] = resized
    expected = (expected / 255 - 0.5) / 0.5
    np.testing.assert_allclose(p(rgb)[0].transpose(1, 2, 0), expected, atol=1.01 * 2 / 255)
    y0, x0, y1, x1 = p.crop_box(32, 100)
    assert (y0, y1) == pytest.approx((0, 32))
    assert (x0, x1) == pytest.approx((-left * 100 / 150, (192 - left) * 100 / 150))


def test_letterbox_of_a_tall_image_pads_top_and_bottom():
    rgb = np.full((400, 100, 3), 200, np.uint8)
    x = Preprocessing(size=(224, 224), resize="pad", pad_value=0, scale=1.0, mean=(0, 0, 0),
                      std=(1, 1, 1))(rgb)[0, 0]
    cols = np.nonzero(x[112] > 0)[0]
    assert (cols.min(), cols.max()) == (84, 139)  # 56 wide, centred: (224 - 56) // 2 = 84
    assert x[:, :84].max() == 0 and x[:, 140:].max() == 0


def test_round_trip_through_manifest_dict():
    p = Preprocessing(size=(192, 192), resize="shorter_side_crop", resize_size=220,
                      mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), color="BGR",
                      interpolation="bicubic", antialias=False)
    assert Preprocessing.from_dict(p.to_dict()) == p
    q = Preprocessing(size=(48, 192), resize="pad", pad_position="top_left", pad_value=127.5)
    assert Preprocessing.from_dict(q.to_dict()) == q


def test_manifest_without_the_new_fields_gets_torchvision_defaults():
    d = Preprocessing(size=(224, 224), resize_size=256).to_dict()
    for key in ("interpolation", "antialias", "pad_position", "pad_value"):
        d.pop(key)
    p = Preprocessing.from_dict(d)
    assert (p.interpolation, p.antialias, p.pad_value) == ("bilinear", True, 0.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"resize": "stretch"}, "resize"), ({"color": "HSV"}, "color"),
    ({"std": (1, 0, 1)}, "std"), ({"resize_size": 100}, "resize_size"),
    ({"resize_size": 10_000_000}, "resize_size"), ({"resize_size": MAX_SIDE + 1}, "resize_size"),
    ({"resize_size": 256.5}, "resize_size"), ({"size": (224, 0)}, "size"),
    ({"size": (MAX_SIDE + 1, 224)}, "size"), ({"interpolation": "lanczos"}, "interpolation"),
    ({"antialias": "yes"}, "antialias"), ({"pad_position": "left"}, "pad_position"),
    ({"pad_value": float("nan")}, "pad_value"), ({"scale": float("inf")}, "scale"),
])
def test_invalid_preprocessing(kwargs, match):
    args = {"size": (224, 224), "resize_size": 256, **kwargs}
    with pytest.raises(ValueError, match=match):
        Preprocessing(**args)


def test_manifest_with_an_absurd_resize_size_is_refused_at_validation():
    """It used to pass validation and fail allocating 450 TB at the first image."""
    manifest = {"format_version": FORMAT_VERSION, "target_layer": "layer4",
                **{k: {} for k in ("source", "feature", "output", "graphs", "files", "check")},
                "input": {**Preprocessing(size=(224, 224), resize_size=256).to_dict(),
                          "resize_size": 10_000_000}}
    with pytest.raises(ArtifactError, match="resize_size") as err:
        validate_manifest(manifest)
    assert "\n" not in str(err.value)


def test_in_memory_arrays():
    assert as_rgb(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(ImageError, match="uint8"):
        as_rgb(np.zeros((5, 6, 3), np.float32))
    with pytest.raises(ImageError, match="numpy array"):
        as_rgb([[1, 2, 3]])


def _documented_blocks(doc: str, section: str) -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / doc).read_text()
    part = text.split(section, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, re.S)


def test_explain_graph_doc_recipes_give_the_api_input_and_map(lite0_dir, photos, tmp_path):
    """Issue 23 item 13: docs/explain_graph.md's snippets, run as written (paths replaced),
    give the input ReciproCAM.explain uses and its map (the cv2.resize recipe it showed was
    0.49 off in the input, 0.061 in the map)."""
    from reciprocam_ir import ReciproCAM

    photo = tmp_path / "cat.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2BGR))
    project, plain, onnxruntime, _ = [
        block.replace("models/efficientnet_lite0", str(lite0_dir)).replace("cat.jpg", str(photo))
        for block in _documented_blocks("docs/explain_graph.md", "## Run it with plain")]
    cam = ReciproCAM(lite0_dir, backend="onnxruntime")
    expected_x = cam.preprocessing(cam.load(photo)[0])
    expected = cam.explain(photo)
    ours: dict = {}
    exec(project + onnxruntime, ours)
    np.testing.assert_array_equal(ours["x"], expected_x)
    np.testing.assert_array_equal(ours["targets"], expected.targets)
    np.testing.assert_allclose(ours["saliency"], expected.saliency, atol=1e-4)
    without: dict = {}
    exec(plain + onnxruntime, without)
    diff = np.abs(without["x"] - expected_x)
    assert without["x"].dtype == np.float32 and without["x"].shape == expected_x.shape
    assert diff.max() <= 1.01 * ONE_STEP and diff.mean() < 1e-4, (diff.max(), diff.mean())
    np.testing.assert_array_equal(without["targets"], expected.targets)
    assert np.abs(without["saliency"] - expected.saliency).max() < 5e-3


# ---------------------------------------------------------------- shrink on load (issue 26)

@pytest.mark.parametrize("p", [Preprocessing(size=(224, 224), resize_size=256),
                               Preprocessing(size=(224, 224), resize="direct"),
                               Preprocessing(size=(160, 224), resize="pad")],
                         ids=["crop", "direct", "pad"])
def test_reduced_image_is_placed_as_its_full_size_image(photo_jpeg, p):
    """Same resized size, crop and crop box as the full decode; pixels within the accuracy
    docs/performance.md measures."""
    from reciprocam_ir.preprocess import image_size, read_image

    full = read_image(photo_jpeg)
    small = read_image(photo_jpeg, min_size=p.min_decode_size)
    assert small.reduction > 1 and image_size(small) == full.shape[:2]
    assert p.crop_box(*image_size(small)) == p.crop_box(*full.shape[:2])
    diff = np.abs(p(small) - p(full))
    assert diff.mean() <= 5e-3 and diff.max() < 0.2, (diff.mean(), diff.max())


def test_explain_shrinks_on_load_maps_boxes_and_overlays_on_the_full_image(lite0_dir,
                                                                           photo_jpeg):
    """decode='reduced': the same classes, maps within 0.05, boxes in full-image pixels,
    upsampled maps and overlays at the photo's size. decode='exact' (default): the input is
    the full decode through the manifest's recipe, as before shrink on load existed."""
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.preprocess import read_image

    reduced = ReciproCAM(lite0_dir, backend="onnxruntime", decode="reduced")
    exact = ReciproCAM(lite0_dir, backend="onnxruntime")
    got, want = reduced.explain(photo_jpeg, top_k=3), exact.explain(photo_jpeg, top_k=3)
    assert got.images[0].shape[:2] == (1125, 1500) and want.images[0].shape[:2] == (2250, 3000)
    assert got.boxes == want.boxes
    np.testing.assert_array_equal(got.targets, want.targets)
    assert np.abs(got.saliency - want.saliency).max() <= 0.05
    assert got.upsample(0).shape == want.upsample(0).shape == (3, 2250, 3000)
    assert got.overlay(0, 1).shape == want.overlay(0, 1).shape == (2250, 3000, 3)
    rgb = read_image(photo_jpeg)
    np.testing.assert_array_equal(exact.load(photo_jpeg)[0], rgb)
    np.testing.assert_array_equal(
        want.saliency, exact.explain_tensor(exact.preprocessing(rgb), top_k=3).saliency)
    with pytest.raises(ValueError, match="decode must be one of"):
        ReciproCAM(lite0_dir, backend="onnxruntime", decode="fast")


def test_preprocess_speed_parts_run(lite0_dir):
    """Smoke test of scripts/preprocess_speed.py --part accuracy, decode and resampler
    (docs/performance.md's tables), in one run: every decoder gives OpenCV's pixels, and the
    manifest's resize is within one 8-bit step of torchvision's."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "preprocess_speed.py"
    proc = subprocess.run([sys.executable, str(script), "--part", "decode", "resampler",
                           "accuracy", "--repeat", "1", "--quick", "--artifact", str(lite0_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    accuracy = [line for line in lines if "|" in line]
    assert len(accuracy) == 3 and "1/4" in accuracy[2] and "worst:" in proc.stdout
    for header in ("JPEG", "1632x1224 to"):
        at = lines.index(next(line for line in lines if line.startswith(header)))
        rows = lines[at + 1 : at + 3]
        assert len(rows) == 2, proc.stdout
        for row in rows:
            if header == "JPEG":
                assert row.endswith("simplejpeg, pillow, reader"), row
            else:
                assert row.split()[-4] == "1", row  # numpy: at most one step off
