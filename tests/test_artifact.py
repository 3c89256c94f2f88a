"""The artifact folder is validated before anything is compiled."""

from __future__ import annotations

import json
import shutil

import pytest

from reciprocam_ir.artifact import Artifact, ArtifactError


@pytest.fixture()
def copy(resnet18_dir, tmp_path):
    target = tmp_path / "artifact"
    shutil.copytree(resnet18_dir, target)
    return target


def edit_manifest(folder, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_loads_a_real_artifact(resnet18_dir):
    artifact = Artifact.load(resnet18_dir)
    assert artifact.feature_shape == (512, 7, 7) and artifact.num_classes == 1000
    assert artifact.graph_path("g_pooled", "ir").name == "g_pooled.xml"
    assert artifact.label(285) == "Egyptian cat"


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="no such directory"):
        Artifact.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Artifact.load(tmp_path)


def test_unknown_version_names_the_supported_one(copy):
    edit_manifest(copy, lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="unsupported format_version 99 .* reads 1"):
        Artifact.load(copy)


def test_unparseable_manifest(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        Artifact.load(copy)


@pytest.mark.parametrize("change, match", [
    (lambda m: m["feature"].update(shape=[512, 7]), "feature.shape"),
    (lambda m: m["output"].update(num_classes=0), "num_classes"),
    (lambda m: m.update(labels=["a"]), "labels"),
    (lambda m: m["input"].update(resize="stretch"), "resize"),
    (lambda m: m["input"].update(std=[0, 1, 1]), "std"),
    (lambda m: m["graphs"]["f"].update(onnx="../f.onnx"), "bare file name"),
    (lambda m: m["graphs"]["f"].update(onnx="/etc/passwd"), "bare file name"),
    (lambda m: m["graphs"].pop("g_pooled"), "graph 'g_pooled' missing"),
    (lambda m: m["files"].pop("f.bin"), "'f.bin' has no sha256"),
])
def test_schema_violations(copy, change, match):
    edit_manifest(copy, change)
    with pytest.raises(ArtifactError, match=match):
        Artifact.load(copy)


def test_missing_and_modified_files(copy):
    (copy / "g.bin").unlink()
    with pytest.raises(ArtifactError, match="'g.bin' named in manifest is missing"):
        Artifact.load(copy)
    (copy / "g.bin").write_bytes(b"0")
    with pytest.raises(ArtifactError, match="'g.bin' does not match its sha256"):
        Artifact.load(copy)


def test_symlink_out_of_the_folder_is_refused(copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(copy / "f.onnx", outside)
    (copy / "f.onnx").unlink()
    (copy / "f.onnx").symlink_to(outside)
    with pytest.raises(ArtifactError, match="points outside the folder"):
        Artifact.load(copy)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_manifest_shapes_must_match_the_graphs(copy, backend):
    from reciprocam_ir import ReciproCAM

    edit_manifest(copy, lambda m: m["feature"].update(shape=[256, 7, 7]))
    with pytest.raises(ArtifactError, match=r"graph 'f' has output shape \[-1, 512, 7, 7\]"):
        ReciproCAM(copy, backend=backend)
    edit_manifest(copy, lambda m: m["feature"].update(shape=[512, 7, 7]))
    edit_manifest(copy, lambda m: m["input"].update(shape=[1, 3, 256, 256]))
    with pytest.raises(ArtifactError, match="graph 'f' has input shape"):
        ReciproCAM(copy, backend=backend)
