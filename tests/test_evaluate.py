"""scripts/evaluate.py --quick end to end in a subprocess (2 images, no ScoreCAM)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2

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
    rows = results["all"]
    assert "ScoreCAM" not in rows and results["scorecam_subset"] == {}
    assert {"ReciproCAM logits one-hot", "ReciproCAM softmax gaussian", "GradCAM",
            "GradCAM++"} <= set(rows)
    for row in rows.values():
        assert row["n"] == 2
        for key in ("average_drop", "coherency", "complexity", "adcc", "adcc_of_means",
                    "insertion", "deletion", "increase"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
        assert row["ms"] > 0
    assert list(results["sanity"]) == ["_fc"]
    for rho in results["sanity"]["_fc"].values():
        assert -1.0 <= rho <= 1.0
    table = (out / "results.md").read_text()
    assert "| Method | n | Avg Drop" in table and "ReciproCAM logits one-hot" in table
    figure = cv2.imread(str(out / "figure.png"))
    assert figure is not None and figure.shape[1] == 160 * (len(rows) + 1)
    assert (out / "per_image.csv").read_text().count("\n") == 1 + 2 * len(rows)
    assert elapsed < 300, f"--quick took {elapsed:.0f} s"
