"""The targets rule (reciprocam_ir/targets.py): repeated classes explained once, at most
``max_targets`` classes per image; the same rule through the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reciprocam_ir import ReciproCAM, cli
from reciprocam_ir.targets import checked_targets


def test_duplicates_are_removed_in_the_order_first_given():
    assert checked_targets([3, 1, 3, 3, 1], 1, 5) == [3, 1]
    assert checked_targets(np.full(300_000, 2), 1, 5) == [2]
    assert checked_targets(4, 1, 5) == [4]
    assert checked_targets(None, 3, 5) is None and checked_targets("all", 1, 5) == "all"


@pytest.mark.parametrize("targets, top_k, limit, match", [
    ([0, 1, 2], 1, 2, "targets asks for 3 classes per image, more than the limit of 2"),
    ("all", 1, 4, "targets 'all' asks for 5 classes"),
    (None, 3, 2, "top_k asks for 3 classes"),
    ([7], 1, 10, "class 7 out of range"),
    (list(range(100)) + ["x"], 1, 10, "targets must be class indices"),
])
def test_beyond_the_limit_is_refused_in_one_line(targets, top_k, limit, match):
    with pytest.raises(ValueError, match=match) as refused:
        checked_targets(targets, top_k, 5, limit)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200


def test_api_explains_each_class_once_and_refuses_beyond_max_targets(export_once, image):
    folder = export_once("toy_models:tiny_gap")
    cam = ReciproCAM(folder, precision="f32")
    repeated = cam.explain(image, targets=[3] * 1000 + [1, 3])
    once = cam.explain(image, targets=[3, 1])
    assert repeated.targets.tolist() == [[3, 1]] and repeated.saliency.shape[:2] == (1, 2)
    np.testing.assert_array_equal(repeated.saliency, once.saliency)
    limited = ReciproCAM(folder, precision="f32", max_targets=2)
    with pytest.raises(ValueError, match="more than the limit of 2"):
        limited.explain(image, targets="all")
    with pytest.raises(ValueError, match="max_targets must be an integer"):
        ReciproCAM(folder, max_targets=0)


def test_cli_applies_the_same_rule(capsys, export_once, image, tmp_path):
    import cv2

    folder = export_once("toy_models:tiny_gap")
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), image[..., ::-1])
    code = cli.main(["explain", str(folder), str(path), "--class", "2", "2", "0", "2",
                     "--json", "--out", str(tmp_path / "out"), "--precision", "f32"])
    out = capsys.readouterr().out
    assert code == 0
    assert [e["class"] for e in json.loads(out)["explained"]] == [2, 0]
    code = cli.main(["explain", str(folder), str(path), "--all-classes", "--max-targets", "3",
                     "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["reciprocam: error: --all-classes: targets 'all' asks for 5 "
                                 "classes per image, more than the limit of 3"]
