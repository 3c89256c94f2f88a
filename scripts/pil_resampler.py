"""The network input against the PIL-based tools' own transforms, resampler torchvision
(before) and pil (after), on the bundled photos.

Each recipe is the one the exporter reads from the tool (timm's ``pretrained_cfg``,
optimum's ``preprocessor_config.json``, Ultralytics' metadata); each reference is the
tool's transform on the PIL image: timm's ``create_transform(**resolve_data_config(...))``,
a ViTImageProcessor's PIL resize to 224 x 224 then rescale and normalise, Ultralytics'
``classify_transforms`` (torchvision ``Resize`` + ``CenterCrop`` on the PIL image, ToTensor).
Prints mean and max |difference| (normalised units) over the photos and the median time
per photo.

    .venv/bin/python scripts/pil_resampler.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reciprocam_ir.preprocess import Preprocessing  # noqa: E402
from sample_images import sample_images  # noqa: E402

Transform = Callable[[np.ndarray], np.ndarray]


def timm_case(name: str) -> tuple[Preprocessing, Transform]:
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from export.torch.model_source import load_model

    model = timm.create_model(name, pretrained=False, num_classes=2)
    transform = create_transform(**resolve_data_config({}, model=model))
    return load_model(model).preprocessing, \
        lambda rgb: transform(Image.fromarray(rgb))[None].numpy()


def hf_vit_case() -> tuple[Preprocessing, Transform]:
    from PIL import Image

    from export.graphfile.tool_recipes import optimum_recipe

    config = {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2,
              "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "preprocessor_config.json"
        path.write_text(json.dumps(config))
        recipe = optimum_recipe(path)

    def reference(rgb: np.ndarray) -> np.ndarray:
        resized = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR))
        x = (resized.astype(np.float64) * (1 / 255) - 0.5) / 0.5
        return x.astype(np.float32).transpose(2, 0, 1)[None]

    return Preprocessing(size=recipe.size, **recipe.options), reference


def ultralytics_case() -> tuple[Preprocessing, Transform]:
    from PIL import Image
    from torchvision import transforms as T

    from export.graphfile.tool_recipes import ultralytics_recipe

    recipe = ultralytics_recipe({"task": "classify", "imgsz": "224"})
    transform = T.Compose([T.Resize(224, T.InterpolationMode.BILINEAR), T.CenterCrop(224),
                           T.ToTensor()])
    return Preprocessing(size=recipe.size, **recipe.options), \
        lambda rgb: transform(Image.fromarray(rgb))[None].numpy()


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    photos = sample_images()
    cases = {"timm deit_tiny_patch16_224 (bicubic, 248/224)": timm_case("deit_tiny_patch16_224"),
             "timm resnet18.a1_in1k (bicubic, 235/224)": timm_case("resnet18.a1_in1k"),
             "HF ViTImageProcessor (bilinear, 224x224)": hf_vit_case(),
             "Ultralytics classify (bilinear, 224/224)": ultralytics_case()}
    print(f"{len(photos)} photos: {', '.join(photos)}")
    print(f"{'recipe':<48} {'resampler':<12} {'mean |d|':>9} {'max |d|':>8} {'ms/photo':>9}")
    for name, (pil, reference) in cases.items():
        theirs = {k: reference(rgb) for k, rgb in photos.items()}
        for p in (dataclasses.replace(pil, resampler="torchvision"), pil):
            diffs = [np.abs(p(rgb) - theirs[k]) for k, rgb in photos.items()]
            ms = statistics.median(median_ms(lambda rgb=rgb, p=p: p(rgb), args.repeat)
                                   for rgb in photos.values())
            print(f"{name:<48} {p.resampler:<12} {np.mean([d.mean() for d in diffs]):>9.2e} "
                  f"{max(d.max() for d in diffs):>8.2e} {ms:>9.2f}")


if __name__ == "__main__":
    main()
