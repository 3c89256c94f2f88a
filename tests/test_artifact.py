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


def rename_graph(folder, old: str, new: str, drop_bin: bool = False) -> None:
    """Rename graph file ``old`` to ``new`` and rewrite the manifest to name it (as an
    attacker or a careless tool could), optionally dropping its ``.bin`` entry."""
    from reciprocam_ir.artifact import sha256_file

    (folder / old).rename(folder / new)

    def change(m):
        for formats in m["graphs"].values():
            for fmt, name in formats.items():
                if name == old:
                    formats[fmt] = new
        m["files"].pop(old)
        m["files"][new] = sha256_file(folder / new)
        if drop_bin:
            m["files"].pop(old.rsplit(".", 1)[0] + ".bin")

    edit_manifest(folder, change)


def test_upper_case_ir_extension_still_hashes_its_bin(copy):
    rename_graph(copy, "g_pooled.xml", "g_pooled.XML", drop_bin=True)
    with pytest.raises(ArtifactError, match="'g_pooled.bin' has no sha256 entry"):
        Artifact.load(copy)
    edit_manifest(copy, lambda m: m["files"].update({"g_pooled.bin": "0" * 64}))
    with pytest.raises(ArtifactError, match="'g_pooled.bin' does not match its sha256"):
        Artifact.load(copy)


def test_upper_case_onnx_extension_still_checks_external_data(copy):
    import onnx

    model = onnx.load(str(copy / "g_pooled.onnx"))
    onnx.save_model(model, str(copy / "g_pooled.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    rename_graph(copy, "g_pooled.onnx", "g_pooled.ONNX")
    with pytest.raises(ArtifactError, match="'g_pooled.ONNX' references external data "
                                            "'weights.data' that is not a file"):
        Artifact.load(copy)


def test_onnx_content_under_an_xml_name_is_checked_too(copy):
    """OpenVINO reads an ONNX graph whatever its name: the content decides the check."""
    import onnx

    model = onnx.load(str(copy / "g_pooled.onnx"))
    onnx.save_model(model, str(copy / "g_pooled.xml"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    from reciprocam_ir.artifact import sha256_file

    edit_manifest(copy, lambda m: m["files"].update(
        {"g_pooled.xml": sha256_file(copy / "g_pooled.xml")}))
    with pytest.raises(ArtifactError, match="'g_pooled.xml' references external data"):
        Artifact.load(copy)


def test_external_data_is_listed_and_hashed_by_write_manifest(copy):
    import onnx

    from reciprocam_ir.artifact import write_manifest

    model = onnx.load(str(copy / "g_pooled.onnx"))
    onnx.save_model(model, str(copy / "g_pooled.ONNX"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    (copy / "g_pooled.onnx").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["g_pooled"]["onnx"] = "g_pooled.ONNX"
    written = write_manifest(copy, manifest)
    assert "weights.data" in written["files"] and "g_pooled.ONNX" in written["files"]
    Artifact.load(copy)
    data = bytearray((copy / "weights.data").read_bytes())
    data[0] ^= 0xFF
    (copy / "weights.data").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="'weights.data' does not match its sha256"):
        Artifact.load(copy)


@pytest.mark.parametrize("role, fmt, name", [("f", "ir", "f.onnx"), ("f", "onnx", "f.xml"),
                                             ("g", "ir", "g.txt")])
def test_a_graph_name_must_carry_its_format_suffix(copy, role, fmt, name):
    edit_manifest(copy, lambda m: m["graphs"][role].update({fmt: name}))
    with pytest.raises(ArtifactError, match=f"must be a .* file, not '{name}'"):
        Artifact.load(copy)


def test_deeply_nested_manifest_is_a_one_line_error(copy):
    (copy / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(ArtifactError, match="nested too deeply"):
        Artifact.load(copy)
    (copy / "manifest.json").write_text('{"format_version": 1, "x": ' + "[" * 5000
                                        + "]" * 5000 + "}")
    with pytest.raises(ArtifactError, match="nested too deeply"):
        Artifact.load(copy)


def test_oversized_manifest_is_refused_unread(copy):
    from reciprocam_ir.artifact import MAX_MANIFEST_BYTES

    with open(copy / "manifest.json", "wb") as fh:
        fh.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ArtifactError, match="manifest larger than"):
        Artifact.load(copy)


@pytest.fixture(scope="module")
def vit_manifest(export_once) -> dict:
    return json.loads((export_once("toy_models:tiny_vit") / "manifest.json").read_text())


def test_a_token_artifact_reads_as_tokens_on_a_grid(export_once):
    artifact = Artifact.load(export_once("toy_models:tiny_vit"))
    tokens = artifact.tokens
    assert (tokens.count, tokens.width, tokens.grid, tokens.prefix) == (17, 16, (4, 4), 1)
    assert tokens.tail == "class_token" and tokens.masks_name == "masks"
    assert artifact.feature_shape == (16, 4, 4) and artifact.default_mask == "gaussian"
    assert artifact.expected_io("g") == ((-1, 17, 16), (-1, -1, 10))
    assert Artifact.load(export_once("toy_models:tiny_gap")).default_mask == "onehot"


@pytest.mark.parametrize("change, match", [
    (lambda m: m["feature"].update(shape=[17, 16, 1]), "feature.shape' of tokens"),
    (lambda m: m["feature"].update(grid=[4, 5]), "prefix_tokens \\+ h\\*w"),
    (lambda m: m["feature"].update(prefix_tokens=2), "prefix_tokens \\+ h\\*w"),
    (lambda m: m["feature"].update(kind="sequence"), "feature.kind"),
    (lambda m: m.pop("token_tail"), "token_tail"),
    (lambda m: m["token_tail"].update(kind="shortcut"), "token_tail"),
])
def test_token_schema_violations(vit_manifest, change, match):
    from reciprocam_ir.artifact import validate_manifest

    manifest = json.loads(json.dumps(vit_manifest))
    change(manifest)
    with pytest.raises(ArtifactError, match=match):
        validate_manifest(manifest)
