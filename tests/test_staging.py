"""Artifact folders are replaced whole or not at all, and the user's other files stay."""

from __future__ import annotations

import shutil

import pytest

from conftest import read_manifest
from export.artifact import staging as staging_module
from export.artifact.staging import check_destination, staged, staging_folder
from export.torch.pipeline import export_artifact
from reciprocam_ir.artifact import Artifact, ArtifactError


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The same toy exported as ONNX and as IR: a previous and a next artifact."""
    d = tmp_path_factory.mktemp("sources")
    return {fmt: export_artifact("toy_models:tiny_gap", fmt=fmt, out=d / fmt)
            for fmt in ("onnx", "ir")}


def user_folder(artifact, out):
    """``artifact`` copied to ``out`` with a user's labels.txt and my_results/ beside it."""
    shutil.copytree(artifact, out)
    (out / "labels.txt").write_text("cat\ndog\n")
    (out / "my_results").mkdir()
    (out / "my_results" / "run1.npz").write_bytes(b"results")
    return out


def assert_user_files_kept(out):
    assert (out / "labels.txt").read_text() == "cat\ndog\n"
    assert (out / "my_results" / "run1.npz").read_bytes() == b"results"


def hidden(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_interrupt_during_the_swap_keeps_the_previous_artifact(artifacts, tmp_path,
                                                               monkeypatch):
    out = user_folder(artifacts["onnx"], tmp_path / "a")
    move = staging_module._move_entries
    calls = []

    def move_then_interrupt(*args):  # Ctrl-C after the user's files moved, before the rename
        move(*args)
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(staging_module, "_move_entries", move_then_interrupt)
    with pytest.raises(KeyboardInterrupt), staged(out) as staging:
        shutil.copytree(artifacts["ir"], staging, dirs_exist_ok=True)
    assert read_manifest(out) == read_manifest(artifacts["onnx"])
    assert_user_files_kept(out)
    assert hidden(tmp_path) == []
    Artifact.load(out)


def died_between_renames(artifacts, out):
    """The folders a process killed between its two renames leaves: the previous artifact
    as .a.old-*, the next one in its staging folder holding one of the user's entries."""
    user_folder(artifacts["onnx"], out)
    staging = staging_folder(out)
    shutil.copytree(artifacts["ir"], staging, dirs_exist_ok=True)
    old = out.with_name(f".{out.name}.old-{staging.name}")
    out.rename(old)
    (old / "my_results").rename(staging / "my_results")


def test_death_between_renames_is_put_back(artifacts, tmp_path):
    out = tmp_path / "a"
    died_between_renames(artifacts, out)
    with pytest.raises(ArtifactError, match="an interrupted export left it as '.a.old-"):
        Artifact.load(out)
    check_destination(out)  # what the next export does first
    assert read_manifest(out) == read_manifest(artifacts["onnx"])
    assert_user_files_kept(out)
    assert hidden(tmp_path) == []
    Artifact.load(out)


def test_next_export_after_a_death_between_renames(artifacts, tmp_path):
    out = tmp_path / "a"
    died_between_renames(artifacts, out)
    export_artifact("toy_models:tiny_gap", fmt="ir", out=out)
    assert set(read_manifest(out)["files"]) == set(read_manifest(artifacts["ir"])["files"])
    assert_user_files_kept(out)
    assert hidden(tmp_path) == []


def test_leftover_of_a_death_after_the_swap_is_removed(artifacts, tmp_path):
    out = user_folder(artifacts["ir"], tmp_path / "a")
    shutil.copytree(artifacts["onnx"], tmp_path / ".a.old-.a.partial-x1")
    Artifact.load(out)
    check_destination(out)
    assert hidden(tmp_path) == []
    assert read_manifest(out) == read_manifest(artifacts["ir"])
    assert_user_files_kept(out)
