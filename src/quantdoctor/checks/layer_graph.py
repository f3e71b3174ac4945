"""Graph facts behind the per-layer findings (no model is run here): which convolutions
the SOURCE graph follows with a BatchNorm, which model outputs are built by a Concat and from
what, which activation functions quantize poorly, and which layers are depthwise.

>>> bn = source_batchnorm(load_model(config.model), engine.float_model)   # doctest: +SKIP
>>> bn.status["/features/0/Conv"]                                         # doctest: +SKIP
'none'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

from ..quant import LayerInfo
from ..quant.plan import PASSTHROUGH_OPS, WEIGHTED_OPS


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def is_depthwise(model: onnx.ModelProto, layer: LayerInfo) -> bool:
    """A Conv whose group equals its output channels (one filter per channel)."""
    node = next((n for n in model.graph.node if n.name == layer.name), None)
    if node is None or node.op_type != "Conv" or layer.weight is None:
        return False
    w = next((i for i in model.graph.initializer if i.name == layer.weight), None)
    group = _attr(node, "group", 1)
    return w is not None and group > 1 and group == w.dims[0]


# --- BatchNorm in the source graph -------------------------------------------------------------


@dataclass
class SourceBatchNorm:
    """Per Conv layer of the cleaned graph, what the source graph (before quantdoctor's own
    BatchNorm folding) says about its BatchNorm:

    - ``batchnorm``: a BatchNormalization follows it;
    - ``folded``: none follows it, but its weight is a constant the exporter computed
      (PyTorch names those ``onnx::Conv_N``; it does so when it folds a BatchNorm);
    - ``none``: none follows it and its weight is a trained parameter as is (a PyTorch name
      such as ``features.0.weight``), or the graph has BatchNorms elsewhere;
    - ``unknown``: the graph cannot tell (another exporter's naming; not matched)."""

    source_has_batchnorm: bool
    status: dict[str, str] = field(default_factory=dict)
    source_names: dict[str, str] = field(default_factory=dict)
    source_weights: dict[str, str] = field(default_factory=dict)


def _status(followed: bool, weight: str, graph_has_bn: bool) -> str:
    if followed:
        return "batchnorm"
    if weight.startswith("onnx::"):
        return "folded"
    if graph_has_bn or weight.endswith(".weight"):
        return "none"
    return "unknown"


def source_batchnorm(source: onnx.ModelProto, cleaned: onnx.ModelProto) -> SourceBatchNorm:
    """Match each Conv of ``cleaned`` (BatchNorm folded, maybe renamed by onnxslim) with its
    Conv in ``source`` (by output tensor: a folded Conv takes over its BatchNorm's output;
    then by node name; then by input tensor and order) and classify it (see
    :class:`SourceBatchNorm`)."""
    cons = consumers(source)
    src_convs = [n for n in source.graph.node if n.op_type == "Conv"]
    has_bn = any(n.op_type == "BatchNormalization" for n in source.graph.node)
    by_output: dict[str, tuple[onnx.NodeProto, bool]] = {}
    by_name: dict[str, tuple[onnx.NodeProto, bool]] = {}
    by_input: dict[str, list[tuple[onnx.NodeProto, bool]]] = {}
    for conv in src_convs:
        users = cons.get(conv.output[0], [])
        bn = len(users) == 1 and users[0].op_type == "BatchNormalization"
        entry = (conv, bn)
        by_output[users[0].output[0] if bn else conv.output[0]] = entry
        if conv.name:
            by_name[conv.name] = entry
        by_input.setdefault(conv.input[0], []).append(entry)
    result = SourceBatchNorm(has_bn)
    used: set[int] = set()
    for node in cleaned.graph.node:
        if node.op_type != "Conv":
            continue
        entry = by_output.get(node.output[0]) or by_name.get(node.name)
        if entry is None or id(entry[0]) in used:
            entry = next((e for e in by_input.get(node.input[0], []) if id(e[0]) not in used), None)
        if entry is None:
            result.status[node.name] = "unknown"
            continue
        conv, followed = entry
        used.add(id(conv))
        weight = conv.input[1] if len(conv.input) > 1 else ""
        result.status[node.name] = _status(followed, weight, has_bn)
        result.source_names[node.name] = conv.name
        result.source_weights[node.name] = weight
    return result


def output_layers(model: onnx.ModelProto, layers: Iterable[LayerInfo]) -> set[str]:
    """Weighted layers with no weighted layer downstream: the prediction layers (a detection
    head's last convolutions, a classifier), which carry no BatchNorm by design."""
    cons = consumers(model)
    by_name = {n.name: n for n in model.graph.node}
    out = set()
    for layer in layers:
        node = by_name.get(layer.name)
        if node is None or layer.weight is None:
            continue
        todo, seen, weighted_after = list(node.output), set(), False
        while todo and not weighted_after:
            t = todo.pop()
            for user in cons.get(t, []):
                if user.op_type in WEIGHTED_OPS:
                    weighted_after = True
                    break
                for o in user.output:
                    if o not in seen:
                        seen.add(o)
                        todo.append(o)
        if not weighted_after:
            out.add(layer.name)
    return out


# --- concatenated outputs ----------------------------------------------------------------------


@dataclass
class ConcatTree:
    """A model output assembled by Concat nodes (through passthrough ops) from ``leaves``."""

    output: str
    concats: list[str]  # node names of the Concat nodes, outermost first
    leaves: list[str]  # tensors joined, in output order


def concat_trees(model: onnx.ModelProto) -> list[ConcatTree]:
    """Model outputs produced by a Concat, looking back through passthrough ops (Reshape,
    Transpose …) and nested Concats; the leaves are the first tensors produced by anything
    else."""
    prod = producers(model)
    inits = {i.name for i in model.graph.initializer}
    trees = []
    for out in model.graph.output:
        concats: list[str] = []
        leaves: list[str] = []
        todo = [out.name]
        while todo:  # depth first, inputs in order: leaves come out in output order
            t = todo.pop()
            node = prod.get(t)
            if node is not None and node.op_type == "Concat":
                concats.append(node.name)
                todo.extend(reversed([i for i in node.input if i and i not in inits]))
            elif node is not None and node.op_type in PASSTHROUGH_OPS:
                todo.append(node.input[0])  # a Reshape/Transpose keeps values and range
            else:
                leaves.append(t)
        if concats and len(leaves) >= 2:
            trees.append(ConcatTree(out.name, concats, leaves))
    return trees


# --- activation functions ----------------------------------------------------------------------

#: Activation functions that quantize poorly, and why (what the finding tells the user).
POOR_ACTIVATIONS = {
    "SiLU/Swish": "x·sigmoid(x): in a graph it is a Sigmoid and a Mul, each quantized, and its "
    "input keeps a long negative range; accelerators approximate it with a lookup table",
    "HardSwish": "x·relu6(x+3)/6: non-monotonic with a narrow negative lobe",
    "Mish": "x·tanh(softplus(x)): three quantized steps for one activation",
    "GELU": "x·Φ(x) (erf or tanh form): several quantized steps, non-monotonic",
    "Softplus": "log(1+eˣ): unbounded, with a soft knee that 8 bits resolve poorly",
    "Exp": "eˣ: an exponential range that a uniform 8-bit grid resolves poorly",
    "Elu/Selu/Celu": "exponential negative branch: approximated on integer hardware",
}


@dataclass
class ActivationUse:
    """One activation function found in the graph."""

    kind: str
    nodes: list[str]  # the graph nodes that make it up
    input: str  # the tensor it is applied to
    output: str  # the tensor it produces


def activation_functions(model: onnx.ModelProto) -> list[ActivationUse]:
    """Find the activations of :data:`POOR_ACTIVATIONS`, whether a single op (HardSwish,
    Gelu, Softplus, Elu …) or a pattern (Mul(x, Sigmoid(x)), Mul(x, Tanh(Softplus(x))), the
    erf/tanh forms of GELU)."""
    prod = producers(model)
    cons = consumers(model)
    found: list[ActivationUse] = []
    claimed: set[str] = set()

    def add(kind: str, nodes: list[onnx.NodeProto], inp: str, out: str) -> None:
        names = [n.name for n in nodes]
        if any(n in claimed for n in names):
            return
        claimed.update(names)
        found.append(ActivationUse(kind, names, inp, out))

    for node in model.graph.node:
        op = node.op_type
        if op == "Mul" and len(node.input) == 2:
            a, b = node.input
            for x, g in ((a, b), (b, a)):
                gate = prod.get(g)
                if gate is None:
                    continue
                if gate.op_type in ("Sigmoid", "HardSigmoid") and gate.input[0] == x:
                    kind = "SiLU/Swish" if gate.op_type == "Sigmoid" else "HardSwish"
                    add(kind, [gate, node], x, node.output[0])
                    break
                if gate.op_type == "Tanh":
                    sp = prod.get(gate.input[0])
                    if sp is not None and sp.op_type == "Softplus" and sp.input[0] == x:
                        add("Mish", [sp, gate, node], x, node.output[0])
                        break
        elif op in ("HardSwish", "Gelu", "Softplus", "Exp", "Elu", "Selu", "Celu", "Mish"):
            kind = {"Gelu": "GELU", "Elu": "Elu/Selu/Celu", "Selu": "Elu/Selu/Celu"}.get(op, op)
            kind = "Elu/Selu/Celu" if op == "Celu" else kind
            if op == "Exp" and any(u.op_type == "Softmax" for u in cons.get(node.output[0], [])):
                continue
            add(kind, [node], node.input[0], node.output[0])
        elif op == "Erf":
            # GELU, erf form: 0.5·x·(1 + erf(x/√2)): report from the Erf to the final Mul
            out, nodes = node.output[0], [node]
            for _ in range(3):
                users = cons.get(out, [])
                if len(users) != 1 or users[0].op_type not in ("Add", "Mul"):
                    break
                nodes.append(users[0])
                out = users[0].output[0]
            div = prod.get(node.input[0])
            x = div.input[0] if div is not None and div.op_type in ("Div", "Mul") else node.input[0]
            add("GELU", nodes, x, out)
    return found
