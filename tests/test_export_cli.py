"""``reciprocam-export``: bad inputs give one-line errors, non-zero exit, nothing written."""

from __future__ import annotations

import subprocess

import pytest
import torch

from conftest import BIN, export_refused, subprocess_env
from export import cli, verify


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
    assert_refused(capsys, tmp_path, "toy_models:tiny_gap", match="do not reproduce the model")


def test_list_layers(capsys):
    code, out, _ = run_cli(capsys, "resnet18", "--weights", "none", "--list-layers")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "512 x 7 x 7" in rows["layer4"] and "(default)" in rows["layer4"]
    assert "256 x 14 x 14" in rows["layer3"]
    assert "layer4.0.conv1" not in rows


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([str(BIN / "reciprocam-export"), "toy_models:two_inputs", "--out",
                           str(tmp_path / "a")], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "takes 2 inputs" in proc.stderr
