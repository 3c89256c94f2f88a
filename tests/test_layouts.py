"""Which axis holds the channels, read from the graph around a 4-D tensor."""

from __future__ import annotations

from export.graphfile.layouts import Op, infer_layouts, layout_problem, transposed


def test_transposed():
    assert transposed("NCHW", (0, 2, 3, 1)) == "NHWC"
    assert transposed("NHWC", (0, 3, 1, 2)) == "NCHW"


def test_keras_style_graph():
    """NHWC input → Transpose → Conv → Relu → Transpose back → Relu → ReduceMean(1, 2)."""
    ops = [Op("Transpose", ("image",), ("t",), perm=(0, 3, 1, 2)),
           Op("Conv", ("t", "w"), ("c",)),
           Op("Relu", ("c",), ("r",)),
           Op("Transpose", ("r",), ("back",), perm=(0, 2, 3, 1)),
           Op("Relu", ("back",), ("act",)),
           Op("ReduceMean", ("act",), ("pooled",), axes=(1, 2))]
    layouts = infer_layouts(ops, ["image", "t", "c", "r", "back", "act"], {"image": "NHWC"})
    assert layouts == {"image": "NHWC", "t": "NCHW", "c": "NCHW", "r": "NCHW",
                       "back": "NHWC", "act": "NHWC"}


def test_unknown_producers_are_settled_by_their_readers():
    """After a Reshape the layout is open; a spatial ReduceMean or a Conv that reads it says."""
    ops = [Op("Reshape", ("x", "s"), ("a",)),
           Op("Relu", ("a",), ("b",)),
           Op("ReduceMean", ("b",), ("p",), axes=(1, 2)),
           Op("Reshape", ("x", "s"), ("c",)),
           Op("Conv", ("c", "w"), ("d",)),
           Op("Reshape", ("x", "s"), ("e",))]
    layouts = infer_layouts(ops, ["a", "b", "c", "d", "e"], {})
    assert layouts["b"] == "NHWC" and layouts["c"] == "NCHW" and layouts["d"] == "NCHW"
    assert layouts["e"] is None  # nothing says: cut as NCHW, as before


def test_layout_problem():
    assert layout_problem("NCHW") is None and layout_problem(None) is None
    assert "channels last" in layout_problem("NHWC")
