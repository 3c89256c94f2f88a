"""The runtime never imports torch: run it with torch blocked from import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TORCH_BLOCK, import_blocker

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


OPENVINO_ONLY = TORCH_BLOCK + import_blocker("onnx") + import_blocker("onnxruntime") + """
import numpy as np
from reciprocam_ir import ReciproCAM
from reciprocam_ir.backends import BackendError
image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
cam = ReciproCAM(sys.argv[1], backend="openvino", precision="f32")
assert cam.path_for(None, 1).name == "explain graph", cam.path_for(None, 1).name
fast = cam.explain(image, top_k=1)
general = cam.explain(image, targets=fast.targets[0].tolist())
assert np.abs(fast.saliency - general.saliency).max() < 1e-4
try:
    ReciproCAM(sys.argv[1], backend="onnxruntime")
except BackendError as exc:
    print("refused:", exc)
loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxruntime")]
assert not loaded, loaded
print("openvino-only ok")
"""


def test_runtime_runs_on_openvino_alone(resnet18_dir):
    """`pip install .[openvino]`: no torch, onnx or onnxruntime; the explain graph and the
    general path both work, and asking for ONNX Runtime is one clear error."""
    proc = subprocess.run([sys.executable, "-c", OPENVINO_ONLY, str(resnet18_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "openvino-only ok" in proc.stdout
    refusal = next(line for line in proc.stdout.splitlines() if line.startswith("refused:"))
    assert "pip install .[onnxruntime]" in refusal, refusal


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
