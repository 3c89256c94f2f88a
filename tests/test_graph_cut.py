"""Cut points: validity, the default layer, GAP detection, batch-size rebinding."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from export.errors import ExportError
from export.torch.graph_cut import CutGraph

X224 = torch.randn(1, 3, 224, 224)


@pytest.fixture(scope="module")
def resnet18_graph() -> CutGraph:
    return CutGraph(torchvision.models.resnet18(weights=None).eval(), X224)


def test_resnet_cuts_are_stage_boundaries(resnet18_graph):
    names = [c.name for c in resnet18_graph.cuts]
    assert {"layer1", "layer2", "layer3", "layer4", "avgpool"} <= set(names)
    assert names.index("layer3") < names.index("layer4")
    # inside a residual block the skip connection crosses the cut
    assert not any(n.startswith("layer4.0.conv") or n.startswith("layer4.1.bn") for n in names)
    assert resnet18_graph.default_cut().name == "layer4"
    assert resnet18_graph.find("layer4.1").name == "layer4"


def test_invalid_cut_names_the_skip_and_valid_neighbours(resnet18_graph):
    with pytest.raises(ExportError) as err:
        resnet18_graph.find("layer4.0.conv2")
    message = str(err.value)
    assert "not a valid cut" in message and "skip" in message
    assert "layer4" in message.split("valid cuts near it:")[1]
    assert "\n" not in message


def test_unknown_and_ambiguous_layers(resnet18_graph):
    with pytest.raises(ExportError, match="unknown layer 'layer9'"):
        resnet18_graph.find("layer9")
    with pytest.raises(ExportError, match="more than once"):
        resnet18_graph.find("layer4.0.relu")


def test_split_reproduces_model_and_detects_gap(resnet18_graph):
    cut = resnet18_graph.find("layer3")
    split = resnet18_graph.split(cut)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feature = split.f(x)
        assert feature.shape == (2, 256, 14, 14)
        torch.testing.assert_close(split.g(feature), resnet18_graph.gm(x), rtol=1e-4, atol=1e-4)
    assert split.g_pooled is None  # g starts with layer4, not a pool
    split4 = resnet18_graph.split(resnet18_graph.find("layer4"))
    with torch.no_grad():
        feature = split4.f(x)
        torch.testing.assert_close(split4.g_pooled(feature.mean((2, 3))), split4.g(feature),
                                   rtol=1e-5, atol=1e-5)


class MeanHead(nn.Module):
    """GAP written as x.mean((2, 3)) and a batch size read from the input after the cut."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        batch = x.size(0)
        return self.fc(self.features(x).mean((2, 3)).view(batch, -1))


def test_mean_gap_and_batch_size_rebinding():
    graph = CutGraph(MeanHead().eval(), torch.randn(1, 3, 33, 33))
    split = graph.split(graph.default_cut())
    assert graph.default_cut().name == "features"
    assert split.g_pooled is not None
    feature = torch.randn(5, 8, 16, 16)  # batch 5 through g, though x had batch 1
    with torch.no_grad():
        torch.testing.assert_close(split.g_pooled(feature.mean((2, 3))), split.g(feature))


class ShapeUser(nn.Module):
    """Reads the input's height after the cut: a real dependency, so no cut after it is valid."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.features(x).mean((2, 3)) * x.size(2)
        return self.fc(y)


def test_input_shape_use_beyond_batch_is_a_dependency():
    graph = CutGraph(ShapeUser().eval(), torch.randn(1, 3, 16, 16))
    with pytest.raises(ExportError, match="not a valid cut"):
        graph.find("features")


def test_repeated_activation_is_dropped():
    from export.pretrained import efficientnet_lite0

    graph = CutGraph(efficientnet_lite0(), X224)
    cut = graph.default_cut()
    assert cut.name == "_bn1" and cut.shape == (1280, 7, 7)
    assert graph.split(cut).g_pooled is not None
