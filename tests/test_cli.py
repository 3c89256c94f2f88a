"""``reciprocam explain``: outputs per the contract, bad inputs reported, good ones kept."""

from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from conftest import BIN
from reciprocam_ir import cli


@pytest.fixture()
def image_folder(tmp_path, photos):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        cv2.imwrite(str(folder / f"{name}.jpg"), cv2.cvtColor(photos[name], cv2.COLOR_RGB2BGR))
    return folder


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["explain", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_explain_folder_with_npz_and_json(capsys, lite0_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, str(lite0_dir), str(image_folder), "--out", str(out),
                          "--save-npz", "--json", "--top-k", "2")
    assert code == 0
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["path"] for r in records] == [str(image_folder / "chelsea.jpg"),
                                            str(image_folder / "coffee.jpg")]
    assert records[0]["top"][0]["label"] == "Egyptian cat"
    assert len(records[0]["explained"]) == 2
    for record in records:
        for f in record["files"]:
            assert (out / f.split("/")[-1]).is_file()
    names = sorted(p.name for p in out.iterdir())
    assert "chelsea_285_Egyptian_cat.png" in names and "coffee_967_espresso.png" in names
    data = np.load(out / "chelsea.npz")
    assert data["saliency"].shape == (2, 7, 7) and data["saliency"].dtype == np.float32
    assert 0 <= data["saliency"].min() and data["saliency"].max() <= 1
    assert data["targets"][0] == 285 and data["scores"].shape == (1000,)
    overlay = cv2.imread(str(out / "chelsea_285_Egyptian_cat.png"))
    assert overlay.shape[:2] == (300, 451)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_explicit_classes_backend_and_cache(capsys, resnet18_dir, image_folder, tmp_path,
                                            backend):
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, _, _ = run(capsys, str(resnet18_dir), str(image_folder / "coffee.jpg"), "--class",
                     "3", "9", "--backend", backend, "--out", str(out), "--save-npz",
                     "--cache-dir", str(cache))
    assert code == 0
    assert np.load(out / "coffee.npz")["targets"].tolist() == [3, 9]
    assert any(cache.iterdir())  # compiled or optimised graphs kept for the next start


def test_bad_files_are_reported_and_the_rest_is_done(capsys, resnet18_dir, image_folder,
                                                     tmp_path):
    (image_folder / "empty.png").write_bytes(b"")
    (image_folder / "notes.txt").write_text("not an image")
    (image_folder / "truncated.jpg").write_bytes(
        (image_folder / "coffee.jpg").read_bytes()[:200])
    out = tmp_path / "out"
    code, _, err = run(capsys, str(resnet18_dir), str(image_folder), str(tmp_path / "missing.jpg"),
                       "--out", str(out), "--backend", "onnxruntime")
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("reciprocam: error:")]
    assert len(errors) == 4
    for name in ("empty.png: empty file", "notes.txt: not a readable image", "truncated.jpg",
                 "missing.jpg: no such file"):
        assert any(name in line for line in errors), (name, errors)
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == 2 and all(cv2.imread(str(out / n)) is not None for n in written)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("args, match", [
    (("--device", "TPU"), "not an OpenVINO device"),
    (("--backend", "onnxruntime", "--device", "CUDA"), "CUDAExecutionProvider"),
    (("--backend", "onnxruntime", "--precision", "bf16"), "f32 only"),
    (("--class", "1000"), "out of range"),
])
def test_bad_options(capsys, resnet18_dir, image_folder, tmp_path, args, match):
    out = tmp_path / "out"
    code, _, err = run(capsys, str(resnet18_dir), str(image_folder), "--out", str(out), *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and match in err
    assert not out.exists() or not any(out.iterdir())


def test_wrong_or_tampered_artifact(capsys, resnet18_dir, image_folder, tmp_path):
    code, _, err = run(capsys, str(image_folder), str(image_folder))
    assert code == 2 and "not an artifact folder" in err
    copy = tmp_path / "copy"
    shutil.copytree(resnet18_dir, copy)
    with open(copy / "g.onnx", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    code, _, err = run(capsys, str(copy), str(image_folder))
    assert code == 2 and "'g.onnx' does not match its sha256" in err


def test_console_script(lite0_dir, image_folder, tmp_path):
    proc = subprocess.run([str(BIN / "reciprocam"), "explain", str(lite0_dir),
                           str(image_folder / "chelsea.jpg"), "--out", str(tmp_path / "o"),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["explained"][0]["label"] == "Egyptian cat"
