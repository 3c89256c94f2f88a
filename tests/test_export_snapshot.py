"""scripts/export_snapshot.py compare: byte-identical folders pass, an ONNX graph renamed is
the same up to names, a changed weight or text fails (its export runs are the script's job)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "export_snapshot.py"


def scaled(path: Path, prefix: str, weight: float) -> None:
    """x * w + x, tensor and initializer names starting with ``prefix``."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", f"{prefix}w"], [f"{prefix}m"]),
         helper.make_node("Add", [f"{prefix}m", "x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([weight, 2.0], np.float32), f"{prefix}w")])
    onnx.save(helper.make_model(graph), str(path))


def compare(before: Path, after: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "compare", str(before), str(after)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout


def test_compare_tells_renamed_graphs_from_changed_ones(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    for folder in (before, after):
        (folder / "export").mkdir(parents=True)
        (folder / "export" / "manifest.json").write_text("{}")
    scaled(before / "export" / "g.onnx", "rc/", 1.0)
    scaled(after / "export" / "g.onnx", "rc/", 1.0)
    assert compare(before, after) == (0, "2 files: 2 byte-identical, 0 ONNX graphs the same up "
                                         "to names, 0 different\n")
    scaled(after / "export" / "g.onnx", "tail/", 1.0)
    code, out = compare(before, after)
    assert code == 0 and "same up to names: export/g.onnx" in out
    scaled(after / "export" / "g.onnx", "rc/", 1.5)
    (after / "export" / "manifest.json").write_text("{ }")
    code, out = compare(before, after)
    assert code == 1
    assert "different: export/g.onnx" in out and "different: export/manifest.json" in out
