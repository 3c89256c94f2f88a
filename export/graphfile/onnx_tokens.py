"""Token cuts of an ONNX vision transformer, and its masked-sequence tail (no torch).

A token cut is a float (B, T, D) tensor that every path from the input to the output flows
through and that enters a pre-norm attention block: a LayerNorm reads it (one
``LayerNormalization``, or the ops torch writes below opset 17, see :mod:`.onnx_layer_norm`),
and an ``Add`` reads it and the attention branch that starts at that LayerNorm (a
``Softmax`` on the way). ``g`` is rewired to ViT-ReciproCAM's tail (computed by
:mod:`.token_sequences`): inputs ``feature`` (B, T, D) and ``masks`` (M, N); every masked
copy of the tokens, with the LayerNorm's output weighted alike, runs through the rest of the
model; output (B, M, classes).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper

from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME, OUTPUT_NAME

from ..artifact.graph_ops import OnnxOps, onnx_opset
from ..features import token_grid
from .file_cut import CutPoint, TokenLayout
from .onnx_graph import OnnxGraph, dims_of
from .onnx_layer_norm import LayerNorm, layer_norms, reads_input
from .token_sequences import masked_copies, masked_layer_norm, per_image_scores


def _descendants(start: str, users: dict[str, list[onnx.NodeProto]]) -> set[str]:
    """Tensors computed from ``start``."""
    seen, stack = set(), [start]
    while stack:
        for node in users.get(stack.pop(), ()):
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    stack.append(out)
    return seen


def find_token_cuts(graph: OnnxGraph) -> tuple[list[CutPoint], list[tuple[CutPoint, str]]]:
    """The token cuts of ``graph`` in graph order, and those that cannot be explained with
    the reason (a token count that is not 1 + a grid, a head that pools the tokens).

    The graph's 4-D float tensors made before the first block show the patch grid (the patch
    embedding)."""
    nodes, values, maps = graph.model.graph.node, graph.values, graph.maps
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    norms: dict[str, list[LayerNorm]] = {}
    for norm in layer_norms(graph.model.graph):
        norms.setdefault(norm.input, []).append(norm)
    streams = []
    for node in nodes:
        for out in node.output:
            dims = dims_of(values.get(out))
            if dims is None or len(dims) != 3 or None in dims[1:] or \
                    values[out].type.tensor_type.elem_type != TensorProto.FLOAT:
                continue
            ln1 = _attention_block(out, norms.get(out, []), users, graph.producer)
            if ln1 is not None and graph.all_paths_through(out):
                streams.append((node, out, dims, ln1))
    order = {out: i for i, node in enumerate(nodes) for out in node.output}
    first = order[streams[0][1]] if streams else 0
    patch_maps = [(d[2], d[3]) for name, d in sorted(maps.items(), key=lambda kv: order[kv[0]])
                  if order[name] < first]
    found: list[tuple[CutPoint, str | None]] = []
    for node, out, dims, ln1 in streams:
        grid, prefix, problem = token_grid(dims[1], patch_maps)
        layout = TokenLayout(grid, prefix, ln1) if grid is not None else None
        aliases = (node.name,) if node.name and len(node.output) == 1 else ()
        found.append((CutPoint(out, (dims[1], dims[2]), aliases, layout), problem))
    if found:
        head = head_problem(graph, values, found[-1][0].shape[0], users)
        if head is not None:
            found = [(cut, problem or head) for cut, problem in found]
    return ([c for c, p in found if p is None], [(c, p) for c, p in found if p is not None])


def _attention_block(stream: str, norms: list[LayerNorm],
                     users: dict[str, list[onnx.NodeProto]],
                     producer: dict[str, onnx.NodeProto]) -> str | None:
    """The output of the LayerNorm (of ``norms``, those reading ``stream``) that opens a
    pre-norm attention block on ``stream`` (a Softmax lies between it and the residual Add
    back onto ``stream``), else None."""
    readers = users.get(stream, [])
    if len(norms) != 1:
        return None
    below = _descendants(norms[0].output, users)
    for add in (n for n in readers if n.op_type == "Add"):
        other = [i for i in add.input if i != stream]
        if len(other) != 1 or other[0] not in below:
            continue
        seen, stack = {other[0]}, [other[0]]
        while stack:
            node = producer.get(stack.pop())
            if node is None:
                continue
            if node.op_type == "Softmax" and node.output[0] in below:
                return norms[0].output
            for i in node.input:
                if i and i != stream and i not in seen and i in below:
                    seen.add(i)
                    stack.append(i)
    return None


def head_problem(graph: OnnxGraph, values: dict[str, onnx.ValueInfoProto], tokens: int,
                 users: dict[str, list[onnx.NodeProto]]) -> str | None:
    """Why the head is not explainable, or None: after the last (B, T, D) tensor every path
    flows through, the scores must not change when the patch tokens do."""
    import onnxruntime as ort

    streams = [out for node in graph.model.graph.node for out in node.output
               if (dims_of(values.get(out)) or [None])[1:2] == [tokens]
               and len(dims_of(values.get(out))) == 3 and graph.all_paths_through(out)]
    if not streams:
        return None
    last = streams[-1]
    width = dims_of(values[last])[2]
    try:
        model = onnx.utils.Extractor(graph.rebound(graph.model, last, graph.output)
                                     ).extract_model([last], [graph.output])
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        z = rng.standard_normal((2, tokens, width)).astype(np.float32)
        changed = z.copy()
        changed[:, 1:] = rng.standard_normal((2, tokens - 1, width))
        same = np.array_equal(session.run(None, {last: z})[0],
                              session.run(None, {last: changed})[0])
    except Exception:  # noqa: BLE001 - a head that cannot run alone is checked by the export
        return None
    return None if same else "the head reads the patch tokens, not the class token alone"


def masked_sequences(model: onnx.ModelProto, cut: CutPoint) -> onnx.ModelProto:
    """``g`` (feature → scores) rewritten to (feature, masks) → (B, M, classes): the tokens
    and the block's first LayerNorm output (of the unmasked tokens) weighted by each mask row
    (leading tokens 1), as :mod:`.token_sequences` states it."""
    model = copy.deepcopy(model)
    graph = model.graph
    tokens = cut.shape[0]
    layout = cut.tokens
    ops = OnnxOps(max(onnx_opset(model), 13))  # its reductions need 13; a tail uses none
    copies = masked_copies(ops, FEATURE_NAME, MASKS_NAME, cut.shape, layout.prefix)
    first = len(ops.nodes)
    ln1 = masked_layer_norm(ops, layout.ln1, copies)
    on_ln1 = len(ops.nodes)
    norm = next(n for n in layer_norms(graph) if n.output == layout.ln1)
    _redirect(graph, FEATURE_NAME, copies.stream)
    for node in (n for n in graph.node if reads_input(n, norm)):
        node.input[:] = [copies.plain if i == copies.stream else i for i in node.input]
    _redirect(graph, layout.ln1, ln1)
    producer = next(n for n in graph.node if OUTPUT_NAME in n.output)
    rows = f"{ops.prefix}scores_rows"
    producer.output[:] = [rows if o == OUTPUT_NAME else o for o in producer.output]
    per_image_scores(ops, rows, copies)
    ops.nodes[-1].output[0] = OUTPUT_NAME  # the scores keep the graph's output name
    _insert_after(graph, layout.ln1, ops.nodes[first:on_ln1])
    for index, node in enumerate(ops.nodes[:first]):
        graph.node.insert(index, node)
    graph.node.extend(ops.nodes[on_ln1:])
    graph.initializer.extend(ops.initializers)
    graph.input.append(helper.make_tensor_value_info(MASKS_NAME, TensorProto.FLOAT,
                                                     [MASKS_NAME, tokens - layout.prefix]))
    out = graph.output[0]
    del out.type.tensor_type.shape.dim[:]
    for d in ("batch", MASKS_NAME, "classes"):
        out.type.tensor_type.shape.dim.add().dim_param = d
    return model


def _redirect(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node of ``graph`` reading ``old`` reads ``new`` instead."""
    for n in graph.node:
        n.input[:] = [new if i == old else i for i in n.input]


def _insert_after(graph: onnx.GraphProto, tensor: str, new: list[onnx.NodeProto]) -> None:
    """Put ``new`` right after the node that makes ``tensor`` (keeping topological order)."""
    index = next(i for i, n in enumerate(graph.node) if tensor in n.output)
    for offset, node in enumerate(new, 1):
        graph.node.insert(index + offset, node)
