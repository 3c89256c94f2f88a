"""``reciprocam-export``: bad inputs give one-line errors, non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import BIN, export_refused, read_manifest, subprocess_env
from export import cli
from export.artifact import verify
from export.torch.model_source import load_model


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, tmp_path, *args: str, match: str) -> None:
    line = export_refused(capsys, tmp_path, *args)
    assert match in line, line


@pytest.mark.parametrize("args, match", [
    (("resnet5000",), "unknown model 'resnet5000'"),
    (("no_such_pkg.mod:make",), "cannot import 'no_such_pkg.mod'"),
    (("toy_models:missing",), "has no callable 'missing'"),
    (("toy_models:not_a_module",), "not a torch nn.Module"),
    (("toy_models:broken",), "factory exploded"),
    (("toy_models:two_inputs",), "takes 2 inputs"),
    (("toy_models:map_output",), "2-D tensor of class scores"),
    (("resnet18", "--weights", "none", "--layer", "layer4.0.conv1"), "not a valid cut"),
    (("resnet18", "--weights", "none", "--layer", "nope"), "unknown layer 'nope'"),
    (("resnet18", "--weights", "/no/such/file.pt"), "weights file '/no/such/file.pt' not found"),
    (("toy_models:gray",), "only RGB image classifiers (3 input channels)"),
    (("toy_models:batch_normalised",), "scores change with the other images of its batch"),
    (("toy_models:batch_one",), "fail on a batch of 2 images"),
    (("toy_models:constant_scores",), "scores are the same for two different inputs"),
    (("toy_models:tiny_gap", "--input-size", "16x48"), "--input-size 16x48 is too small"),
])
def test_bad_inputs(capsys, tmp_path, args, match):
    assert_refused(capsys, tmp_path, *args, match=match)


def test_corrupt_and_mismatched_weights(capsys, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"definitely not a checkpoint")
    assert_refused(capsys, tmp_path, "resnet18", "--weights", str(corrupt),
                   match="cannot be read")
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    assert_refused(capsys, tmp_path, "resnet18", "--weights", str(other),
                   match="does not match the model")


def test_checkpoint_dict_with_state_dict_is_accepted(capsys, tmp_path):
    from toy_models import tiny_gap

    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": tiny_gap().state_dict(), "epoch": 3}, ckpt)
    code, out, _ = run_cli(capsys, "toy_models:tiny_gap", "--weights", str(ckpt), "--format",
                           "onnx", "--out", str(tmp_path / "ok"), "-q")
    assert code == 0 and (tmp_path / "ok" / "manifest.json").is_file()


def test_default_weights_offline_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    assert_refused(capsys, tmp_path, "resnet18", match="DEFAULT weights")


def test_output_folder_that_is_not_an_artifact(capsys, tmp_path):
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "toy_models:tiny_gap", "--out", str(out), "-q")
    assert code != 0 and "exists and is not an artifact" in err
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_unwritable_output(capsys):
    code, _, err = run_cli(capsys, "toy_models:tiny_gap", "--out", "/proc/reciprocam/x", "-q")
    assert code != 0 and "cannot write to '/proc/reciprocam'" in err


def test_failed_verification_leaves_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "TOLERANCE", 0.0)
    assert_refused(capsys, tmp_path, "toy_models:tiny_gap", match="not reproduce the model")


def test_list_layers(capsys):
    code, out, _ = run_cli(capsys, "resnet18", "--weights", "none", "--list-layers")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "512 x 7 x 7" in rows["layer4"] and "(default)" in rows["layer4"]
    assert "256 x 14 x 14" in rows["layer3"]
    assert "layer4.0.conv1" not in rows


@pytest.mark.parametrize("model, size", [
    ("alexnet", "32"),      # a pooling layer's output would be empty
    ("vit_b_32", "160"),    # the model asserts its own input size
    ("maxvit_t", "160"),    # window partitioning reshapes to a size it cannot take
])
def test_input_size_the_model_cannot_take(capsys, tmp_path, model, size):
    line = export_refused(capsys, tmp_path, model, "--weights", "none", "--input-size", size)
    assert f"cannot run on a 1x3x{size}x{size} input" in line
    assert "try another --input-size" in line and "Proxy" not in line


def test_non_square_input_size(capsys, tmp_path, image):
    """--input-size HxW: the manifest's input and the maps follow the non-square grid."""
    from reciprocam_ir import ReciproCAM
    from torch_reference import masked_scores
    from toy_models import tiny_gap

    out = tmp_path / "wide"
    code, _, _ = run_cli(capsys, "toy_models:tiny_gap", "--input-size", "32x48", "--out",
                         str(out), "-q")
    assert code == 0
    m = read_manifest(out)
    assert m["input"]["shape"] == [1, 3, 32, 48] and m["feature"]["shape"] == [16, 8, 12]
    for backend in ("onnxruntime", "openvino"):
        cam = ReciproCAM(out, backend=backend, precision="f32")
        exp = cam.explain(image, top_k=2)
        assert exp.saliency.shape == (1, 2, 8, 12)
        x = cam.preprocessing(image)
        scores = masked_scores(tiny_gap(), "body", x, lambda h, w: np.eye(h * w).reshape(-1, h, w))
        maps = scores[:, exp.targets[0]].T
        maps = (maps - maps.min(1, keepdims=True)) / np.ptp(maps, 1, keepdims=True)
        np.testing.assert_allclose(exp.saliency[0], maps.reshape(2, 8, 12), atol=1e-4)


@pytest.mark.parametrize("spec, shape", [("toy_models:sized", [1, 3, 64, 64]),
                                         ("toy_models:sized_48x64", [1, 3, 48, 64])])
def test_callable_declares_an_hw_size(capsys, tmp_path, spec, shape):
    code, _, err = run_cli(capsys, spec, "--format", "onnx", "--out", str(tmp_path / "a"), "-q")
    assert code == 0, err
    m = read_manifest(tmp_path / "a")
    assert m["input"]["shape"] == shape
    assert m["feature"]["shape"] == [16, shape[2] // 4, shape[3] // 4]


def test_torchvision_recipe_at_hxw():
    """The weights' resize scales with the shorter crop side: 256/224 at 160x224 is 183."""
    p = load_model("resnet18", "none", (160, 224)).preprocessing
    assert p.size == (160, 224) and p.resize_size == round(160 * 256 / 224)
    assert load_model("resnet18", "none", 224).preprocessing.resize_size == 256


def test_input_size_syntax(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["toy_models:tiny_gap", "--input-size", "48by192"])
    assert exit_info.value.code == 2
    assert "invalid input size '48by192'" in capsys.readouterr().err


INTERRUPT_AT_IMPORT = """
import importlib.abc, sys
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1]:
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from export.cli import main
sys.exit(main(sys.argv[2:]))
"""

SIGINT_AT_IMPORT = """
import importlib.abc, os, signal, sys, time
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1]:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while the library loads
            time.sleep(0.2)
sys.meta_path.insert(0, Interrupt())
from export.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("script, model", [
    (INTERRUPT_AT_IMPORT, "toy_models:tiny_gap"),  # raised by the exporter's start-up imports
    (SIGINT_AT_IMPORT, "model.onnx"),  # a real signal inside an import: held until it ends
])
def test_ctrl_c_during_start_up(tmp_path, script, model):
    out = tmp_path / "a"
    proc = subprocess.run([sys.executable, "-c", script, "numpy", model, "--out", str(out)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["reciprocam-export: interrupted; nothing written"]
    assert not out.exists() and not list(tmp_path.glob('.a*'))


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([str(BIN / "reciprocam-export"), "toy_models:two_inputs", "--out",
                           str(tmp_path / "a")], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "takes 2 inputs" in proc.stderr
