"""Find valid cut points in a traced model and split it into ``f`` and ``g``.

A cut at node X is valid when everything after it reads the input only through X,
apart from reads of the batch size (``x.size(0)``), which are rebound to X.

Cuts are 4-D module outputs (C, h, w maps), or the token stream (T, D) entering a
pre-norm transformer block (a module whose direct LayerNorm child reads its input first,
as torchvision's ViT ``EncoderBlock``): the cut is named by the block, which
ViT-ReciproCAM masks (:mod:`.token_tail`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from reciprocam_ir.messages import first_line

from ..errors import ExportError
from ..features import feature_description, token_grid

_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", F.relu: "relu", torch.relu: "relu",
                F.relu6: "relu6"}
_GAP_FUNCTIONS = (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d)


class _RecordingTracer(fx.Tracer):
    """Traces through every module and remembers which node each module call returned."""

    def __init__(self) -> None:
        super().__init__()
        self.module_outputs: dict[str, fx.Node] = {}
        self.module_inputs: dict[str, fx.Node] = {}
        self.module_calls: Counter[str] = Counter()

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        if args and isinstance(args[0], fx.Proxy):
            self.module_inputs[name] = args[0].node
        out = super().call_module(m, forward, args, kwargs)
        self.module_calls[name] += 1
        if isinstance(out, fx.Proxy):
            self.module_outputs[name] = out.node
        return out


@dataclass(frozen=True)
class TokenBlock:
    """A pre-norm transformer block: the stream entering it (``input``, (B, T, D)), its first
    LayerNorm (``ln1``, reading that stream), its output, and the patch grid of the tokens
    (``grid`` h×w after ``prefix`` leading tokens), or ``problem`` saying why it cannot be
    explained. ``ln1_name`` is the LayerNorm's module (a leaf in torchvision, traced through
    in timm, where ``ln1`` is its ``layer_norm`` call)."""

    name: str
    input: fx.Node
    ln1: fx.Node
    output: fx.Node
    grid: tuple[int, int] | None
    prefix: int
    problem: str | None = None
    ln1_name: str = ""


@dataclass(frozen=True)
class Cut:
    """A valid cut point: the module names that output it and the feature shape (C, h, w),
    or, entering a transformer ``block``, the block's name and the tokens' shape (T, D)."""

    names: tuple[str, ...]
    node: fx.Node
    shape: tuple[int, ...]
    is_pooling: bool
    block: TokenBlock | None = None

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def spatial(self) -> bool:
        if self.block is not None:
            return self.block.grid is not None and min(self.block.grid) > 1
        return len(self.shape) == 3 and self.shape[1] > 1 and self.shape[2] > 1

    @property
    def description(self) -> str:
        """The feature as ``--list-layers`` shows it: C x h x w, or tokens with their grid."""
        return feature_description(self.shape, None if self.block is None else self.block.grid)


@dataclass
class Split:
    f: fx.GraphModule
    g: fx.GraphModule
    g_pooled: fx.GraphModule | None
    cut: Cut


def _activation_key(gm: fx.GraphModule, node: fx.Node):
    if node.op == "call_module":
        return _ACTIVATIONS.get(type(gm.get_submodule(node.target)))
    if node.op == "call_function":
        return _ACTIVATIONS.get(node.target)
    return None


def _drop_repeated_activations(gm: fx.GraphModule, outputs: dict[str, fx.Node]) -> None:
    """relu(relu(x)) = relu(x): drop an activation applied to the output of the same one."""
    for node in list(gm.graph.nodes):
        key = _activation_key(gm, node)
        if key is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        if _activation_key(gm, source) == key:
            node.replace_all_uses_with(source)
            for name, out in outputs.items():
                if out is node:
                    outputs[name] = source
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _reachable(node: fx.Node, step) -> set[fx.Node]:
    """``node`` and every node reached by repeatedly following ``step`` from it."""
    seen, stack = {node}, [node]
    while stack:
        for nxt in step(stack.pop()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def ancestors(node: fx.Node) -> set[fx.Node]:
    return _reachable(node, lambda n: n.all_input_nodes)


def descendants(node: fx.Node) -> set[fx.Node]:
    return _reachable(node, lambda n: n.users)


def copy_nodes(graph: fx.Graph, nodes: list[fx.Node], env: dict[fx.Node, fx.Node],
          f_nodes: set[fx.Node], batch: fx.Node,
          after: Callable[[fx.Node, fx.Node], fx.Node] = lambda old, new: new) -> None:
    """Copy ``nodes`` into ``graph``; reads of ``f``'s nodes (batch sizes) read ``batch``."""
    for n in nodes:
        env[n] = after(n, graph.node_copy(
            n, lambda a: env[a] if a in env else (batch if a in f_nodes else env[a])))


def _is_batch_size_read(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.shape[0]`` or ``x.size()[0]``: only the batch size is used."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dim is not None:
            return dim == 0
    elif not (node.op == "call_function" and node.target is getattr and node.args[1] == "shape"):
        return False
    return bool(node.users) and all(
        u.op == "call_function" and u.target.__name__ == "getitem" and u.args[1] == 0
        for u in node.users
    )


def _is_gap(gm: fx.GraphModule, node: fx.Node, in_shape: tuple[int, ...]) -> bool:
    """Is ``node`` a global average pool of its (N, C, h, w) input?"""
    out = shape_of(node)
    if out is None or out[:2] != in_shape[:2] or any(d != 1 for d in out[2:]):
        return False
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return True
        if isinstance(m, nn.AvgPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            pad = m.padding if isinstance(m.padding, tuple) else (m.padding,) * 2
            return tuple(k) == tuple(in_shape[2:]) and tuple(pad) == (0, 0)
        return False
    if node.op == "call_function" and node.target in _GAP_FUNCTIONS:
        return True
    if (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    ):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        return sorted(d % 4 for d in dims) == [2, 3]
    return False


def _optional_arguments(model: nn.Module) -> dict[str, object]:
    """The forward's arguments after the image that have defaults (timm's ``attn_mask``,
    ``is_causal``), fixed at their defaults for tracing: the image is the only input."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters[1:]
            if p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _drop_fixed_placeholders(graph: fx.Graph) -> None:
    """Remove the placeholders torch.fx keeps for arguments fixed at their defaults, with the
    checks it reads them in (``_assert_is_none``, ``_assert(x == value)``), where the output
    does not depend on them."""
    output = next(n for n in graph.nodes if n.op == "output")
    for node in [n for n in graph.nodes if n.op == "placeholder"][1:]:
        if node.type is torch.Tensor:
            continue
        checks = descendants(node) - {node}
        if output in checks or any(n.op == "output" for n in checks):
            continue
        for check in sorted(checks, key=list(graph.nodes).index, reverse=True):
            graph.erase_node(check)
        graph.erase_node(node)


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, example: torch.Tensor) -> None:
    """Record every node's shape on ``example``; a model that cannot take it is a user error."""
    try:  # ShapeProp prints the model's traceback before raising: keep it off the console
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(example)
    except Exception as exc:  # the model's own errors: sizes, channels, asserts
        cause = exc.__cause__ or exc  # ShapeProp wraps the model's error in its own
        reason = re.sub(r"Proxy\([^)]*\)", "another size", first_line(cause))
        hint = ("only RGB image classifiers (3 input channels) can be explained"
                if re.search(r"to have \d+ channels", reason) else "try another --input-size")
        raise ExportError(f"{type(model).__name__} cannot run on a "
                          f"{'x'.join(map(str, example.shape))} input ({reason}); {hint}"
                          ) from None


class CutGraph:
    """A model traced once, with its valid cut points and the means to split it."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        tracer = _RecordingTracer()
        try:
            graph = tracer.trace(model, concrete_args=_optional_arguments(model))
        except Exception as exc:  # fx raises many kinds of error for untraceable code
            raise ExportError(
                f"cannot trace {type(model).__name__} with torch.fx: {first_line(exc)}"
            ) from None
        _drop_fixed_placeholders(graph)
        self.gm = fx.GraphModule(tracer.root, graph)
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ExportError(
                f"model takes {len(placeholders)} inputs; only single-image classifiers "
                "(one input tensor) can be explained"
            )
        self.input = placeholders[0]
        outputs = dict(tracer.module_outputs)
        _drop_repeated_activations(self.gm, outputs)
        _propagate_shapes(self.gm, model, example)
        self.output = next(n for n in graph.nodes if n.op == "output")
        result = self.output.args[0]
        if not isinstance(result, fx.Node) or len(shape_of(result) or ()) != 2:
            raise ExportError(
                "model output must be one 2-D tensor of class scores (batch, classes)"
            )
        self.result = result
        self.num_classes = shape_of(result)[1]
        self.order = {n: i for i, n in enumerate(graph.nodes)}
        self.data_nodes = descendants(self.input)
        self.needed = ancestors(result)
        by_node: dict[fx.Node, list[str]] = {}
        for name, node in outputs.items():
            if tracer.module_calls[name] == 1 and name and shape_of(node) is not None:
                by_node.setdefault(node, []).append(name)
        self.candidates = {node: sorted(names, key=lambda s: (s.count("."), len(s), s))
                           for node, names in by_node.items() if len(shape_of(node)) == 4}
        self.multi_called = {n for n, c in tracer.module_calls.items() if c > 1}
        self.model = tracer.root
        self.module_inputs = dict(tracer.module_inputs)
        self.module_outputs = dict(tracer.module_outputs)
        self.blocks = self._token_blocks(tracer)
        self._cuts = None

    def _token_blocks(self, tracer: _RecordingTracer) -> dict[str, TokenBlock]:
        """Pre-norm transformer blocks by name, in graph order: called once, their input
        (B, T, D) read first by a LayerNorm that is a direct child, output shaped alike."""
        blocks = []
        outputs = tracer.module_outputs
        for name, module in tracer.root.named_modules():
            node, out = tracer.module_inputs.get(name), outputs.get(name)
            if not name or tracer.module_calls[name] != 1 or node not in self.order \
                    or out not in self.order:
                continue
            shape = shape_of(node)
            if shape is None or len(shape) != 3 or shape_of(out) != shape:
                continue
            norms = [(f"{name}.{child}", outputs.get(f"{name}.{child}"))
                     for child, sub in module.named_children() if isinstance(sub, nn.LayerNorm)]
            ln1 = next(((child, n) for child, n in norms
                        if n is not None and n.args and n.args[0] is node), None)
            if ln1 is not None:
                blocks.append((name, node, ln1, out))
        if not blocks:
            return {}
        first = min(self.order[node] for _, node, _, _ in blocks)
        maps = [tuple(shape_of(n)[2:]) for n in sorted(self.gm.graph.nodes, key=self.order.get)
                if self.order[n] < first and len(shape_of(n) or ()) == 4]
        found = sorted((self._token_block(*b, maps) for b in blocks),
                       key=lambda b: self.order[b.input])
        return {b.name: b for b in found}

    def _token_block(self, name: str, node: fx.Node, ln1: tuple[str, fx.Node], out: fx.Node,
                     maps: list[tuple[int, int]]) -> TokenBlock:
        """The block with its patch grid: from the last 4-D map before the first block that
        leaves a few leading tokens (the patch embedding), else 1 + a square token count."""
        tokens = shape_of(node)[1]
        grid, prefix, problem = token_grid(tokens, maps)
        return TokenBlock(name, node, ln1[1], out, grid, prefix, problem, ln1[0])

    def f_nodes(self, node: fx.Node) -> set[fx.Node]:
        """The nodes ``f`` computes for a cut at ``node``."""
        return self._f_nodes(node)

    def tail_nodes(self, node: fx.Node) -> list[fx.Node]:
        """The nodes ``g`` computes for a cut at ``node``, in graph order."""
        f_nodes = self._f_nodes(node)
        return [n for n in self.gm.graph.nodes
                if n in self.needed and n not in f_nodes and n.op != "output"]

    def module(self, graph: fx.Graph) -> fx.GraphModule:
        """``graph`` (made of this model's nodes) as a module, unused parts removed."""
        return self._module(graph)

    def _f_nodes(self, node: fx.Node) -> set[fx.Node]:
        return ancestors(node) & self.data_nodes

    def why_invalid(self, node: fx.Node) -> str | None:
        """None for a valid cut, else what crosses it."""
        if node not in self.needed:
            return "the model's output does not depend on it"
        f_nodes = self._f_nodes(node)
        for n in self.needed - f_nodes:
            for a in n.all_input_nodes:
                if a in f_nodes and a is not node and not _is_batch_size_read(n):
                    return f"'{n.name}' after it also reads '{a.name}' from before it (a skip)"
        return None

    @property
    def cuts(self) -> list[Cut]:
        """Valid cuts in graph order: 4-D maps, and the token stream entering each block."""
        if self._cuts is None:
            maps = [self._cut(node) for node in self.candidates if self.why_invalid(node) is None]
            tokens = [self._token_cut(b) for b in self.blocks.values()
                      if self.token_problem(b) is None]
            self._cuts = sorted(maps + tokens, key=lambda c: self.order[c.node])
        return self._cuts

    def _token_cut(self, block: TokenBlock) -> Cut:
        return Cut((block.name,), block.input, shape_of(block.input)[1:], False, block)

    def token_problem(self, block: TokenBlock) -> str | None:
        """Why the stream entering ``block`` cannot be explained, or None."""
        if block.problem is not None:
            return block.problem
        reason = self.why_invalid(block.input)
        if reason is not None:
            return reason
        return self._head_problem

    @functools.cached_property
    def _head_problem(self) -> str | None:
        """Why the head after the last block is not explainable, or None: one check serves
        every block (it runs the head)."""
        return head_problem(self, list(self.blocks.values())[-1])

    def _cut(self, node: fx.Node) -> Cut:
        pooling = node.op == "call_module" and isinstance(
            self.gm.get_submodule(node.target),
            (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
        return Cut(tuple(self.candidates[node]), node, shape_of(node)[1:], pooling)

    def default_cut(self) -> Cut:
        """The last valid cut with a spatial map (h, w > 1), skipping head pooling layers;
        for a vision transformer, the stream entering its last block."""
        spatial = [c for c in self.cuts if c.spatial and not c.is_pooling]
        if not spatial:
            if self.blocks:
                last = list(self.blocks.values())[-1]
                raise ExportError(f"cannot explain the transformer block '{last.name}': "
                                  f"{self.token_problem(last)}")
            raise ExportError("no valid cut with a spatial feature map (h, w > 1) in this model")
        return spatial[-1]

    def find(self, layer: str) -> Cut:
        """The cut for module name ``layer``, or an ExportError listing valid ones near it."""
        for cut in self.cuts:
            if layer in cut.names:
                return cut
        if layer in self.blocks:
            raise ExportError(f"cannot explain the transformer block '{layer}': "
                              f"{self.token_problem(self.blocks[layer])}")
        node = next((n for n, names in self.candidates.items() if layer in names), None)
        if node is not None:
            reason = self.why_invalid(node)
        elif layer in self.multi_called:
            reason = "the module is called more than once, so its output is ambiguous"
        elif layer in dict(self.model.named_modules()) or layer in self._all_module_names():
            reason = ("its output is not a single 4-D feature map, and it is not a transformer "
                      "block (whose input tokens would be the cut)")
        else:
            raise ExportError(f"unknown layer '{layer}' (see --list-layers)")
        near = self._near(node, layer)
        raise ExportError(f"layer '{layer}' is not a valid cut: {reason}; valid cuts near it: "
                          f"{', '.join(near)}")

    def _all_module_names(self) -> set[str]:
        return set(self.multi_called) | {n for names in self.candidates.values() for n in names}

    def _near(self, node: fx.Node | None, layer: str) -> list[str]:
        cuts = self.cuts
        if not cuts:
            return ["none"]
        if node is None:
            prefix = layer.rsplit(".", 1)[0]
            related = [c for c in cuts if any(n.startswith(prefix) for n in c.names)]
            return [c.name for c in (related or cuts)[-5:]]
        pos = self.order[node]
        ranked = sorted(cuts, key=lambda c: abs(self.order[c.node] - pos))[:4]
        return [c.name for c in sorted(ranked, key=lambda c: self.order[c.node])]

    def split(self, cut: Cut) -> Split:
        """``f`` (input → feature), ``g`` (feature → scores) and, after a GAP, ``g_pooled``."""
        x = cut.node
        f_nodes = self._f_nodes(x)
        tail = [n for n in self.gm.graph.nodes
                if n in self.needed and n not in f_nodes and n.op != "output"]
        f_graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        f_all = ancestors(x)
        for n in self.gm.graph.nodes:
            if n in f_all:
                env[n] = f_graph.node_copy(n, lambda a: env[a])
        f_graph.output(env[x])
        f = fx.GraphModule(self.gm, f_graph)

        g_graph = fx.Graph()
        feature = g_graph.placeholder("feature")
        g = self._module(self._copy_tail(g_graph, tail, f_nodes, {x: feature}, feature))

        readers = [u for u in x.users if u in self.needed and not _is_batch_size_read(u)]
        g_pooled = None
        if len(readers) == 1 and _is_gap(self.gm, readers[0], shape_of(x)):
            gap = readers[0]
            p_graph = fx.Graph()
            pooled = p_graph.placeholder("pooled")
            reshaped = p_graph.call_method("reshape", (pooled, (-1, *shape_of(gap)[1:])))
            rest = [n for n in tail if n is not gap]
            p_graph = self._copy_tail(p_graph, rest, f_nodes, {gap: reshaped, x: pooled}, pooled)
            g_pooled = self._module(p_graph)
        return Split(f, g, g_pooled, cut)

    def _copy_tail(self, graph: fx.Graph, tail: list[fx.Node], f_nodes: set[fx.Node],
                   env: dict[fx.Node, fx.Node], batch_source: fx.Node) -> fx.Graph:
        for n in tail:
            env[n] = graph.node_copy(
                n, lambda a: env[a] if a in env else (batch_source if a in f_nodes else env[a]))
        graph.output(env[self.result])
        return graph

    def _module(self, graph: fx.Graph) -> fx.GraphModule:
        gm = fx.GraphModule(self.gm, graph)
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        return gm.eval()


def head_problem(graph: CutGraph, last: TokenBlock) -> str | None:
    """Why the head after the last block ``last`` is not explainable, or None: it must read
    the class token alone (changing the patch tokens leaves the scores unchanged)."""
    g = fx.Graph()
    tokens = g.placeholder("tokens")
    env = {last.output: tokens}
    after = [n for n in graph.tail_nodes(last.output)]
    try:
        copy_nodes(g, after, env, graph.f_nodes(last.output), tokens)
    except KeyError:
        return "the head reads tokens from before the last block"
    g.output(env[graph.result])
    rest = graph.module(g)
    if any(_pools_tokens(n) for n in after):
        return ("the head pools over the tokens (a mean over the token axis), it does not "
                "read the class token")
    count, width = shape_of(last.output)[1:]
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, count, width, generator=generator)
    changed = z.clone()
    changed[:, last.prefix:] = torch.randn(2, count - last.prefix, width, generator=generator)
    with torch.no_grad():
        same = torch.equal(rest(z), rest(changed))
    return None if same else "the head reads the patch tokens, not the class token alone"


def _pools_tokens(node: fx.Node) -> bool:
    """A mean, sum or max over axis 1 of a 3-D tensor (pooling the tokens)."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name not in ("mean", "sum", "amax", "max") or not node.args:
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    shape = shape_of(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    return shape is not None and len(shape) == 3 and any(d % 3 == 1 for d in dims)
