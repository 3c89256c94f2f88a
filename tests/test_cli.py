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


@pytest.mark.parametrize("batch_size", ["8", "1"])  # 1: bad files in prefetched batches
def test_bad_files_are_reported_and_the_rest_is_done(capsys, resnet18_dir, image_folder,
                                                     tmp_path, batch_size):
    (image_folder / "empty.png").write_bytes(b"")
    (image_folder / "notes.txt").write_text("not an image")
    (image_folder / "truncated.jpg").write_bytes(
        (image_folder / "coffee.jpg").read_bytes()[:200])
    out = tmp_path / "out"
    code, _, err = run(capsys, str(resnet18_dir), str(image_folder), str(tmp_path / "missing.jpg"),
                       "--out", str(out), "--backend", "onnxruntime", "--batch-size",
                       batch_size)
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
    (("--class", "1000"), "--class: class 1000 out of range (model has 1000 classes)"),
    (("--top-k", "0"), "--top-k: top_k must be an integer in 1..1000, got 0"),
    (("--top-k", "-3"), "top_k must be an integer in 1..1000, got -3"),
    (("--top-k", "1001"), "top_k must be an integer in 1..1000, got 1001"),
    (("--memory-budget-mb", "inf"), "memory_budget_mb must be a number of MiB in (0, "),
    (("--memory-budget-mb", "nan"), "memory_budget_mb must be a number of MiB"),
    (("--memory-budget-mb", "-1"), "memory_budget_mb must be a number of MiB"),
    (("--mask", "gaussian", "--mask-sigma", "inf"), "mask_sigma must be a number of feature"),
    (("--mask", "drop", "--mask-sigma", "nan"), "mask_sigma must be a number of feature"),
    (("--batch-size", "0"), "batch_size must be an integer of at least 1, got 0"),
    (("--mask-sigma", "-5"), "--mask-sigma sets the window of --mask gaussian, drop or window"),
    (("--class", "5", "--top-k", "3"), "cannot be combined with --class"),
    (("--all-classes", "--top-k", "2"), "cannot be combined with --all-classes"),
    (("--class", "3", "--all-classes"), "--class and --all-classes both choose"),
])
def test_bad_options(capsys, resnet18_dir, image_folder, tmp_path, args, match):
    """Refused with one line and exit code 2 before any image is read (the folder holds a
    file that is not an image: reading it would add a line)."""
    (image_folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code, _, err = run(capsys, str(resnet18_dir), str(image_folder), "--out", str(out), *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and match in err, err
    assert not out.exists() or not any(out.iterdir())


def test_resume_is_keyed_on_what_made_the_outputs(capsys, image_folder, tmp_path):
    """A re-export into the same artifact folder, other options or another image under the
    same name are explained again; unchanged images are skipped and --json still lists them."""
    from export.graphfile.pipeline import export_graph_file
    from graph_models import tiny_classifier

    model, artifact, out = tiny_classifier(tmp_path / "tiny.onnx"), tmp_path / "art", tmp_path / "o"
    export_graph_file(model, layer="pool", fmt="onnx", out=artifact)
    args = (str(artifact), str(image_folder), "--out", str(out), "--save-npz", "--json",
            "--backend", "onnxruntime")
    code, stdout, _ = run(capsys, *args)
    first = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and len(first) == 2
    assert np.load(out / "chelsea.npz")["saliency"].shape == (1, 8, 8)

    code, stdout, err = run(capsys, *args)
    assert code == 0 and "2 images already explained" in err
    assert [json.loads(line) for line in stdout.splitlines()] == first

    export_graph_file(model, layer="r2", fmt="onnx", out=artifact)
    code, stdout, err = run(capsys, *args)
    assert code == 0 and "already explained" not in err and len(stdout.splitlines()) == 2
    assert np.load(out / "chelsea.npz")["saliency"].shape == (1, 16, 16)

    code, _, err = run(capsys, *args, "--scores", "softmax")
    assert code == 0 and "already explained" not in err

    shutil.copy(image_folder / "coffee.jpg", image_folder / "chelsea.jpg")
    code, stdout, err = run(capsys, *args, "--scores", "softmax")
    assert code == 0 and "1 images already explained" in err
    records = {r["path"]: r for r in map(json.loads, stdout.splitlines())}
    assert len(records) == 2
    chelsea, coffee = (str(image_folder / f"{n}.jpg") for n in ("chelsea", "coffee"))
    assert records[chelsea]["top"] == records[coffee]["top"]


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


def test_decode_option_shrinks_jpegs_on_load_and_keys_the_outputs(capsys, lite0_dir, photos,
                                                                  tmp_path):
    """--decode reduced (issue 26): a 3000x2250 JPEG decoded at 1/2, its overlay still at the
    photo's size, the same class as --decode exact (the default); switching modes explains
    the image again rather than skipping it."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    big = cv2.resize(photos["astronaut"], (3000, 2250), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(folder / "big.jpg"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    args = (str(lite0_dir), str(folder), "--out", str(out), "--json", "--save-npz",
            "--backend", "onnxruntime")
    code, stdout, _ = run(capsys, *args)
    exact = json.loads(stdout)
    maps = np.load(out / "big.npz")["saliency"]
    code2, stdout, err = run(capsys, *args, "--decode", "reduced")
    reduced = json.loads(stdout)
    assert code == code2 == 0 and "already explained" not in err
    assert reduced["explained"] == exact["explained"]
    assert 0 < np.abs(np.load(out / "big.npz")["saliency"] - maps).max() <= 0.05
    (overlay,) = out.glob("big_*.png")
    assert cv2.imread(str(overlay)).shape[:2] == (2250, 3000)
    with pytest.raises(SystemExit) as exc:
        run(capsys, *args, "--decode", "fast")
    assert exc.value.code == 2 and "--decode" in capsys.readouterr().err
