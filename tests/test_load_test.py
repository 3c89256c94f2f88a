"""The serving load test's smoke mode: every cell runs, nothing fails, the table prints.

No timing asserts: timings on a shared CPU are noise; only completeness and sanity.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_reports_every_cell_and_no_failure(resnet18_dir, tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "load_test.py"), str(resnet18_dir),
         "--requests", "6", "--rounds", "2", "--concurrency", "1", "2", "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| model | clients | predict req/s |" in proc.stdout
    counts = re.search(r"server requests: (\d+), failed: 0; API calls: (\d+), failed: 0",
                       proc.stdout)
    assert counts and int(counts[1]) + int(counts[2]) == 2 * 4 * 6, proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["clients"]) for r in rows] == [("resnet18", 1), ("resnet18", 2)]
    for row in rows:
        assert all(row[kind]["failed"] == 0 and row[kind]["p50"] > 0 for kind in
                   ("predict", "explain", "api", "paired explain", "paired api"))
        assert row["predict"]["done"] == row["explain"]["done"] == row["api"]["done"] == 6
        assert row["paired explain"]["done"] + row["paired api"]["done"] == 6
