"""scripts/evaluate.py --quick end to end in a subprocess (2 images, no ScoreCAM)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import cv2
import numpy as np

from conftest import ROOT, subprocess_env


def test_quick_evaluation_writes_tables_sanity_and_figure(lite0_dir, tmp_path):
    out = tmp_path / "out"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--quick", "--out", str(out),
         "--work", str(tmp_path / "work"), "--artifact", str(lite0_dir)],
        capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=600)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    scopes = results["scopes"]
    assert list(scopes) == ["selection half", "report half", "whole set"]
    assert [t["images"] for t in scopes["selection half"]] == [["chelsea"]]
    assert [t["images"] for t in scopes["report half"]] == [["rocket+flower"]]
    rows = scopes["whole set"][0]["rows"]
    assert "ScoreCAM" not in rows
    window = "ReciproCAM softmax window σ0.85 s4"
    assert {"ReciproCAM logits one-hot", window, "keep one-hot, softmax at strength 4",
            "GradCAM"} == set(rows)
    assert results["selected"] in rows and results["selected"] != "GradCAM"
    for row in rows.values():
        assert row["n"] == 2
        for key in ("average_drop", "coherency", "complexity", "adcc", "adcc_of_means",
                    "insertion", "deletion", "increase"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
    assert rows[window]["ms"] > 0 and rows["GradCAM"]["ms"] > 0
    assert math.isnan(rows["keep one-hot, softmax at strength 4"]["ms"])  # numpy, not timed
    assert list(results["sanity"]) == ["_fc"]
    assert set(results["sanity"]["_fc"]) == set(rows)  # the window's sanity numbers included
    for rho in results["sanity"]["_fc"].values():
        assert -1.0 <= rho <= 1.0
    assert f"{window} on the report half:" in proc.stdout
    assert "sanity check: max |ρ| over stages" in proc.stdout
    table = (out / "results.md").read_text()
    assert "| Method | n | Avg Drop" in table and "### report half (1 images)" in table
    assert f"{results['selected']} on the report half:" in table and "vs GradCAM" in table
    figure = cv2.imread(str(out / "figure.png"))
    shown = len({"ReciproCAM logits one-hot", window, results["selected"], "GradCAM"})
    assert figure is not None and figure.shape[1] == 160 * (shown + 1)
    csv_rows = (out / "per_image.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 2 * len(rows) and ",rocket+flower,report," in "\n".join(csv_rows)
    assert elapsed < 300, f"--quick took {elapsed:.0f} s"


def test_split_is_fixed_and_by_source_photo():
    sys.path.insert(0, str(ROOT / "scripts"))
    from evaluate import build_samples, in_selection_half

    names = [s.name for s in build_samples()]
    selection = [n for n in names if in_selection_half(n)]
    assert len(names) == 30 and len(selection) == 15
    for photo in ("chelsea", "coffee", "astronaut", "rocket", "china", "flower"):
        sides = {in_selection_half(n) for n in names if n.split("-")[0] == photo}
        assert len(sides) == 1, photo  # a photo's flips and crops stay on one side


def test_candidates_against_the_runtime_and_by_hand(lite0_dir, photos):
    """Each numpy candidate pinned on a fixed input against an independent computation."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import evaluate as E

    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.saliency import softmax

    cam = ReciproCAM(lite0_dir, backend="openvino", precision="f32")
    x = cam.preprocessing(photos["chelsea"])
    feature = cam.features(x)[0].astype(np.float64)
    weight, bias = (a.astype(np.float64) for a in cam.affine_head)
    c = 285
    paper = cam.explain(photos["chelsea"], targets=c).saliency[0, 0]
    # keeping one position, scored by logits, is the paper's ReciproCAM
    np.testing.assert_allclose(E.keep_window(None, None)(feature, weight, bias, c), paper,
                               atol=1e-5)
    soft = ReciproCAM(lite0_dir, backend="openvino", precision="f32", scores="softmax")
    np.testing.assert_allclose(E.keep_window(None, 1.0)(feature, weight, bias, c),
                               soft.explain(photos["chelsea"], targets=c).saliency[0, 0],
                               atol=1e-5)
    drop = ReciproCAM(lite0_dir, backend="openvino", precision="f32", scores="softmax",
                      mask="drop").explain(photos["chelsea"], targets=c).saliency[0, 0]
    squared = E.CANDIDATES["ReciproCAM softmax drop σ1.5, squared"][0]
    np.testing.assert_allclose(squared(feature, weight, bias, c), drop**2, atol=1e-5)
    # strength s at one position, by hand: softmax over classes of s·W·F_n/N + b
    n = 49
    by_hand = np.array([softmax(4.0 * weight @ feature[:, i, j] / n + bias)[c]
                        for i in range(7) for j in range(7)]).reshape(7, 7)
    by_hand = (by_hand - by_hand.min()) / (by_hand.max() - by_hand.min())
    np.testing.assert_allclose(E.keep_window(None, 4.0)(feature, weight, bias, c), by_hand,
                               atol=1e-9)
    # the renormalised window (over the whole grid) of the CAM, by loops
    cam_map = np.einsum("c,chw->hw", weight[c], feature)
    sigma = 1.5
    smooth = np.zeros((7, 7))
    for i in range(7):
        for j in range(7):
            num = den = 0.0
            for a in range(7):
                for b in range(7):
                    k = np.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * sigma**2))
                    num, den = num + k * cam_map[a, b], den + k
            smooth[i, j] = num / den
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    np.testing.assert_allclose(E.keep_window(1.5, None)(feature, weight, bias, c), smooth,
                               atol=1e-6)
    # the runtime's mask="window" (softmax, σ 0.85, strength 4) is the numpy candidate, on
    # both backends and on its two pooled paths (affine rows for logits, fused for softmax)
    for backend in ("openvino", "onnxruntime"):
        for scores, strength in (("softmax", 4.0), ("logits", None)):
            window = ReciproCAM(lite0_dir, backend=backend, precision="f32", mask="window",
                                scores=scores)
            np.testing.assert_allclose(
                E.keep_window(0.85, strength)(feature, weight, bias, c),
                window.explain(photos["chelsea"], targets=c).saliency[0, 0], atol=1e-5)
    minmax = E._minmax
    # CAM of positive weights, channel by channel
    pos = sum(max(weight[c, k], 0.0) * feature[k] for k in range(feature.shape[0]))
    np.testing.assert_allclose(E.CANDIDATES["CAM of positive weights"][0](
        feature, weight, bias, c), minmax(pos), atol=1e-9)
    # Score-CAM at the cut: each channel's pattern masks F, the head scores the masked GAP
    scores = []
    for k in range(feature.shape[0]):
        f = feature[k]
        pattern = (f - f.min()) / (f.max() - f.min()) if f.max() > f.min() else 0 * f
        scores.append(weight[c] @ (feature * pattern).mean(axis=(1, 2)) + bias[c])
    channel = softmax(np.array(scores))
    np.testing.assert_allclose(E.CANDIDATES["Score-CAM at the cut (feature space)"][0](
        feature, weight, bias, c), minmax(np.maximum(np.tensordot(channel, feature, 1), 0)),
        atol=1e-9)
    # keep minus drop: the removed side from the runtime's own drop scores
    dropper = ReciproCAM(lite0_dir, backend="openvino", precision="f32", mask="drop")
    _, removed = dropper.masked_scores(feature.astype(np.float32))
    p_removed = softmax(removed.astype(np.float64))[:, c].reshape(7, 7)
    p_kept = np.zeros((7, 7))
    for i in range(7):
        for j in range(7):
            num, den = np.zeros(len(bias)), 0.0
            for a in range(7):
                for b in range(7):
                    k = np.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * sigma**2))
                    num, den = num + k * (weight @ feature[:, a, b]), den + k
            p_kept[i, j] = softmax(4.0 * num / den / n + bias)[c]
    contrast = E.CANDIDATES["keep minus drop σ1.5 (keep at strength 4), softmax"][0]
    np.testing.assert_allclose(contrast(feature, weight, bias, c), minmax(p_kept - p_removed),
                               atol=1e-5)
    # sub-positions: every class's logit map enlarged by OpenCV's bilinear resize
    z = np.einsum("kc,chw->khw", weight, feature)
    big = np.stack([cv2.resize(zk, (28, 28), interpolation=cv2.INTER_LINEAR) for zk in z])
    fine = softmax(16.0 * big / n + bias[:, None, None], axis=0)[c]
    np.testing.assert_allclose(E.CANDIDATES["keep sub-position ×4, softmax at strength 16"][0](
        feature, weight, bias, c), minmax(fine), atol=1e-6)
