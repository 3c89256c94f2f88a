"""The photo throughput script's smoke run: every row measured on tiny photos, no timing
asserts (shared CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, subprocess_env


def test_smoke_run_measures_every_row(flatten_dir, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "photo_throughput.py"), "--artifact",
         str(flatten_dir), "--images", "2", "--size", "96x64", "--rounds", "1", "--repeat", "1",
         "--parts", "breakdown", "cli", "api", "--work", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| `reciprocam explain --decode reduced` |" in proc.stdout
    result = json.loads(out.read_text())
    assert result["images"] == 2
    for mode in ("exact", "reduced"):
        assert all(result["breakdown"][f"{mode} {stage}"] > 0 for stage in (
            "read", "preprocess", "explain_tensor", "overlay", "png write"))
        assert result["cli"][mode]["images_per_s"] > 0
        assert result["api"][f"api {mode}"]["images_per_s"] > 0
    assert result["api"]["peer"]["images_per_s"] > 0
    assert len(list((tmp_path / "cli-out").glob("*.png"))) == 2  # the CLI wrote its overlays
