"""scripts/int8_nncf.py --quick end to end in a subprocess: a toy model, 2 images, 2 recipes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import openvino as ov
import pytest

from conftest import ROOT, read_manifest, subprocess_env

pytest.importorskip("nncf")


def test_quick_int8_recipes_are_cut_explained_and_compared(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "int8_nncf.py"), "--quick", "--work", str(work),
         "--model", "toy_models:tiny_gap", "--recipes", "ort-qdq", "nncf-ir"],
        capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert results["images"] == ["chelsea", "rocket+flower"]
    assert results["calibration_images"] == 6
    assert set(results["float_top1_margin"]) == set(results["images"])
    assert set(results["maps"]["ort-qdq"]) == {"onnxruntime", "openvino"}
    assert set(results["maps"]["nncf-ir"]) == {"openvino"}  # an IR: OpenVINO only
    for row in results["maps"].values():
        for m in row.values():
            assert 0 <= m["top1_agree"] <= m["images"] == 2
            assert -1 <= m["pearson_min"] <= m["pearson_mean"] <= 1
            assert 0 <= m["mean_abs_diff"] <= 1
    runs = results["whole"]["ort-qdq"]
    assert set(runs) == {"as written (ORT, no optimisation)", "onnxruntime", "openvino",
                         "openvino via convert_model"}
    assert all(math.isfinite(r["max_abs_logit_diff_vs_float"]) for r in runs.values())
    assert "nncf-ir" not in results["whole"]
    # NNCF really quantised the IR, and the cut kept its INT8 layers in f
    f = ov.Core().read_model(str(work / "artifact_nncf-ir" / "f.xml"))
    assert any(op.get_type_name() == "FakeQuantize" for op in f.get_ordered_ops())
    assert read_manifest(work / "artifact_nncf-ir")["source"]["format"] == "ir"
    assert "| nncf-ir | openvino | " in (work / "results.md").read_text()
