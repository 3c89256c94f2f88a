"""The mask-option rule, one piece of code for the API, ``reciprocam`` and the exporter."""

from __future__ import annotations

import pytest

from reciprocam_ir.mask_options import mask_option_problem, option_name


@pytest.mark.parametrize("mask, sigma, strength", [
    ("gaussian", 2.0, None), ("drop", 2.0, None), ("window", 2.0, 3.0), ("window", None, 3.0),
    (None, None, None), ("onehot", None, None),
])
def test_options_that_apply_pass(mask, sigma, strength):
    assert mask_option_problem(mask, sigma, strength) is None


@pytest.mark.parametrize("mask, sigma, strength, problem", [
    (None, 1.0, None, "mask_sigma sets the window of mask gaussian, drop or window; name the "
                      "mask it sets"),
    ("onehot", 1.0, None, "mask_sigma sets the window of mask gaussian, drop or window; the "
                          "onehot mask has none"),
    (None, None, 2.0, "mask_strength sets the strength of mask window; name the mask it sets"),
    ("gaussian", None, 2.0, "mask_strength sets the strength of mask window; the gaussian "
                            "mask has none"),
    ("drop", 1.0, 2.0, "mask_strength sets the strength of mask window; the drop mask has none"),
])
def test_options_that_do_not_apply_are_named(mask, sigma, strength, problem):
    assert mask_option_problem(mask, sigma, strength) == problem


def test_each_caller_names_the_options_its_own_way():
    assert [option_name("mask_sigma", p) for p in (None, "", "explain-")] == [
        "mask_sigma", "--mask-sigma", "--explain-mask-sigma"]
    assert mask_option_problem("drop", None, 2.0, flag_prefix="explain-") == (
        "--explain-mask-strength sets the strength of --explain-mask window; the drop mask has "
        "none")
