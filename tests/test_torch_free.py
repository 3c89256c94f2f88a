"""The runtime never imports torch: run it with torch blocked from import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TORCH_BLOCK

RUN = TORCH_BLOCK + """
import numpy as np
from reciprocam_ir import ReciproCAM
from reciprocam_ir.cli import main
image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
for backend in ("openvino", "onnxruntime"):
    exp = ReciproCAM(sys.argv[1], backend=backend).explain(image, top_k=2)
    assert exp.saliency.shape == (1, 2, 7, 7)
import cv2
cv2.imwrite(sys.argv[2] + "/x.png", image)
assert main(["explain", sys.argv[1], sys.argv[2] + "/x.png", "--out", sys.argv[2]]) == 0
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("torch-free ok")
"""


def test_runtime_runs_with_torch_blocked(resnet18_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", RUN, str(resnet18_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch-free ok" in proc.stdout


def test_block_really_blocks():
    proc = subprocess.run([sys.executable, "-c", TORCH_BLOCK + "import torch"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_no_module_of_the_runtime_imports_torch():
    for path in Path(ROOT, "reciprocam_ir").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] == "torch"], path
