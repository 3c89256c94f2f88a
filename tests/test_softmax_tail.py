"""A final Softmax behind a no-op tail (Identity, Reshape/Flatten, Cast, Mul by 1, unit axes).

Converters write ``... → Softmax → Identity → output``; the ONNX and IR cutters see the
Softmax through such tails alike, so ``g`` outputs logits (``output.logits: true``) unless
``keep_softmax`` keeps the probabilities (``output.logits: false``).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest

from conftest import read_manifest as manifest
from export.graphfile.pipeline import export_graph_file
from graph_models import (
    SOFTMAX_TAILS,
    native_ir,
    native_ir_with_tail,
    softmax_tail,
    tiny_classifier,
    to_ir,
)
from reciprocam_ir import ReciproCAM

BACKENDS = ("onnxruntime", "openvino")
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The same classifier with no Softmax: its output is the logits ``g`` must give."""
    path = tiny_classifier(tmp_path_factory.mktemp("plain") / "plain.onnx")
    return ort.InferenceSession(str(path))


def explain(out, image, backends=BACKENDS):
    return {b: ReciproCAM(out, backend=b, precision="f32").explain(image, top_k=2)
            for b in backends}


@pytest.mark.parametrize("tail", SOFTMAX_TAILS)
def test_softmax_behind_a_tail_is_dropped_on_both_formats(tail, tmp_path, image, plain):
    path = softmax_tail(tmp_path / f"{tail}.onnx", tail)
    out = export_graph_file(path, fmt="both", out=tmp_path / "both")  # the check passes
    m = manifest(out)["output"]
    assert m["logits"] and m["softmax_removed"]
    x = ReciproCAM(out, backend="onnxruntime").preprocessing(image)
    logits = plain.run(None, {"image": x})[0]
    exps = explain(out, image)
    ir = export_graph_file(to_ir(path), out=tmp_path / "ir")  # converted by OpenVINO
    assert manifest(ir)["output"]["logits"] and manifest(ir)["output"]["softmax_removed"]
    exps["ir input"] = explain(ir, image, ("openvino",))["openvino"]
    for exp in exps.values():
        np.testing.assert_allclose(exp.scores, logits, atol=1e-5)
        np.testing.assert_array_equal(exp.targets, exps["onnxruntime"].targets)
        np.testing.assert_allclose(exp.saliency, exps["onnxruntime"].saliency, atol=1e-3)


@pytest.mark.parametrize("tail", SOFTMAX_TAILS)
def test_keep_softmax_behind_a_tail_gives_probabilities(tail, tmp_path, image):
    path = softmax_tail(tmp_path / f"{tail}.onnx", tail)
    out = export_graph_file(path, fmt="both", out=tmp_path / "kept", keep_softmax=True)
    m = manifest(out)["output"]
    assert not m["logits"] and not m["softmax_removed"]
    x = ReciproCAM(out, backend="onnxruntime").preprocessing(image)
    probs = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    for exp in explain(out, image).values():
        np.testing.assert_allclose(exp.scores, probs, atol=1e-6)


def test_native_ir_softmax_behind_a_tail(tmp_path, image):
    """An IR written with the opset API keeps its tail (no converter folds it)."""
    path = native_ir_with_tail(tmp_path / "tail.xml")
    node, chain = ov.Core().read_model(str(path)).get_results()[0], []
    while node.get_type_name() != "Softmax":
        node = node.input_value(0).get_node()
        chain.append(node.get_type_name())
    assert chain == ["Convert", "Multiply", "Reshape", "Softmax"]
    out = export_graph_file(path, out=tmp_path / "logits")
    kept = export_graph_file(path, out=tmp_path / "kept", keep_softmax=True)
    assert manifest(out)["output"]["logits"] and not manifest(kept)["output"]["logits"]
    core = ov.Core()
    x = ReciproCAM(out, backend="openvino").preprocessing(image)
    logits = core.compile_model(str(native_ir(tmp_path / "plain.xml", softmax=False)), "CPU",
                                F32)({0: x})[0]
    probs = core.compile_model(str(path), "CPU", F32)({0: x})[0]
    for folder, expected in ((out, logits), (kept, probs)):
        scores = ReciproCAM(folder, backend="openvino", precision="f32").explain(image).scores
        np.testing.assert_allclose(scores, expected, atol=1e-6)
