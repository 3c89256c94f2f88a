"""Token cuts of an OpenVINO IR vision transformer, and its masked-sequence tail (no torch).

OpenVINO reads a LayerNorm as ``MVN`` followed by its scale (``Multiply``) and shift
(``Add``) by constants; a unit scale or a zero shift is dropped. A token cut is an f32
(B, T, D) output that every path to the result flows through and that enters a pre-norm
attention block: an ``MVN`` reads it, and an ``Add`` reads it and the attention branch that
starts there (a ``Softmax`` or ``ScaledDotProductAttention`` on the way). ``g`` takes
``feature`` (B, T, D) and ``masks`` (M, N) and returns (B, M, classes), as on the ONNX path.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME

from ..artifact.graph_ops import OpenVINOOps
from ..features import token_grid
from .file_cut import CutPoint, TokenLayout
from .ir_graph import IrGraph, key
from .token_sequences import masked_copies, masked_layer_norm, per_image_scores

ATTENTION = ("Softmax", "ScaledDotProductAttention")


def _readers(output: ov.Output) -> list[ov.Node]:
    return [t.get_node() for t in output.get_target_inputs()]


def _is_constant(value: ov.Output) -> bool:
    node = value.get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def layer_norm_output(mvn: ov.Node) -> ov.Output:
    """The LayerNorm's output: ``mvn`` then its constant scale and shift where present."""
    value = mvn.output(0)
    for kind in ("Multiply", "Add"):
        readers = _readers(value)
        if len(readers) == 1 and readers[0].get_type_name() == kind and any(
                _is_constant(v) for v in readers[0].input_values()):
            value = readers[0].output(0)
    return value


def _attention_block(stream: ov.Output) -> ov.Node | None:
    """The ``MVN`` that opens a pre-norm attention block on ``stream``, else None."""
    readers = _readers(stream)
    norms = [n for n in readers if n.get_type_name() == "MVN"]
    if len(norms) != 1:
        return None
    below: set[int] = set()
    stack = [norms[0]]
    while stack:
        node = stack.pop()
        for out in node.outputs():
            for reader in _readers(out):
                if reader.get_instance_id() not in below:
                    below.add(reader.get_instance_id())
                    stack.append(reader)
    for add in (n for n in readers if n.get_type_name() == "Add"):
        others = [v for v in add.input_values() if key(v) != key(stream)]
        if len(others) != 1 or others[0].get_node().get_instance_id() not in below:
            continue
        seen, stack = set(), [others[0].get_node()]
        while stack:
            node = stack.pop()
            if node.get_type_name() in ATTENTION:
                return norms[0]
            for v in node.input_values():
                n = v.get_node()
                if n.get_instance_id() in below and n.get_instance_id() not in seen:
                    seen.add(n.get_instance_id())
                    stack.append(n)
    return None


def find_token_cuts(graph: IrGraph) -> tuple[list[tuple[CutPoint, int, int]],
                                             list[tuple[CutPoint, str]]]:
    """The token cuts in graph order, each with its node's position and output index, and
    those that cannot be explained with the reason."""
    ordered, names, reads_input, result = (graph.ordered, graph.names, graph.reads_input,
                                           graph.result)
    streams = []
    for position, node in enumerate(ordered):
        if node.get_instance_id() not in reads_input or node.get_type_name() in (
                "Result", "Parameter"):
            continue
        for out in node.outputs():
            ps = out.get_partial_shape()
            if out.get_element_type() != ov.Type.f32 or ps.rank.is_dynamic \
                    or ps.rank.get_length() != 3 or any(d.is_dynamic for d in list(ps)[1:]):
                continue
            mvn = _attention_block(out)
            if mvn is not None and graph.all_paths_through(out, result):
                streams.append((position, node, out, mvn))
    if not streams:
        return [], []
    positions = {node.get_instance_id(): i for i, node in enumerate(ordered)}
    first = streams[0][0]
    maps = [tuple(d.get_length() for d in list(o.get_partial_shape())[2:])
            for node in ordered[:first] for o in node.outputs()
            if o.get_partial_shape().rank.is_static and o.get_partial_shape().rank.get_length() == 4
            and all(d.is_static for d in list(o.get_partial_shape())[2:])]
    found = []
    for position, node, out, mvn in streams:
        tokens, width = (d.get_length() for d in list(out.get_partial_shape())[1:])
        grid, prefix, problem = token_grid(tokens, maps)
        name = names[node.get_instance_id()]
        cut_name = name if out.get_index() == 0 else f"{name}:{out.get_index()}"
        ln1 = layer_norm_output(mvn)
        where = f"{positions[ln1.get_node().get_instance_id()]}:{ln1.get_index()}"
        layout = TokenLayout(grid, prefix, where) if grid is not None else None
        point = CutPoint(cut_name, (tokens, width), tuple(sorted(out.get_names())), layout)
        found.append((point, position, out.get_index(), problem))
    head = head_problem(graph, ordered, found[-1][0].shape[0], result)
    ok = [(p, pos, i) for p, pos, i, problem in found if problem is None and head is None]
    refused = [(p, problem or head) for p, _, _, problem in found if problem or head]
    return ok, refused


def head_problem(graph: IrGraph, ordered: list[ov.Node], tokens: int,
                 result: ov.Node) -> str | None:
    """Why the head is not explainable, or None: after the last (B, T, D) output every path
    flows through, the scores must not change when the patch tokens do."""
    last = None
    for position, node in enumerate(ordered):
        for out in node.outputs():
            ps = out.get_partial_shape()
            if ps.rank.is_static and ps.rank.get_length() == 3 and ps[1].is_static \
                    and ps[1].get_length() == tokens and ps[2].is_static \
                    and node.get_type_name() not in ("Parameter", "Result") \
                    and graph.all_paths_through(out, result):
                last = (position, out.get_index())
    if last is None:
        return None
    model = graph.model.clone()
    value = model.get_ordered_ops()[last[0]].output(last[1])
    width = value.get_partial_shape()[2].get_length()
    param = ops.parameter([-1, tokens, width], ov.Type.f32)
    for target in list(value.get_target_inputs()):
        target.replace_source_output(param.output(0))
    rest = ov.Model([model.get_results()[0].input_value(0)], [param], "head")
    try:
        compiled = graph.core.compile_model(rest, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        rng = np.random.default_rng(0)
        z = rng.standard_normal((2, tokens, width)).astype(np.float32)
        changed = z.copy()
        changed[:, 1:] = rng.standard_normal((2, tokens - 1, width))
        same = np.array_equal(compiled({0: z})[0], compiled({0: changed})[0])
    except RuntimeError:  # a head that cannot run alone is checked by the export
        return None
    return None if same else "the head reads the patch tokens, not the class token alone"


def masked_sequences(feature: ov.Output, scores: ov.Output, cut: CutPoint,
                     ordered: list[ov.Node]) -> tuple[list[ov.Node], ov.Output, ov.Output]:
    """Rewire the graph holding ``feature`` (the cut) and ``scores`` into the masked-sequence
    tail (:mod:`.token_sequences`): returns its Parameters (``feature``, ``masks``), its
    (B, M, classes) scores and the masked stream (B·M, T, D), which now stands wherever
    ``feature`` was read but by the LayerNorm. ``ordered`` is the graph's ops in order (the
    cut's layout names the LayerNorm output by position)."""
    tokens, width = cut.shape
    layout = cut.tokens
    position, index = (int(v) for v in layout.ln1.split(":"))
    ln1 = ordered[position].output(index)
    mvn = _mvn_of(ln1)
    param = ops.parameter([-1, tokens, width], ov.Type.f32, name=FEATURE_NAME)
    masks = ops.parameter([-1, tokens - layout.prefix], ov.Type.f32, name=MASKS_NAME)
    writer = OpenVINOOps()
    copies = masked_copies(writer, param.output(0), masks.output(0), cut.shape, layout.prefix)
    ln1_targets = list(ln1.get_target_inputs())
    masked_ln1 = masked_layer_norm(writer, ln1, copies)
    for target in ln1_targets:
        target.replace_source_output(masked_ln1)
    for target in list(feature.get_target_inputs()):
        if target.get_node().get_instance_id() == mvn.get_instance_id():
            target.replace_source_output(copies.plain)
        else:
            target.replace_source_output(copies.stream)
    return [param, masks], per_image_scores(writer, scores, copies), copies.stream


def _mvn_of(ln1: ov.Output) -> ov.Node:
    node = ln1.get_node()
    while node.get_type_name() != "MVN":
        node = next(v.get_node() for v in node.input_values() if not _is_constant(v))
    return node
