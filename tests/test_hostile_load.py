"""scripts/hostile_load.py's smoke mode: hostile requests beside normal ones, every normal
request served, no 5xx, no echoed header; the report prints. No timing or memory asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_serves_every_normal_request(resnet18_dir, tmp_path):
    out = tmp_path / "hostile.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "hostile_load.py"), str(resnet18_dir),
         "--seconds", "3", "--clients", "1", "--hostile", "2", "--bomb-side", "1200",
         "--server-option=--request-pixels=5000000", "--server-option=--process-pixels=6000000",
         "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| hostile request | answers (status: count) |" in proc.stdout
    result = json.loads(out.read_text())
    assert result["server_alive"] and result["mixed"]["problem_count"] == 0
    assert result["alone"]["failed"] == result["mixed"]["failed"] == 0
    assert result["mixed"]["done"] > 0 and result["peak_rss_mb"] > 0
    answers = result["mixed"]["hostile"]
    assert set(answers.get("six bombs in one", {"400": 1})) == {"400"}
    assert set(answers.get("raw binary, no length prefix", {"400": 1})) == {"400"}
