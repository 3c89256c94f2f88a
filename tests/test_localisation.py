"""Known ground truth: a tiny CNN trained here must point at the object it classified."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from export.torch.pipeline import export_artifact
from reciprocam_ir import ReciproCAM

SIZE, OBJECT = 64, 14
COLOURS = np.array([[230, 40, 40], [40, 200, 40], [40, 40, 230]], np.uint8)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy grey images with one coloured square; the class is the square's colour."""
    rng = np.random.default_rng(seed)
    images = rng.normal(120, 25, (n, SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    labels = rng.integers(0, len(COLOURS), n)
    boxes = []
    for img, label in zip(images, labels, strict=True):
        y, x = rng.integers(0, SIZE - OBJECT, 2)
        img[y:y + OBJECT, x:x + OBJECT] = COLOURS[label]
        boxes.append((y, x, y + OBJECT, x + OBJECT))
    return images, labels, np.array(boxes)


class Locator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, len(COLOURS))
        self.reciprocam_input = {"size": SIZE, "resize": "direct", "mean": (0.5, 0.5, 0.5),
                                 "std": (0.25, 0.25, 0.25)}

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture(scope="module")
def locator_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = Locator()
    images, labels, _ = synthetic(768, seed=0)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95, f"the toy classifier did not learn ({accuracy:.2f})"
    return export_artifact(model, out=tmp_path_factory.mktemp("locator") / "a", fmt="both")


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_map_peaks_inside_the_object(locator_dir, backend):
    images, labels, boxes = synthetic(100, seed=1)
    cam = ReciproCAM(locator_dir, backend=backend)
    exp = cam.explain(list(images), targets=None)
    hits = 0
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        full = exp.upsample(i)[0]
        py, px = np.unravel_index(full.argmax(), full.shape)
        hits += y0 <= py < y1 and x0 <= px < x1
    assert hits / len(boxes) >= 0.9, f"peak inside the object on {hits} of {len(boxes)}"
