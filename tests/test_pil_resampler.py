"""``resampler: pil``: the network input the PIL-based tools (timm, Hugging Face,
Ultralytics) give, Pillow doing the resize; the manifest field and its checks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import timm
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision import transforms as T

from conftest import import_blocker
from export.torch.model_source import load_model
from reciprocam_ir.artifact import FORMAT_VERSION, ArtifactError, validate_manifest
from reciprocam_ir.image_reader import DecodedImage
from reciprocam_ir.pil_resample import pil_resize
from reciprocam_ir.preprocess import Preprocessing, image_size, read_image

RAW = {"scale": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
"""Pixel values 0..255 as the input: the resize compared step by step."""


def _chw(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).transpose(2, 0, 1)[None]


@pytest.fixture(scope="module")
def timm_model():
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=2, depth=1)


def test_timm_recipe_gives_timms_own_transform(timm_model, photos):
    """The exporter's recipe for a timm model (bicubic, shorter side 248, crop 224) is
    ``create_transform(**resolve_data_config(...))`` on the PIL image; the torchvision
    resampler on the same recipe is not (mean 0.002-0.003, up to 0.12 at edges)."""
    p = load_model(timm_model).preprocessing
    assert (p.resampler, p.interpolation, p.resize_size) == ("pil", "bicubic", 248)
    transform = create_transform(**resolve_data_config({}, model=timm_model))
    torchvision_resampled = dataclasses.replace(p, resampler="torchvision")
    for name, rgb in photos.items():
        theirs = transform(Image.fromarray(rgb))[None].numpy()
        np.testing.assert_allclose(p(rgb), theirs, rtol=0, atol=1e-6, err_msg=name)
        diff = np.abs(torchvision_resampled(rgb) - theirs)
        assert diff.mean() > 1e-3 and diff.max() > 0.01, (name, diff.mean(), diff.max())


def test_hugging_face_direct_bilinear_resize(photos):
    """ViTImageProcessor: PIL resize to 224x224 (resample 2), x 1/255, mean/std 0.5."""
    p = Preprocessing(size=(224, 224), resize="direct", interpolation="bilinear",
                      resampler="pil", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    for name, rgb in photos.items():
        resized = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR))
        theirs = (resized.astype(np.float64) / 255 - 0.5) / 0.5
        np.testing.assert_allclose(p(rgb), _chw(theirs), rtol=0, atol=1e-6, err_msg=name)


def _tool_resize(p: Preprocessing, rgb: np.ndarray) -> np.ndarray:
    """The resize as the tools run it on a PIL image (torchvision's transforms call PIL's
    resize and crop or pad the PIL image), pixel values 0..255."""
    image = Image.fromarray(rgb)
    mode = T.InterpolationMode(p.interpolation)
    if p.resize == "pad":
        (rh, top), (rw, left) = p.placement(*rgb.shape[:2])
        canvas = np.full((*p.size, 3), p.pad_value, np.float32)
        canvas[top : top + rh, left : left + rw] = np.asarray(T.Resize((rh, rw), mode)(image))
        return _chw(canvas)
    size = p.size if p.resize == "direct" else \
        p.resize_size if p.resize == "shorter_side_crop" else (p.resize_size, p.resize_size)
    cropped = T.CenterCrop(p.size)(T.Resize(size, mode)(image))
    return _chw(np.asarray(cropped))


@pytest.mark.parametrize("policy, size, resize_size", [
    ("direct", (48, 64), None), ("shorter_side_crop", (56, 56), 64),
    ("shorter_side_crop", (48, 192), 64), ("squash_crop", (56, 56), 64),
    ("pad", (64, 64), None),
])
@pytest.mark.parametrize("shape", [(90, 131), (131, 90), (20, 27)])
def test_every_policy_is_pils_resize_cropped_or_padded(policy, size, resize_size, shape):
    """Crops larger than the resize are padded with 0, as torchvision's CenterCrop pads."""
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    p = Preprocessing(size=size, resize=policy, resize_size=resize_size,
                      interpolation="bicubic", resampler="pil",
                      pad_value=114.0 if policy == "pad" else 0.0, **RAW)
    np.testing.assert_array_equal(p(rgb), _tool_resize(p, rgb))


def test_a_crop_of_a_long_strip_is_the_whole_resize_cropped():
    """1:100 strip, shorter side to 64: 64 x 6400 resized for a 56 x 56 crop, as the tools."""
    rgb = np.random.default_rng(3).integers(0, 256, (900, 9, 3), dtype=np.uint8)
    p = Preprocessing(size=(56, 56), resize_size=64, interpolation="bicubic",
                      resampler="pil", **RAW)
    np.testing.assert_array_equal(p(rgb), _tool_resize(p, rgb))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_beyond_the_pixel_budget_only_the_window_is_resized(photos, interpolation):
    """Past WINDOW_ABOVE the kept window alone is resized (PIL's box): on the photos within
    two 8-bit steps of the whole resize cropped (Pillow may order its passes otherwise)."""
    rgb = photos["chelsea"]
    h, w = rgb.shape[:2]
    size, rows, cols = (600, 902), (188, 412), (339, 563)
    whole = pil_resize(rgb, size, rows, cols, interpolation, (h, w))
    window = pil_resize(rgb, size, rows, cols, interpolation, (h, w), window_above=0)
    assert window.shape == whole.shape == (224, 224, 3)
    diff = np.abs(window - whole)
    assert diff.max() <= 2 and diff.mean() < 0.3, (diff.max(), diff.mean())


@pytest.mark.parametrize("policy, resize_size", [
    ("direct", None), ("shorter_side_crop", 40), ("pad", None)])
def test_a_reduced_image_is_resized_over_the_extent_of_its_full_image(policy, resize_size):
    """An image decoded at 1/2 of 79 x 121 has 40 x 61 pixels spanning 39.5 x 60.5: PIL
    resizes that box. At 1/2 of 80 x 122 the box is the whole image: the input is the one
    of the small image itself, and the crop box is the full image's."""
    rgb = np.random.default_rng(4).integers(0, 256, (40, 61, 3), dtype=np.uint8)
    p = Preprocessing(size=(32, 48), resize=policy, resize_size=resize_size,
                      resampler="pil", **RAW)

    def reduced(full: tuple[int, int]) -> DecodedImage:
        image = rgb.copy().view(DecodedImage)
        image.full_size, image.reduction = full, 2
        return image

    exact = reduced((80, 122))
    np.testing.assert_array_equal(p(exact), p(rgb))
    assert p.crop_box(*image_size(exact)) == p.crop_box(80, 122)
    if policy == "direct":
        boxed = Image.fromarray(rgb).resize((48, 32), Image.Resampling.BILINEAR,
                                            box=(0, 0, 60.5, 39.5))
        np.testing.assert_array_equal(p(reduced((79, 121))), _chw(np.asarray(boxed)))


@pytest.mark.parametrize("p", [
    Preprocessing(size=(224, 224), resize_size=248, interpolation="bicubic", resampler="pil"),
    Preprocessing(size=(224, 224), resize="direct", resampler="pil"),
    Preprocessing(size=(160, 224), resize="pad", resampler="pil")], ids=["crop", "direct", "pad"])
def test_a_jpeg_decoded_reduced_is_placed_as_its_full_decode(photo_jpeg, p):
    full = read_image(photo_jpeg)
    small = read_image(photo_jpeg, min_size=p.min_decode_size)
    assert small.reduction > 1 and image_size(small) == full.shape[:2]
    assert p.crop_box(*image_size(small)) == p.crop_box(*full.shape[:2])
    diff = np.abs(p(small) - p(full))
    assert diff.mean() <= 5e-3 and diff.max() < 0.2, (diff.mean(), diff.max())


def test_manifest_round_trip_and_manifests_without_it():
    p = Preprocessing(size=(224, 224), resize_size=248, interpolation="bicubic",
                      resampler="pil")
    d = p.to_dict()
    assert d["resampler"] == "pil" and Preprocessing.from_dict(d) == p
    d.pop("resampler")
    assert Preprocessing.from_dict(d).resampler == "torchvision"
    assert Preprocessing(size=(8, 8), resize="direct").resampler == "torchvision"


@pytest.mark.parametrize("kwargs, match", [
    ({"resampler": "opencv"}, "resampler must be one of .'torchvision', 'pil'., got 'opencv'"),
    ({"resampler": "pil", "antialias": False}, "antialias false has no PIL equivalent"),
])
def test_invalid_resampler_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocessing(size=(224, 224), resize_size=256, **kwargs)


def test_a_manifest_with_an_unknown_resampler_is_refused_in_one_line():
    manifest = {"format_version": FORMAT_VERSION, "target_layer": "layer4",
                **{k: {} for k in ("source", "feature", "output", "graphs", "files", "check")},
                "input": {**Preprocessing(size=(224, 224), resize_size=256).to_dict(),
                          "resampler": "PIL"}}
    with pytest.raises(ArtifactError, match="resampler must be one of") as err:
        validate_manifest(manifest)
    assert "\n" not in str(err.value)


PIL_BLOCKED = import_blocker("PIL") + """
import numpy as np
from reciprocam_ir.preprocess import Preprocessing
rgb = np.zeros((30, 40, 3), np.uint8)
assert Preprocessing(size=(16, 16), resize_size=20)(rgb).shape == (1, 3, 16, 16)
try:
    Preprocessing(size=(16, 16), resize_size=20, resampler="pil")(rgb)
except ImportError:
    print("pil only when asked")
"""


def test_pillow_is_imported_only_for_the_pil_resampler():
    proc = subprocess.run([sys.executable, "-c", PIL_BLOCKED], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pil only when asked" in proc.stdout
