"""Cross-layer equalization (CLE) of a float ONNX model: a pure graph transform, no model run.

After Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction" (DFQ), section 4.1. Two layers joined by a positive-homogeneous activation,
``y = W2 · f(W1 x + b1) + b2``, compute the same function when output channel ``i`` of the
first layer (weights and bias) is divided by ``s_i > 0`` and input channel ``i`` of the
second is multiplied by ``s_i``, because ``f(x / s) = f(x) / s``. DFQ chooses
``s_i = sqrt(r1_i * r2_i) / r2_i`` (``r1_i``: max |w| of the first layer's output channel
``i``, ``r2_i``: max |w| of the second's input channel ``i``), so that both channels end up
with the range ``sqrt(r1_i * r2_i)``: the per-channel weight ranges even out and per-tensor
weight quantization (the ``hailo8`` profile) stops flushing the small channels to zero.
Channels with a (near) zero range keep ``s_i = 1``. Layers that belong to two pairs (the
depthwise Conv of conv → dw → pw) are balanced by sweeping over all pairs until the scales
converge (``max |log s| < 1e-3``) or ``iterations`` sweeps are done.

Pairs: a Conv or Gemm whose output feeds exactly one consumer chain, optionally through one
activation among Relu, LeakyRelu, PRelu and ReLU6 (Clip with min 0), into the data input
(input 0) of a second Conv or Gemm. Supported: Conv(group=1) → Conv(group=1), depthwise
Conv (group == in channels == out channels) → Conv(group=1), Conv(group=1) → depthwise
Conv (its per-channel weight is scaled), Gemm → Gemm (``transB`` decides the channel axis;
a second Gemm with ``transA`` is not a pair). Everything else is listed in
:attr:`EqualizationResult.skipped` with the reason. Weights shared with other nodes are
copied first, so that only the pair's own layers change.

ReLU6 and its upper bound
    ``clip(x / s, 0, 6)`` is not ``clip(x, 0, 6) / s``: the lower bound 0 commutes with the
    scaling, the upper bound does not. To stay exactly float-equivalent the bound of channel
    ``i`` must become ``6 / s_i``, a different value per channel, and ONNX's Clip takes only
    scalar bounds. So a Clip(0, M) between an equalized pair is replaced by ``Relu`` followed
    by ``Min(x, bound)`` with a per-channel ``bound`` initializer of shape ``[1, C, 1, 1]``
    (``[C]`` after a Gemm) holding ``M / s_i``; ``min(max(x, 0), M / s_i)`` equals
    ``clip(x, 0, M) / s_i`` for every x. The Min keeps the Clip's output name, and
    :func:`~quantdoctor.quant.plan.find_layers` folds Relu → Min(constant) into the layer as
    one fused activation (``"Relu+Min"``), so the quantized graph still has no quantizer
    between the layer and its ReLU6. A Relu → Min(constant) found in the input (from an
    earlier equalization, or a ReLU6 exported that way) is treated the same way: its bound
    is divided by the new scales. A Clip whose pair ends with all scales exactly 1 is left
    as it is. Relu, LeakyRelu, PRelu and Clip(0, no max) commute with any positive scaling
    and stay unchanged. Note for integer kernels: ONNX Runtime does not fuse the Min into
    its quantized Conv, so such a layer runs in float in the ``int8`` context.

>>> result = equalize(clean_model(load_model(path)))  # doctest: +SKIP
>>> [(p.first, p.range_ratio_before, p.range_ratio_after) for p in result.pairs]  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Layers that can be either side of a pair.
LAYER_OPS = ("Conv", "Gemm")
#: Activations f with f(x / s) = f(x) / s for s > 0 (Clip: with min 0, see the module doc).
HOMOGENEOUS_OPS = ("Relu", "LeakyRelu", "PRelu", "Clip")
#: Scales within this of 1 (in log) end the sweeps.
CONVERGED_LOG_SCALE = 1e-3
#: A channel whose range is below this fraction of its layer's largest range keeps s = 1.
ZERO_RANGE = 1e-8


@dataclass(frozen=True)
class Pair:
    """Two layers that can be equalized, and the activation between them."""

    first: str
    second: str
    activation: str | None  # op of the activation: Relu, LeakyRelu, PRelu, Clip, Relu+Min
    channels: int
    activation_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EqualizedPair:
    """One equalized pair, for the report."""

    first: str
    second: str
    activation: str | None
    channels: int
    range_ratio_before: float  # max/median over channels of the first layer's channel ranges
    range_ratio_after: float


@dataclass
class EqualizationResult:
    """The equalized copy of the model, its pairs and the layers left alone (node, reason)."""

    model: onnx.ModelProto
    pairs: list[EqualizedPair] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --- the graph ------------------------------------------------------------------------------
class _Graph:
    """Look-ups over one graph: nodes by name, consumers, producers and constants."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.nodes = {n.name: n for n in g.node}
        graph_inputs = {i.name for i in g.input}
        self.inits = {i.name: i for i in g.initializer if i.name not in graph_inputs}
        self.outputs = {o.name for o in g.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.constant_nodes = {
            n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output
        }

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.constant_nodes.get(name)
        if node is None:
            return None
        attr = next((a for a in node.attribute if a.name in ("value", "value_float")), None)
        if attr is None:
            return None
        if attr.name == "value_float":
            return np.asarray(attr.f, np.float32)
        return numpy_helper.to_array(attr.t)

    def users(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --- layers: which axis of which initializer is a channel -------------------------------------
@dataclass(frozen=True)
class _Layer:
    """A Conv or Gemm with constant weights: where its output and input channels are."""

    node: onnx.NodeProto
    weight: str
    bias: str | None
    out_axis: int  # output-channel axis of the weight
    in_axis: int | None  # input-channel axis of the weight; None: not usable as a second layer
    rank: int  # rank of the layer's output tensor
    out_channels: int
    in_channels: int | None

    @property
    def name(self) -> str:
        return self.node.name


def _layer(g: _Graph, node: onnx.NodeProto) -> _Layer | str:
    """The layer view of a Conv/Gemm node, or why it cannot be equalized."""
    if node.op_type not in LAYER_OPS:
        return f"{node.op_type} is not a Conv/Gemm"
    if len(node.input) < 2 or node.input[1] not in g.inits:
        return f"the weight of {node.op_type} {node.name} is not a constant initializer"
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias not in g.inits:
        return f"the bias of {node.op_type} {node.name} is not a constant initializer"
    w = numpy_helper.to_array(g.inits[node.input[1]])
    if w.dtype.kind != "f":
        return f"the weight of {node.name} is not float"
    if node.op_type == "Gemm":
        if w.ndim != 2:
            return f"the weight of Gemm {node.name} is not 2-D"
        trans_b = bool(_attr(node, "transB", 0))
        out_axis = 0 if trans_b else 1
        in_axis = None if _attr(node, "transA", 0) else 1 - out_axis
        c_in = None if in_axis is None else w.shape[in_axis]
        return _Layer(node, node.input[1], bias, out_axis, in_axis, 2, w.shape[out_axis], c_in)
    group = int(_attr(node, "group", 1))  # type: ignore[arg-type]
    if group == 1:
        return _Layer(node, node.input[1], bias, 0, 1, w.ndim, w.shape[0], w.shape[1])
    if group == w.shape[0] and w.shape[1] == 1:  # depthwise: in = out channels
        return _Layer(node, node.input[1], bias, 0, 0, w.ndim, group, group)
    return f"{node.name} is a grouped Conv (group={group}), not supported"


# --- activations ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Activation:
    """The activation between a pair: its nodes, output and (ReLU6) upper bound."""

    op: str  # Relu, LeakyRelu, PRelu, Clip or Relu+Min
    nodes: tuple[onnx.NodeProto, ...]
    output: str
    bound: float | np.ndarray | None = None  # Clip's max (scalar) or the Min's constant


def _clip_bounds(g: _Graph, node: onnx.NodeProto) -> tuple[float | None, float | None] | None:
    """Clip's (min, max) as floats (None: absent), from attributes (opset < 11) or constant
    inputs; None when an input bound is not a constant."""
    if len(node.input) == 1 and any(a.name in ("min", "max") for a in node.attribute):
        lo, hi = _attr(node, "min"), _attr(node, "max")
        return (None if lo is None else float(lo), None if hi is None else float(hi))  # type: ignore[arg-type]
    values: list[float | None] = []
    for k in (1, 2):
        if len(node.input) <= k or not node.input[k]:
            values.append(None)
            continue
        v = g.constant(node.input[k])
        if v is None or v.size != 1:
            return None
        values.append(float(v.reshape(-1)[0]))
    return values[0], values[1]


def _clip_activation(g: _Graph, node: onnx.NodeProto) -> _Activation | str:
    bounds = _clip_bounds(g, node)
    if bounds is None:
        return f"Clip {node.name} has bounds that are not constants"
    lo, hi = bounds
    if lo is None or lo != 0.0:
        return f"Clip {node.name} has min {lo}, not 0: not positive-homogeneous"
    if hi is not None and hi <= 0:
        return f"Clip {node.name} has max {hi} <= 0"
    bound = None if hi is None or not np.isfinite(hi) or hi >= 3.4e38 else hi
    return _Activation("Clip", (node,), node.output[0], bound)


def _relu_min(g: _Graph, relu: onnx.NodeProto) -> _Activation | None:
    """Relu → Min(constant) (an equalized ReLU6) as one activation, else None."""
    out = relu.output[0]
    users = g.users(out)
    if out in g.outputs or len(users) != 1 or users[0].op_type != "Min":
        return None
    m = users[0]
    others = [i for i in m.input if i != out]
    if len(m.input) != 2 or len(others) != 1 or others[0] not in g.inits:
        return None
    bound = numpy_helper.to_array(g.inits[others[0]]).astype(np.float64)
    return _Activation("Relu+Min", (relu, m), m.output[0], bound)


def _activation(g: _Graph, node: onnx.NodeProto) -> _Activation | str:
    if node.op_type == "Clip":
        return _clip_activation(g, node)
    if node.op_type == "Relu":
        return _relu_min(g, node) or _Activation("Relu", (node,), node.output[0])
    return _Activation(node.op_type, (node,), node.output[0])


# --- finding pairs --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Candidate:
    first: _Layer
    second: _Layer
    activation: _Activation | None

    @property
    def pair(self) -> Pair:
        act = self.activation
        return Pair(
            self.first.name,
            self.second.name,
            act.op if act else None,
            self.first.out_channels,
            tuple(n.name for n in act.nodes) if act else (),
        )


def _single_user(g: _Graph, tensor: str, owner: str) -> onnx.NodeProto | str:
    if tensor in g.outputs:
        return f"the output of {owner} is a graph output"
    users = g.users(tensor)
    if len(users) != 1:
        names = ", ".join(f"{u.op_type} {u.name}" for u in users) or "nothing"
        return f"the output of {owner} has {len(users)} consumers ({names})"
    return users[0]


def _follow(g: _Graph, first: _Layer) -> _Candidate | str:
    """The pair that starts at ``first``, or why there is none."""
    user = _single_user(g, first.node.output[0], first.name)
    if isinstance(user, str):
        return user
    act: _Activation | None = None
    if user.op_type in HOMOGENEOUS_OPS:
        found = _activation(g, user)
        if isinstance(found, str):
            return found
        act = found
        user = _single_user(g, act.output, act.nodes[-1].name)
        if isinstance(user, str):
            return user
    if user.op_type not in LAYER_OPS:
        return (
            f"the output of {first.name} feeds {user.op_type} {user.name}, not a Conv/Gemm "
            "(through at most one Relu/ReLU6/LeakyRelu/PRelu)"
        )
    return _second(g, first, user, act)


def _second(
    g: _Graph, first: _Layer, node: onnx.NodeProto, act: _Activation | None
) -> _Candidate | str:
    tensor = act.output if act else first.node.output[0]
    if node.input[0] != tensor or list(node.input).count(tensor) != 1:
        return f"the output of {first.name} is not only the data input of {node.name}"
    second = _layer(g, node)
    if isinstance(second, str):
        return second
    if second.in_axis is None:
        return f"Gemm {node.name} has transA=1: its input channels are not the reduced axis"
    if first.node.op_type != node.op_type:
        return f"{first.node.op_type} → {node.op_type} is not supported"
    c1, c2 = first.out_channels, second.in_channels
    if c1 != c2:
        return f"{first.name} has {c1} output channels but {node.name} takes {c2}"
    if act is not None and act.bound is not None and not _bound_fits(act.bound, c1, first.rank):
        return f"the Min bound after {first.name} is not per-tensor or per-channel"
    return _Candidate(first, second, act)


def _bound_fits(bound: float | np.ndarray, channels: int, rank: int) -> bool:
    """Whether a Min constant is a scalar or a per-channel [1, C, 1, ...] / [C] (Gemm) one."""
    b = np.asarray(bound)
    if b.size == 1:
        return True
    if b.ndim > rank or b.size != channels:
        return False
    padded = (1,) * (rank - b.ndim) + b.shape
    return padded[1 if rank > 2 else -1] == channels


def _matches(names: Sequence[str], patterns: Sequence[str] | None) -> bool:
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def _scan(
    g: _Graph, patterns: Sequence[str] | None
) -> tuple[list[_Candidate], list[tuple[str, str]]]:
    """All pairs (matching ``patterns``) and the Conv/Gemm layers that start none."""
    pairs: list[_Candidate] = []
    skipped: list[tuple[str, str]] = []
    for node in g.model.graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        first = _layer(g, node)
        found = _follow(g, first) if isinstance(first, _Layer) else first
        if isinstance(found, str):
            if _matches([node.name], patterns):
                skipped.append((node.name, found))
        elif _matches([found.first.name, found.second.name], patterns):
            pairs.append(found)
    return pairs, skipped


def find_pairs(model: onnx.ModelProto, patterns: Sequence[str] | None = None) -> list[Pair]:
    """The equalizable pairs of a cleaned float model, in graph order. ``patterns`` (fnmatch
    on node names; None: all) keeps the pairs where either layer matches."""
    return [c.pair for c in _scan(_Graph(model), patterns)[0]]


# --- equalization ---------------------------------------------------------------------------
def _channel_ranges(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| per slice along ``axis``."""
    return np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)


def _along(s: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return s.reshape(shape)


def _scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """DFQ's s = sqrt(r1 r2) / r2, and 1 where either range is (near) zero."""
    ok = (r1 > ZERO_RANGE * r1.max(initial=0.0)) & (r2 > ZERO_RANGE * r2.max(initial=0.0))
    ok &= (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    return s


def _range_ratio(r: np.ndarray) -> float:
    median = float(np.median(r))
    return float(r.max()) / median if median > 0 else float("inf")


class _Equalizer:
    """float64 working copies of the weights, biases and bounds that the pairs touch."""

    def __init__(self, g: _Graph, pairs: list[_Candidate]) -> None:
        self.g = g
        self.pairs = pairs
        self.arrays: dict[str, np.ndarray] = {}
        self.bounds: dict[str, np.ndarray] = {}  # per activation (last node name): [C]
        for p in pairs:
            for name in (p.first.weight, p.first.bias, p.second.weight):
                if name is not None and name not in self.arrays:
                    self.arrays[name] = numpy_helper.to_array(g.inits[name]).astype(np.float64)
            act = p.activation
            if act is not None and act.bound is not None:
                c = p.first.out_channels
                self.bounds[act.nodes[-1].name] = np.broadcast_to(
                    np.asarray(act.bound, np.float64).reshape(-1), (c,)
                ).copy()
        self.changed: set[str] = set()  # activations whose bound changed

    def ranges(self, p: _Candidate) -> tuple[np.ndarray, np.ndarray]:
        r1 = _channel_ranges(self.arrays[p.first.weight], p.first.out_axis)
        r2 = _channel_ranges(self.arrays[p.second.weight], p.second.in_axis)  # type: ignore[arg-type]
        return r1, r2

    def apply(self, p: _Candidate, s: np.ndarray) -> None:
        w1, w2 = self.arrays[p.first.weight], self.arrays[p.second.weight]
        self.arrays[p.first.weight] = w1 / _along(s, p.first.out_axis, w1.ndim)
        self.arrays[p.second.weight] = w2 * _along(s, p.second.in_axis, w2.ndim)  # type: ignore[arg-type]
        if p.first.bias is not None:
            self.arrays[p.first.bias] = _scale_bias(self.arrays[p.first.bias], s)
        act = p.activation
        if act is not None and act.bound is not None and not np.all(s == 1.0):
            self.bounds[act.nodes[-1].name] /= s
            self.changed.add(act.nodes[-1].name)

    def run(self, iterations: int) -> None:
        for _ in range(iterations):
            worst = 0.0
            for p in self.pairs:
                s = _scales(*self.ranges(p))
                self.apply(p, s)
                worst = max(worst, float(np.abs(np.log(s)).max(initial=0.0)))
            if worst < CONVERGED_LOG_SCALE:
                break


def _scale_bias(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Bias / s per channel: a Conv bias [C]; a Gemm C broadcast along its last axis (a scalar
    C becomes [C])."""
    if b.size == 1 and s.size > 1:
        b = np.full(s.shape, float(b.reshape(-1)[0]))
    return b / s


# --- writing the result back ----------------------------------------------------------------
def _privatize(g: _Graph, pairs: list[_Candidate]) -> bool:
    """Give each pair layer its own weight and bias initializers where they are shared with
    other nodes (or other inputs), so that equalizing one layer changes no other. Returns
    whether anything was copied (the look-ups are then stale)."""
    uses: dict[str, int] = {}
    for n in g.model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    taken = _taken_names(g)
    copied = False
    layers = {layer.name: layer.node for p in pairs for layer in (p.first, p.second)}
    for node in layers.values():
        for k in range(1, min(len(node.input), 3)):
            name = node.input[k]
            if not name or uses.get(name, 0) <= 1:
                continue
            init = onnx.TensorProto()
            init.CopyFrom(g.inits[name])
            init.name = _unique(f"{node.name}__{name}", taken)
            g.model.graph.initializer.append(init)
            node.input[k] = init.name
            uses[name] -= 1
            copied = True
    return copied


def _taken_names(g: _Graph) -> set[str]:
    nodes = g.model.graph.node
    names = set(g.inits) | {n.name for n in nodes} | {o for n in nodes for o in n.output}
    return names | {i.name for i in g.model.graph.input} | g.outputs


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _write_arrays(g: _Graph, arrays: dict[str, np.ndarray]) -> None:
    for name, a in arrays.items():
        old = g.inits[name]
        dtype = helper.tensor_dtype_to_np_dtype(old.data_type)
        old.CopyFrom(numpy_helper.from_array(a.astype(dtype), name))


def _bound_init(p: _Candidate, bound: np.ndarray, name: str) -> onnx.TensorProto:
    """The per-channel bound as [1, C, 1, 1] (Conv; [1, C, 1] for Conv1d …) or [C] (Gemm)."""
    rank = p.first.rank
    shape = [bound.size] if rank == 2 else [1, bound.size] + [1] * (rank - 2)
    return numpy_helper.from_array(bound.reshape(shape).astype(np.float32), name)


def _relu_min_nodes(clip: onnx.NodeProto, bound: str, taken: set[str]) -> list[onnx.NodeProto]:
    """Relu → Min(bound) in place of Clip(0, M); the Min keeps the Clip's output name."""
    relu_out = _unique(f"{clip.output[0]}__relu", taken)
    relu = helper.make_node(
        "Relu", [clip.input[0]], [relu_out], name=_unique(f"{clip.name}/Relu", taken)
    )
    mn = helper.make_node(
        "Min", [relu_out, bound], [clip.output[0]], name=_unique(f"{clip.name}/Min", taken)
    )
    return [relu, mn]


def _write_bounds(g: _Graph, eq: _Equalizer) -> None:
    """Per-channel ReLU6 bounds: a new bound initializer for each changed activation; a Clip
    becomes Relu → Min, an existing Min gets the new initializer."""
    graph = g.model.graph
    taken = _taken_names(g)
    replace: dict[str, list[onnx.NodeProto]] = {}
    old_inputs: set[str] = set()
    for p in eq.pairs:
        act = p.activation
        if act is None or act.nodes[-1].name not in eq.changed:
            continue
        last = act.nodes[-1]
        name = _unique(f"{last.name}__bound", taken)
        graph.initializer.append(_bound_init(p, eq.bounds[last.name], name))
        if act.op == "Relu+Min":
            k = 1 if last.input[0] == act.nodes[0].output[0] else 0
            old_inputs.add(last.input[k])
            last.input[k] = name
        else:
            old_inputs |= {i for i in last.input[1:] if i}
            replace[last.name] = _relu_min_nodes(last, name, taken)
    if replace:
        nodes = [m for n in graph.node for m in replace.get(n.name, [_copy(n)])]
        del graph.node[:]
        graph.node.extend(nodes)
    _drop_unused(g.model, old_inputs)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _drop_unused(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the initializers and Constant nodes among ``candidates`` that nothing uses."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    unused = candidates - used
    for init in [i for i in g.initializer if i.name in unused]:
        g.initializer.remove(init)
    for node in [n for n in g.node if n.op_type == "Constant" and n.output[0] in unused]:
        g.node.remove(node)


def equalize(
    model: onnx.ModelProto, patterns: Sequence[str] | None = None, iterations: int = 20
) -> EqualizationResult:
    """Cross-layer equalization of a cleaned float model (BatchNorm folded, unique node
    names): an equivalent copy with balanced per-channel weight ranges. ``patterns``
    (fnmatch on node names; None: all) keeps the pairs where either layer matches; the model
    given is not changed."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = _Graph(work)
    candidates, skipped = _scan(g, patterns)
    if _privatize(g, candidates):
        g = _Graph(work)
        candidates, skipped = _scan(g, patterns)
    eq = _Equalizer(g, candidates)
    before = [_first_ranges(eq, p) for p in candidates]
    eq.run(iterations)
    pairs = [
        EqualizedPair(
            p.first.name,
            p.second.name,
            p.activation.op if p.activation else None,
            p.first.out_channels,
            _range_ratio(r),
            _range_ratio(_first_ranges(eq, p)),
        )
        for p, r in zip(candidates, before, strict=True)
    ]
    _write_arrays(g, eq.arrays)
    _write_bounds(g, eq)
    return EqualizationResult(work, pairs, skipped)


def _first_ranges(eq: _Equalizer, p: _Candidate) -> np.ndarray:
    return _channel_ranges(eq.arrays[p.first.weight], p.first.out_axis)
