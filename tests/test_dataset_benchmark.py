"""The dataset benchmark's smoke mode: every row measured, no timing asserts (shared CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_run_measures_api_one_and_two_actors(flatten_dir, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dataset_benchmark.py"), "--quick",
         "--artifact", str(flatten_dir), "--images", "6", "--work-dir", str(tmp_path),
         "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| api (in-process) |" in proc.stdout and "| ray, 2 actors |" in proc.stdout
    result = json.loads(out.read_text())
    assert result["images"] == 6 and result["fresh_cli_run_s"] > 0
    for run in ("ray1", "ray2"):
        assert result[run]["images_per_s"] > 0
        assert result[run]["peak_rss_mib_per_actor"] > 50  # the actor processes were found
    assert result["api_images_per_s"] > 0 and result["api_peak_rss_mib"] > 50


def test_nodes_mode_measures_a_simulated_cluster(flatten_dir, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dataset_benchmark.py"), "--nodes", "2",
         "--artifact", str(flatten_dir), "--images", "4", "--rows-per-file", "1", "--rounds",
         "1", "--work-dir", str(tmp_path), "--json", str(out)], capture_output=True, text=True,
        cwd=ROOT, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (config,) = json.loads(out.read_text())["configs"]
    assert config["nodes"] == 2 and config["images_per_s"] > 0
    assert 0 < config["driver_bytes_received_per_1000_rows"] < 0.1 * (
        config["parquet_bytes_written_per_1000_rows"])  # summaries, not rows, reach the driver
    assert config["driver_cpu_s_per_1000_rows"] > 0
