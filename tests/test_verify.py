"""The export check: feature map, scores, batches of different images, input dependence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from export.artifact.verify import check_graphs, check_input_dependence, judge, verification_images
from export.errors import ExportError
from export.torch.graph_cut import CutGraph
from export.torch.model_source import load_model
from export.torch.pipeline import export_artifact, torch_reference


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy's artifact (ONNX) and its torch reference."""
    loaded = load_model("toy_models:tiny_gap")
    example = verification_images((1, 3, *loaded.preprocessing.size))[:1]
    import torch

    graph = CutGraph(loaded.model, torch.from_numpy(example))
    ref = torch_reference(loaded, graph.split(graph.find("body")))
    out = export_artifact("toy_models:tiny_gap", fmt="onnx",
                          out=tmp_path_factory.mktemp("verify") / "toy")
    files = {role: out / f"{role}.onnx" for role in ("f", "g", "g_pooled")}
    return files, ref


def test_two_different_images():
    images = verification_images((1, 3, 8, 8))
    assert images.shape == (2, 3, 8, 8) and not np.allclose(images[0], images[1])


def test_exported_graphs_pass(toy):
    files, ref = toy
    errors = check_graphs("onnxruntime", files, ref, "toy")
    check = judge({"onnxruntime": errors}, ref, "toy", lambda m: None, "body")
    assert check["relative_error"] <= 1e-5 and check["feature_max_abs_error"] <= 1e-5


def test_a_feature_map_mismatch_is_refused(toy):
    """g(f(x)) can match while f does not (here: a reference map 1 % off)."""
    files, ref = toy
    wrong = dataclasses.replace(ref, feature=ref.feature * 1.01)
    errors = check_graphs("onnxruntime", files, wrong, "toy")
    with pytest.raises(ExportError, match="exported f does not reproduce the model's feature "
                                          "map at 'body'"):
        judge({"onnxruntime": errors}, wrong, "toy", lambda m: None, "body")


def test_scores_that_ignore_the_image_are_refused():
    check_input_dependence(np.array([[1.0, 2.0], [1.0, 2.1]]), "m")
    with pytest.raises(ExportError, match="m: the model's scores are the same"):
        check_input_dependence(np.array([[1.0, 2.0], [1.0, 2.0]]), "m")
