"""``reciprocam explain-dataset`` and ``reciprocam_ir.dataset``: a real local Ray run, small."""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from conftest import import_blocker, interrupt_when, subprocess_env
from reciprocam_ir import ReciproCAM, cli
from reciprocam_ir.dataset import SCHEMA, DatasetError, explain_dataset, list_sources

BAD = {"empty.png": "empty file", "notes.txt": "not a readable image",
       "truncated.jpg": "not a readable image"}
RAY_BLOCK = import_blocker("ray")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module, two CPUs: every in-process run shares it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def labelled_dir(export_once):
    from toy_models import tiny_gap

    model = tiny_gap()
    model.reciprocam_labels = [f"thing {i}" for i in range(5)]
    return export_once(model, fmt="both")


def write_images(folder: Path, count: int, seed: int = 0, size: int = 40,
                 high: int = 256) -> list[Path]:
    """``count`` random images, PNG and JPEG, of a few sizes, pixel values below ``high``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        cv2.imwrite(str(path), rng.integers(0, high, (size, size + 8 * (i % 3), 3), np.uint8))
        paths.append(path)
    return paths


@pytest.fixture()
def dataset_folder(tmp_path) -> Path:
    """12 images in a folder and a subfolder, three unreadable files, one hidden file."""
    root = tmp_path / "data"
    good = write_images(root, 8) + write_images(root / "sub", 4, seed=1)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "truncated.jpg").write_bytes(good[0].read_bytes()[:100])
    (root / ".hidden.png").write_bytes(good[1].read_bytes())
    return root


def run(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["explain-dataset", *args])
    return code, capsys.readouterr().err


def read_rows(out: Path) -> list[dict]:
    files = sorted(glob.glob(str(out / "*.parquet")))
    for f in files:
        assert pq.read_schema(f).remove_metadata() == SCHEMA
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def assert_rows_equal_api(rows: list[dict], artifact: Path, targets=None, top_k=1,
                          backend=None) -> None:
    explained = [r for r in rows if r["error"] is None]
    cam = ReciproCAM(artifact, backend=backend, precision="f32")
    exp = cam.explain([r["path"] for r in explained], targets=targets, top_k=top_k)
    for i, row in enumerate(explained):
        k, h, w = row["saliency_shape"]
        assert (k, h, w) == exp.saliency[i].shape
        np.testing.assert_allclose(np.asarray(row["saliency"], np.float32).reshape(k, h, w),
                                   exp.saliency[i], atol=1e-5, rtol=0)
        assert row["targets"] == exp.targets[i].tolist()
        np.testing.assert_allclose(row["target_scores"], exp.scores[i, exp.targets[i]],
                                   atol=1e-5, rtol=1e-5)
        assert row["labels"] == ([exp.label(int(c)) for c in exp.targets[i]]
                                 if exp.labels else None)


def test_rows_equal_the_api_bad_files_are_error_rows_and_a_rerun_adds_nothing(
        capsys, ray_session, labelled_dir, dataset_folder, tmp_path):
    out, overlays = tmp_path / "out", tmp_path / "overlays"
    args = (str(labelled_dir), str(dataset_folder), "--out", str(out), "--precision", "f32",
            "--top-k", "2", "--workers", "2", "--batch-size", "3", "--rows-per-file", "4",
            "--overlays", str(overlays))
    code, err = run(capsys, *args)
    assert code == 13, err  # 10 + the number of failed files
    assert "15 images" in err and "12 explained, 3 failed" in err
    rows = read_rows(out)
    assert len(rows) == 15 and len({r["path"] for r in rows}) == 15
    assert all(os.path.isabs(r["path"]) for r in rows)
    assert not any(".hidden" in r["path"] for r in rows)
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"] is not None}
    assert errors.keys() == BAD.keys()
    for name, reason in BAD.items():
        assert errors[name].startswith(reason)
        assert f"{name}: {reason}" in err
    for row in rows:
        if row["error"] is not None:
            assert row["targets"] is row["saliency"] is row["labels"] is None
    assert_rows_equal_api(rows, labelled_dir, top_k=2)
    assert len(list(overlays.glob("*.png"))) == 12 * 2 and not list(overlays.glob(".*"))
    assert len(list(out.glob("*.parquet"))) >= 2  # rows land in several files as they come
    assert pq.read_table(out).num_rows == ray.data.read_parquet(str(out)).count() == 15

    before = sorted(p.name for p in out.iterdir())
    code, err = run(capsys, *args)
    assert code == 0, err
    assert "15 of 15 files already have a row" in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_limit_class_and_resume_to_the_full_set(capsys, ray_session, labelled_dir, tmp_path):
    images = write_images(tmp_path / "images", 10)
    out = tmp_path / "out"
    args = (str(labelled_dir), str(tmp_path / "images" / "*.png"),
            str(tmp_path / "images" / "*.jpg"), "--out", str(out), "--precision", "f32",
            "--class", "1", "3", "--rows-per-file", "2")
    code, err = run(capsys, *args, "--limit", "4")
    assert code == 0, err
    first = read_rows(out)
    assert len(first) == 4 and all(r["targets"] == [1, 3] for r in first)
    assert all(r["labels"] == ["thing 1", "thing 3"] for r in first)
    # a killed writer's temporary file is no row and is cleared by the next run
    (out / ".part-killed.parquet.tmp").write_bytes(b"PAR1 half a file")
    code, err = run(capsys, *args)
    assert code == 0, err
    assert "4 of 10 files already have a row" in err
    rows = read_rows(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)
    assert not list(out.glob(".part-*"))
    assert_rows_equal_api(rows, labelled_dir, targets=[1, 3])

    code, err = run(capsys, str(labelled_dir), str(tmp_path / "images"), "--out", str(out),
                    "--top-k", "1")
    assert code == 2 and "made with classes [1, 3], this run asks for --top-k 1" in err, err
    assert len(read_rows(out)) == 10


def test_decode_reduced_reaches_the_reader_and_is_part_of_the_settings(
        capsys, ray_session, labelled_dir, photos, tmp_path):
    """--decode reduced: the rows are the API's decode='reduced' explanation of a large JPEG
    (shrunk on load, so not the exact one); a re-run with --decode exact is refused."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    big = cv2.resize(photos["astronaut"], (1600, 1200), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(folder / "big.jpg"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    args = (str(labelled_dir), str(folder), "--out", str(out), "--precision", "f32",
            "--top-k", "2")
    code, err = run(capsys, *args, "--decode", "reduced")
    assert code == 0, err
    (row,) = read_rows(out)
    saliency = np.asarray(row["saliency"], np.float32).reshape(row["saliency_shape"])
    explain = {decode: ReciproCAM(labelled_dir, precision="f32", decode=decode).explain(
        folder / "big.jpg", top_k=2).saliency[0] for decode in ("reduced", "exact")}
    np.testing.assert_allclose(saliency, explain["reduced"], atol=1e-5, rtol=0)
    assert np.abs(saliency - explain["exact"]).max() > 1e-3

    code, err = run(capsys, *args)
    assert code == 2 and "made with --decode reduced, this run asks for --decode exact" in err


@pytest.mark.parametrize("args, message", [
    (("--class", "7"), "class 7 out of range"),
    (("--top-k", "9"), "top_k must be an integer in 1..5"),
    (("--workers", "0"), "workers must be an integer of at least 1"),
    (("--precision", "f32", "--backend", "onnxruntime", "--device", "NPU"), "NPU"),
])
def test_bad_options_are_refused_before_ray_starts(capsys, labelled_dir, tmp_path, args,
                                                   message):
    write_images(tmp_path / "images", 1)
    code, err = run(capsys, str(labelled_dir), str(tmp_path / "images"), "--out",
                    str(tmp_path / "out"), *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("reciprocam: error:")
    assert not (tmp_path / "out").exists()


def test_bad_sources_and_foreign_output_are_refused(capsys, labelled_dir, tmp_path):
    write_images(tmp_path / "images", 1)
    code, err = run(capsys, str(labelled_dir), str(tmp_path / "nope.png"), "--out",
                    str(tmp_path / "out"))
    assert code == 2 and "nope.png: no such file or folder" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pa.table({"path": ["a"], "other": [1]}), foreign / "x.parquet")
    code, err = run(capsys, str(labelled_dir), str(tmp_path / "images"), "--out", str(foreign))
    assert code == 2 and "x.parquet: not written by explain-dataset" in err


def test_list_sources_walks_folders_expands_globs_and_names_each_file_once(tmp_path):
    write_images(tmp_path / "a" / "deep", 2)
    write_images(tmp_path / "b", 2)
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "x.png").write_bytes(b"")
    files = list_sources([tmp_path / "a", str(tmp_path / "*" / "*.png"), tmp_path / "b"])
    names = [os.path.relpath(f, tmp_path) for f in files]
    assert names == ["a/deep/img00.jpg", "a/deep/img01.png", "b/img01.png", "b/img00.jpg"]
    with pytest.raises(DatasetError, match="names no files"):
        list_sources([str(tmp_path / "*.gif")])


def test_list_sources_follows_folder_links_once_and_leaves_out_excluded_folders(tmp_path):
    data, big = tmp_path / "data", tmp_path / "big"
    write_images(data / "own", 1)
    write_images(big, 3)
    (data / "linked_big").symlink_to(big)
    (data / "again").symlink_to(big)  # a second route to the same folder
    (data / "own" / "loop").symlink_to(data)  # a loop back to the top
    (data / "alias.jpg").symlink_to(data / "own" / "img00.jpg")
    write_images(data / "out", 2)
    files = list_sources([data], exclude=[data / "out"])
    names = sorted(os.path.relpath(os.path.realpath(f), tmp_path) for f in files)
    assert names == ["big/img00.jpg", "big/img01.png", "big/img02.jpg", "data/own/img00.jpg"]
    with pytest.raises(DatasetError, match="names no files"):
        list_sources([data / "out"], exclude=[data / "out"])


def test_outputs_inside_a_source_folder_are_not_explained_on_a_rerun(
        capsys, ray_session, labelled_dir, tmp_path):
    data = tmp_path / "data"
    write_images(data, 3)
    args = (str(labelled_dir), str(data), "--out", str(data / "out"), "--overlays",
            str(data / "overlays"), "--precision", "f32")
    for expected in ("3 images", "3 of 3 files already have a row"):
        code, err = run(capsys, *args)
        assert code == 0 and expected in err, err
    rows = read_rows(data / "out")
    assert sorted(Path(r["path"]).name for r in rows) == ["img00.jpg", "img01.png", "img02.jpg"]
    assert len(list((data / "overlays").iterdir())) == 3


def test_a_non_utf8_file_name_is_an_error_row_kept_losslessly_and_a_rerun_works(
        capsys, ray_session, labelled_dir, tmp_path):
    data = tmp_path / "data"
    write_images(data, 3)
    bad = os.fsencode(data) + b"/\xff\xfebad.jpg"
    with open(bad, "wb") as fh:
        fh.write(b"not a jpeg")
    good_copy = os.fsencode(data) + b"/caf\xe9.png"  # Latin-1 name, a readable image
    with open(good_copy, "wb") as fh:
        fh.write((data / "img01.png").read_bytes())
    args = (str(labelled_dir), str(data), "--out", str(tmp_path / "out"), "--precision", "f32")
    code, err = run(capsys, *args)
    assert code == 11, err
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 5
    by_raw = {r["path_bytes"] or r["path"].encode(): r for r in rows}
    assert by_raw.keys() == {os.fsencode(data / n) for n in ("img00.jpg", "img01.png",
                                                            "img02.jpg")} | {bad, good_copy}
    assert by_raw[bad]["error"].startswith("not a readable image")
    assert by_raw[bad]["path"].endswith("/\\xff\\xfebad.jpg")
    assert by_raw[good_copy]["error"] is None
    assert by_raw[good_copy]["saliency"] == by_raw[os.fsencode(data / "img01.png")]["saliency"]
    assert {r["path_bytes"] for r in rows} == {None, bad, good_copy}  # only where not UTF-8
    code, err = run(capsys, *args)
    assert code == 0 and "5 of 5 files already have a row" in err, err


def test_rows_per_file_is_exact_and_failures_have_their_own_exit_codes(
        capsys, ray_session, labelled_dir, tmp_path):
    data = tmp_path / "data"
    write_images(data, 11)
    (data / "empty.png").write_bytes(b"")
    (data / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code, err = run(capsys, str(labelled_dir), str(data), "--out", str(out), "--workers", "2",
                    "--batch-size", "3", "--rows-per-file", "4")
    assert code == 12, err  # 10 + 2 failed files; 2 alone means "could not start"
    sizes = sorted(pq.read_metadata(f).num_rows for f in out.glob("*.parquet"))
    assert sizes == [1, 4, 4, 4]
    code, err = run(capsys, str(labelled_dir), str(data / "nope"), "--out", str(out))
    assert code == 2, err


def test_api_on_a_ray_dataset_of_bytes_with_a_nan_image(ray_session, export_once, tmp_path):
    folder = export_once("toy_models:bright_nan", fmt="both")
    paths = write_images(tmp_path / "images", 5, size=32, high=40)  # dark enough for this model
    bright = tmp_path / "images" / "bright.png"
    cv2.imwrite(str(bright), np.full((32, 32, 3), 255, np.uint8))
    source = ray.data.read_binary_files(str(tmp_path / "images"), include_paths=True)
    rows = explain_dataset(folder, source, backend="onnxruntime", batch_size=3,
                           top_k=2).take_all()  # OpenVINO folds this model's NaN away
    assert len(rows) == 6 and set(rows[0]) == set(SCHEMA.names)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "NaN or Inf" in by_name["bright.png"]["error"]
    good = [by_name[p.name] for p in paths]
    assert all(r["error"] is None and r["labels"] is None for r in good)
    assert [r["path"] for r in good] == [str(p) for p in paths]
    assert_rows_equal_api(good, folder, top_k=2, backend="onnxruntime")


def test_an_interrupted_run_resumes_to_the_full_set(capsys, ray_session, resnet18_dir,
                                                    tmp_path):
    images = write_images(tmp_path / "images", 40, size=64)
    out = tmp_path / "out"
    args = [str(resnet18_dir), str(tmp_path / "images"), "--out", str(out), "--precision",
            "f32", "--rows-per-file", "2", "--batch-size", "2"]
    code, err = interrupt_when([sys.executable, "-m", "reciprocam_ir.cli", "explain-dataset",
                                *args], lambda _: bool(list(out.glob("*.parquet"))),
                               wait_s=240, env=subprocess_env())
    assert code == 130, err[-2000:]
    assert "interrupted" in err and "re-run to finish" in err
    partial = read_rows(out)
    assert 0 < len(partial) < 40

    code, err = run(capsys, *args)
    assert code == 0, err
    assert f"{len(partial)} of 40 files already have a row" in err
    rows = read_rows(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)
    assert_rows_equal_api(rows, resnet18_dir)


def test_without_ray_one_line_names_the_extra(labelled_dir, tmp_path):
    write_images(tmp_path / "images", 1)
    code = RAY_BLOCK + f"""
import reciprocam_ir, reciprocam_ir.cli
assert not [m for m in sys.modules if m == "ray" or m.startswith("ray.")]
sys.exit(reciprocam_ir.cli.main(["explain-dataset", {str(labelled_dir)!r},
                                 {str(tmp_path / "images")!r}, "--out", {str(tmp_path / "o")!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("reciprocam: error: explain-dataset needs Ray Data: "
                                   "pip install reciprocam-ir[ray]")
    assert not (tmp_path / "o").exists()
