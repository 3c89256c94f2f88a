"""``reciprocam explain`` on a detection artifact: a JSON ``boxes`` record, one overlay per box;
``serve`` and ``explain-dataset`` refuse detection artifacts; the runtime stays torch- and
ultralytics-free."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from conftest import DETECTOR_IMAGES, TORCH_BLOCK, import_blocker, subprocess_env
from reciprocam_ir import cli

BLOCKS = TORCH_BLOCK + import_blocker("ultralytics")


def test_explain_json_has_one_record_per_image_with_its_boxes(detector_dir, tmp_path, capsys):
    wide = tmp_path / "wide.png"  # not square: boxes go back through the letterbox
    cv2.imwrite(str(wide), cv2.imread(str(DETECTOR_IMAGES[0]))[20:220])
    code = cli.main(["explain", str(detector_dir), str(wide), str(DETECTOR_IMAGES[1]),
                     "--out", str(tmp_path / "out"), "--json", "--backend", "onnxruntime"])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == [str(wide), str(DETECTOR_IMAGES[1])]
    written = sorted((tmp_path / "out").glob("*.png"))
    assert len(written) == sum(len(r["boxes"]) for r in records) >= 2
    for record in records:
        for box in record["boxes"]:
            assert set(box) == {"box", "class", "label", "score", "files"}
            x1, y1, x2, y2 = box["box"]
            assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
            assert 0.25 < box["score"] <= 1 and len(box["files"]) == 1
            assert cv2.imread(box["files"][0]).shape[:2] == \
                cv2.imread(record["path"]).shape[:2]
    assert max(b["box"][3] for b in records[0]["boxes"]) <= 200


def test_conf_one_keeps_no_box_and_writes_nothing(detector_dir, tmp_path, capsys):
    code = cli.main(["explain", str(detector_dir), str(DETECTOR_IMAGES[0]), "--conf", "1",
                     "--out", str(tmp_path / "out"), "--json", "--backend", "onnxruntime"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["boxes"] == []
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("args", [["--top-k", "2"], ["--class", "1"], ["--conf", "1.5"],
                                  ["--mask", "gaussian"]])
def test_classifier_options_are_refused_in_one_line(detector_dir, tmp_path, capsys, args):
    code = cli.main(["explain", str(detector_dir), str(DETECTOR_IMAGES[0]), *args,
                     "--out", str(tmp_path / "out"), "--backend", "onnxruntime"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("reciprocam: error:")


@pytest.mark.parametrize("command", [["serve"], ["explain-dataset"]])
def test_serve_and_explain_dataset_refuse_a_detection_artifact(detector_dir, tmp_path, capsys,
                                                               command):
    extra = ["--out", str(tmp_path / "out"), str(tmp_path)] if command[0] != "serve" else []
    code = cli.main([*command, str(detector_dir), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "detection artifact" in err[0]
    assert not (tmp_path / "out").exists()


def test_detection_runtime_runs_without_torch_or_ultralytics(detector_dir, tmp_path):
    script = BLOCKS + f"""
import sys
from reciprocam_ir import cli
code = cli.main(["explain", {str(detector_dir)!r}, {str(DETECTOR_IMAGES[0])!r},
                 "--out", {str(tmp_path)!r}])
assert not any(m.split(".")[0] in ("torch", "ultralytics") for m in sys.modules)
sys.exit(code)
"""
    result = subprocess.run([sys.executable, "-c", script], env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.glob("*_box0_*.png"))
