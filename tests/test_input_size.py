"""--input-size N or HxW."""

from __future__ import annotations

import argparse

import pytest

from export.input_size import as_hw, parse_input_size, show


@pytest.mark.parametrize("text, hw", [("224", (224, 224)), ("48x192", (48, 192)),
                                      ("48X192", (48, 192)), (" 32 x 64 ", (32, 64))])
def test_parse(text, hw):
    assert parse_input_size(text) == hw


@pytest.mark.parametrize("text", ["", "x", "48x", "48by192", "-3", "1.5"])
def test_parse_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected N or HxW"):
        parse_input_size(text)


def test_as_hw_and_show():
    assert as_hw(None) is None and as_hw(64) == (64, 64) and as_hw((48, 64)) == (48, 64)
    assert as_hw([48, 64]) == (48, 64)
    with pytest.raises(ValueError):
        as_hw("64")
    assert show((64, 64)) == "64" and show((48, 192)) == "48x192"
