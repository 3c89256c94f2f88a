"""Untrusted images and manifests, concurrency, interruption, NaN, unsafe weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BIN, interrupt_when
from reciprocam_ir import ReciproCAM
from reciprocam_ir.artifact import ArtifactError, validate_manifest
from reciprocam_ir.preprocess import ImageError, read_image

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _encoded(ext: str) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    return cv2.imencode(ext, rgb)[1].tobytes()


SEEDS = [_encoded(".png"), _encoded(".jpg"), _encoded(".bmp"), _encoded(".tiff")]


@FUZZ
@given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 4000),
       flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
       junk=st.binary(max_size=64))
def test_image_reader_never_crashes(tmp_path, seed, cut, flips, junk):
    data = bytearray(seed[:cut] + junk)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    path = tmp_path / "fuzz.img"
    path.write_bytes(bytes(data))
    try:
        rgb = read_image(path)
    except ImageError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 300) | st.floats()
                    | st.text(max_size=8), lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=12)


@FUZZ
@given(data=st.data())
def test_manifest_validation_never_crashes(resnet18_dir, data):
    manifest = json.loads((resnet18_dir / "manifest.json").read_text())
    section = data.draw(st.sampled_from(sorted(manifest)))
    if isinstance(manifest[section], dict) and manifest[section] and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(manifest[section])))
        manifest[section][key] = data.draw(JSON)
    else:
        manifest[section] = data.draw(JSON)
    try:
        validate_manifest(manifest)
    except ArtifactError:
        pass


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_threads_give_the_same_maps_as_sequential_use(resnet18_dir, photos, backend):
    images = [photos[k] for k in ("chelsea", "coffee", "rocket", "astronaut")]
    cam = ReciproCAM(resnet18_dir, backend=backend, precision="f32")
    expected = [cam.explain(image, top_k=2).saliency for image in images]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for j in range(20):
                results[t, j] = cam.explain(images[(t + j) % 4], top_k=2).saliency
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 80
    for (t, j), saliency in results.items():
        np.testing.assert_array_equal(saliency, expected[(t + j) % 4])


def test_nan_scores_are_reported_not_mapped(export_once, tmp_path):
    folder = export_once("toy_models:bright_nan", fmt="onnx")
    cam = ReciproCAM(folder, backend="onnxruntime")
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        cam.explain(np.full((32, 32, 3), 255, np.uint8))
    assert np.isfinite(cam.explain(np.zeros((32, 32, 3), np.uint8)).saliency).all()


def test_unsafe_pickled_weights_are_refused(capsys, tmp_path):
    from export import cli

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": Payload()}, path)
    code = cli.main(["resnet18", "--weights", str(path), "--out", str(tmp_path / "o"), "-q"])
    captured = capsys.readouterr()
    assert code != 0 and "cannot be read" in captured.err
    assert "this must never run" not in captured.out


def test_interrupted_folder_run_keeps_complete_outputs_and_resumes(resnet18_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(80):
        cv2.imwrite(str(images / f"img{i:03d}.png"),
                    rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    out = tmp_path / "out"
    cmd = [str(BIN / "reciprocam"), "explain", str(resnet18_dir), str(images), "--out",
           str(out), "--batch-size", "1", "--backend", "onnxruntime"]
    code, err = interrupt_when(cmd, lambda _: len(list((out / ".reciprocam").glob("*.json")))
                               >= 3, stdout=subprocess.PIPE)
    if code == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    pngs = sorted(out.glob("*.png"))
    assert 3 <= len(pngs) < 80
    assert all(cv2.imread(str(p)) is not None for p in pngs)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    recorded = {name for r in (out / ".reciprocam").glob("*.json")
                for name in json.loads(r.read_text())["files"]}
    first = {p.name: p.stat().st_mtime_ns for p in pngs if p.name in recorded}
    assert len(first) >= 3  # an overlay written as the interrupt came, unrecorded, is redone

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "already explained" in rerun.stderr
    assert len(list(out.glob("*.png"))) == 80
    assert all((out / n).stat().st_mtime_ns == t for n, t in first.items())

    again = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already explained" not in again.stderr


def test_colliding_output_names_are_refused(capsys, resnet18_dir, tmp_path, photos):
    from reciprocam_ir import cli

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "same.png"), photos["coffee"])
    code = cli.main(["explain", str(resnet18_dir), str(tmp_path / "a"), str(tmp_path / "b"),
                     "--out", str(tmp_path / "out"), "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 1 and "would overwrite those of" in err
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_external_data_outside_the_artifact_is_refused(resnet18_dir, tmp_path):
    import onnx

    folder = tmp_path / "artifact"
    shutil.copytree(resnet18_dir, folder)
    model = onnx.load(str(folder / "g.onnx"))
    onnx.save_model(model, str(folder / "g.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="g.data", size_threshold=0)
    model = onnx.load(str(folder / "g.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../stolen.bin"
    (folder / "g.onnx").write_bytes(model.SerializeToString())
    manifest = json.loads((folder / "manifest.json").read_text())
    from reciprocam_ir.artifact import sha256_file

    manifest["files"]["g.onnx"] = sha256_file(folder / "g.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="references external data '../stolen.bin'"):
        ReciproCAM(folder, backend="onnxruntime")




def test_ctrl_c_during_start_up_is_one_line(resnet18_dir, tmp_path, photos):
    """SIGINT while OpenVINO loads and compiles (its CPU plugin just mapped): exit code 130,
    one line, no traceback, nothing written."""
    from pathlib import Path

    image, out = tmp_path / "cat.png", tmp_path / "out"
    cv2.imwrite(str(image), photos["chelsea"])
    def plugin_mapped(proc: subprocess.Popen) -> bool:
        try:
            return "libopenvino_intel_cpu_plugin" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:  # the process is gone
            return True

    code, err = interrupt_when([str(BIN / "reciprocam"), "explain", str(resnet18_dir),
                                str(image), "--out", str(out), "--backend", "openvino"],
                               plugin_mapped, poll_s=0.005, stdout=subprocess.PIPE)
    if code == 0:
        pytest.skip("start-up finished before the interrupt arrived")
    assert code == 130, err
    assert err.strip().splitlines() == [
        "reciprocam: interrupted during start-up; no image was explained"], err
    assert not out.exists()
