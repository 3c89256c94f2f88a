"""ReciproCAM on the real runtimes: parity, the torch reference, targets, chunking, shortcut."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from reciprocam_ir import ReciproCAM, create_backend
from reciprocam_ir.masking import masked_batch
from reciprocam_ir.saliency import normalise

BACKENDS = ("openvino", "onnxruntime")


def torch_reference(model: torch.nn.Module, layer: str, x: np.ndarray,
                    classes: list[int]) -> np.ndarray:
    """Maps from the whole torch model with ``layer``'s output replaced by the masked batch."""
    module = dict(model.named_modules())[layer]
    x = torch.from_numpy(x)
    captured = []
    with torch.no_grad():
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
        model(x)
        handle.remove()
        feature = captured[0][0]
        c, h, w = feature.shape
        n = h * w
        masked = torch.zeros(n, c, n)
        for pos in range(n):
            masked[pos, :, pos] = feature.reshape(c, n)[:, pos]
        handle = module.register_forward_hook(lambda m, i, o: masked.reshape(n, c, h, w))
        scores = model(x.repeat(n, 1, 1, 1)).numpy()
        handle.remove()
    return normalise(scores[:, classes]).reshape(len(classes), h, w)


@pytest.fixture(scope="module")
def resnet18_model(resnet18_weights) -> torch.nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(resnet18_weights, weights_only=True))
    return model.eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet18_maps_match_torch_reference(resnet18_dir, resnet18_model, photos, backend):
    cam = ReciproCAM(resnet18_dir, backend=backend, precision="f32")
    exp = cam.explain(photos["coffee"], targets=[1, 500, 967])
    x = cam.preprocessing(photos["coffee"])
    reference = torch_reference(resnet18_model, "layer4", x, [1, 500, 967])
    np.testing.assert_allclose(exp.saliency[0], reference, atol=1e-4)
    with torch.no_grad():
        logits = resnet18_model(torch.from_numpy(x)).numpy()[0]
    np.testing.assert_allclose(exp.scores[0], logits, atol=1e-4 * np.abs(logits).max())


def test_lite0_maps_agree_across_backends_and_with_torch(lite0_dir, photos):
    from export.pretrained import efficientnet_lite0

    images = [photos["chelsea"], photos["coffee"]]
    maps = {b: ReciproCAM(lite0_dir, backend=b, precision="f32").explain(images, top_k=2)
            for b in BACKENDS}
    ov, ort = maps["openvino"], maps["onnxruntime"]
    np.testing.assert_array_equal(ov.targets, ort.targets)
    np.testing.assert_allclose(ov.saliency, ort.saliency, atol=1e-4)
    cam = ReciproCAM(lite0_dir, backend="onnxruntime")
    model = efficientnet_lite0()
    for i, image in enumerate(images):
        reference = torch_reference(model, "_bn1", cam.preprocessing(image),
                                    list(ov.targets[i]))
        np.testing.assert_allclose(ov.saliency[i], reference, atol=1e-4)
    assert ov.labels[ov.targets[0, 0]] == "Egyptian cat"
    assert ov.labels[ov.targets[1, 0]] == "espresso"


def test_cat_map_sits_on_the_cat(lite0_dir, photos):
    """chelsea is a close-up cat face: the map's mass lies on the face, not around it."""
    exp = ReciproCAM(lite0_dir, backend="openvino").explain(photos["chelsea"])
    full = exp.upsample(0)[0]
    h, w = full.shape
    face = np.zeros_like(full, dtype=bool)
    face[int(0.1 * h):int(0.75 * h), int(0.2 * w):int(0.75 * w)] = True
    assert full[face].mean() > 2 * full[~face].mean()
    peak_y, peak_x = np.unravel_index(full.argmax(), full.shape)
    assert face[peak_y, peak_x]


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_g_path_on_a_flatten_head(flatten_dir, backend):
    from toy_models import tiny_flatten

    cam = ReciproCAM(flatten_dir, backend=backend, precision="f32")
    assert not cam.uses_pooled_tail
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    exp = cam.explain(image, targets="all")
    layer = cam.artifact.manifest["target_layer"]
    assert layer == "head.1" and exp.saliency.shape == (1, 4, 8, 8)
    reference = torch_reference(tiny_flatten(), layer, cam.preprocessing(image), [0, 1, 2, 3])
    np.testing.assert_allclose(exp.saliency[0], reference, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gap_shortcut_equals_full_g(resnet18_dir, photos, backend):
    """The pooled tail on N vectors gives the maps of the full g on N masked maps."""
    cam = ReciproCAM(resnet18_dir, backend=backend, precision="f32")
    assert cam.uses_pooled_tail
    fast = cam.explain(photos["astronaut"], top_k=3)
    engine = create_backend(backend, "CPU", "f32")
    fmt = engine.graph_format[0]
    f = engine.compile(cam.artifact.graph_path("f", fmt))
    g = engine.compile(cam.artifact.graph_path("g", fmt))
    feature = f(cam.preprocessing(photos["astronaut"]))[0]
    scores = g(np.concatenate([feature[None], masked_batch(feature)]))
    np.testing.assert_allclose(fast.scores[0], scores[0], atol=1e-4)
    slow = normalise(scores[1:, fast.targets[0]]).reshape(3, 7, 7)
    np.testing.assert_allclose(fast.saliency[0], slow, atol=1e-4)


@pytest.mark.parametrize("budget_mb", [0.002, 0.01, 1.0])
def test_chunking_gives_the_same_maps(flatten_dir, budget_mb):
    image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    whole = ReciproCAM(flatten_dir, backend="onnxruntime").explain(image, targets="all")
    chunked = ReciproCAM(flatten_dir, backend="onnxruntime", memory_budget_mb=budget_mb)
    assert chunked.rows_per_call() < 65 or budget_mb == 1.0
    part = chunked.explain(image, targets="all")
    np.testing.assert_allclose(part.saliency, whole.saliency, atol=1e-6)
    np.testing.assert_allclose(part.scores, whole.scores, atol=1e-6)


def test_budget_below_one_masked_map_is_a_clear_error(flatten_dir):
    with pytest.raises(MemoryError, match=r"cannot hold one masked map .*\(4x8x8 float32\)"):
        ReciproCAM(flatten_dir, backend="onnxruntime", memory_budget_mb=0.0005)


def test_targets_top_k_and_all(resnet18_dir, photos):
    cam = ReciproCAM(resnet18_dir, backend="onnxruntime")
    images = [photos["chelsea"], photos["rocket"]]
    top3 = cam.explain(images, top_k=3)
    assert top3.saliency.shape == (2, 3, 7, 7) and top3.scores.shape == (2, 1000)
    for i in range(2):
        np.testing.assert_array_equal(top3.targets[i], np.argsort(-top3.scores[i])[:3])
    fixed = cam.explain(images, targets=[5, 7])
    assert fixed.targets.tolist() == [[5, 7], [5, 7]]
    one = cam.explain(images[0], targets=7)
    np.testing.assert_allclose(one.saliency[0, 0], fixed.saliency[0, 1], atol=1e-6)
    everything = cam.explain(images[0], targets="all")
    assert everything.saliency.shape == (1, 1000, 7, 7)
    np.testing.assert_allclose(everything.saliency[0, 5], fixed.saliency[0, 0], atol=1e-6)
    assert 0.0 <= everything.saliency.min() and everything.saliency.max() <= 1.0
    with pytest.raises(ValueError, match="out of range"):
        cam.explain(images[0], targets=1000)
    with pytest.raises(ValueError, match="top_k"):
        cam.explain(images[0], top_k=0)


def test_softmax_scores_option(resnet18_dir, photos):
    logits = ReciproCAM(resnet18_dir, backend="onnxruntime").explain(photos["coffee"], targets=3)
    soft = ReciproCAM(resnet18_dir, backend="onnxruntime", scores="softmax").explain(
        photos["coffee"], targets=3)
    # the model's own output either way (softmax runs the fused graph: other summation order)
    np.testing.assert_allclose(soft.scores, logits.scores, rtol=1e-5, atol=1e-5)
    assert not np.allclose(soft.saliency, logits.saliency, atol=1e-3)


def test_batches_equal_single_images(resnet18_dir, photos):
    cam = ReciproCAM(resnet18_dir, backend="openvino", precision="f32", batch_size=2)
    images = [photos[k] for k in ("chelsea", "coffee", "rocket")]
    together = cam.explain(images)
    for i, image in enumerate(images):
        alone = cam.explain(image)
        np.testing.assert_allclose(together.saliency[i], alone.saliency[0], atol=1e-5)


def test_explanation_images_overlay_and_save(resnet18_dir, photos, tmp_path):
    exp = ReciproCAM(resnet18_dir, backend="onnxruntime").explain(
        [photos["chelsea"]], targets=[285, 1], names=["cat.png"])
    full = exp.upsample(0)
    assert full.shape == (2, *photos["chelsea"].shape[:2])
    over = exp.overlay(0, 1)
    assert over.shape == photos["chelsea"].shape and over.dtype == np.uint8
    files = exp.save(tmp_path, save_npz=True)
    assert sorted(p.name for p in files) == ["cat.npz", "cat_1_goldfish.png",
                                             "cat_285_Egyptian_cat.png"]
    data = np.load(tmp_path / "cat.npz")
    np.testing.assert_array_equal(data["saliency"], exp.saliency[0])
    assert data["targets"].tolist() == [285, 1] and data["scores"].shape == (1000,)


@pytest.fixture(scope="module")
def graph_artifacts(tmp_path_factory) -> dict:
    """Artifacts of helper-built graphs: one softmax model exported with and without its
    softmax, and a model with a 64x64 feature map."""
    from export.graphfile.pipeline import export_graph_file
    from graph_models import tiny_classifier, wide_classifier

    d = tmp_path_factory.mktemp("graph_artifacts")
    softmax = tiny_classifier(d / "softmax.onnx", softmax=True)
    return {"logits": export_graph_file(softmax, out=d / "logits"),
            "probs": export_graph_file(softmax, out=d / "probs", keep_softmax=True),
            "wide": export_graph_file(wide_classifier(d / "wide.onnx"), fmt="onnx",
                                      out=d / "wide")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_kept_softmax_is_not_applied_twice(graph_artifacts, image, backend):
    """Scoring by probabilities gives the same maps whether g outputs them or the logits."""
    from conftest import read_manifest

    assert read_manifest(graph_artifacts["probs"])["output"]["logits"] is False
    by_logits = ReciproCAM(graph_artifacts["logits"], backend=backend, precision="f32",
                           scores="softmax").explain(image, targets="all")
    for scores in ("softmax", "logits"):  # a probability model is scored as it is
        by_probs = ReciproCAM(graph_artifacts["probs"], backend=backend, precision="f32",
                              scores=scores).explain(image, targets="all")
        np.testing.assert_allclose(by_probs.saliency, by_logits.saliency, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"memory_budget_mb": float("inf")}, "memory_budget_mb must be a number of MiB"),
    ({"memory_budget_mb": float("nan")}, "memory_budget_mb must be"),
    ({"memory_budget_mb": -1}, "memory_budget_mb must be"),
    ({"memory_budget_mb": 1e12}, "memory_budget_mb must be"),
    ({"batch_size": 0}, "batch_size must be an integer of at least 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"mask": "gaussian", "mask_sigma": float("inf")}, "mask_sigma must be a number"),
    ({"mask": "drop", "mask_sigma": float("nan")}, "mask_sigma must be a number"),
    ({"mask": "gaussian", "mask_sigma": -5.0}, "mask_sigma must be a number"),
    ({"mask": "gaussian", "mask_sigma": 1e6}, "mask_sigma must be a number"),
    ({"mask_sigma": 2.0}, "mask_sigma sets the window of mask gaussian, drop or window"),
    ({"mask": "blur"}, "mask must be one of"),
    ({"scores": "probits"}, "scores must be one of"),
])
def test_bad_options_are_refused_before_anything_loads(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReciproCAM(tmp_path / "not_an_artifact", **kwargs)


def test_classes_and_top_k_together_are_refused(graph_artifacts, image):
    cam = ReciproCAM(graph_artifacts["logits"], backend="onnxruntime")
    for targets in ([1], 2, "all"):
        with pytest.raises(ValueError, match="top_k=3 applies only to the predicted classes"):
            cam.explain(image, targets=targets, top_k=3)
    assert cam.explain(image, targets=[1, 2]).targets.tolist() == [[1, 2]]


@pytest.mark.parametrize("mask", ["gaussian", "window"])
def test_weighted_masks_count_against_the_budget(graph_artifacts, mask):
    """The N² masks of a 64x64 map (64 MiB) are refused under a 32 MiB budget, unbuilt."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(MemoryError, match=rf"{mask} masks of a 64x64 feature map take "
                                              r"64 MiB .* above the memory budget of 32 MiB"):
            ReciproCAM(graph_artifacts["wide"], backend="onnxruntime", mask=mask,
                       memory_budget_mb=32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_fused_pooling_matrix_counts_against_the_budget(graph_artifacts, image, backend):
    """f and the pooled tail fuse through an (N + 1) x N matrix: 64 MiB for a 64x64 map. Under
    a 32 MiB budget the same maps come unfused, without that matrix."""
    import tracemalloc

    wide = graph_artifacts["wide"]
    fused = ReciproCAM(wide, backend=backend, precision="f32", scores="softmax")
    reference = fused.explain(image, top_k=2)
    tracemalloc.start()
    try:
        cam = ReciproCAM(wide, backend=backend, precision="f32", scores="softmax",
                         memory_budget_mb=32)
        exp = cam.explain(image, top_k=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20
    assert exp.saliency.shape == (1, 2, 64, 64)
    np.testing.assert_array_equal(exp.targets, reference.targets)
    np.testing.assert_allclose(exp.saliency, reference.saliency, atol=1e-5)


def test_explain_isolating_retries_a_failed_batch_image_by_image(export_once):
    """One image with NaN scores fails alone; its batch neighbours are explained as when
    explained on their own."""
    folder = export_once("toy_models:bright_nan", fmt="onnx")
    cam = ReciproCAM(folder, backend="onnxruntime")
    dark = [np.full((32, 32, 3), v, np.uint8) for v in (0, 20)]
    images = [dark[0], np.full((32, 32, 3), 255, np.uint8), dark[1]]
    results = list(cam.explain_isolating(images, None, 1, ["a", "b", "c"]))
    assert [group for group, _ in results] == [[0], [1], [2]]
    assert isinstance(results[1][1], FloatingPointError)
    for (_, exp), image in zip([results[0], results[2]], dark, strict=True):
        np.testing.assert_allclose(exp.saliency, cam.explain(image).saliency, atol=1e-6)
    assert [g for g, _ in cam.explain_isolating(dark, None, 1, ["a", "c"])] == [[0, 1]]
    assert list(cam.explain_isolating([], None, 1, [])) == []
