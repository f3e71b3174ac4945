"""The start-node cut (DESIGN §2: the model "optionally cut at start_nodes"): the graph from
the tensor where the accelerator's part begins; everything before it is left to the host,
whose work ``preprocess`` describes. No model is executed here.

Semantics, as Hailo's parser's ``start_node_names``: a start node is a node that stays on the
accelerator, and its data input (the input that is not a weight or a constant) becomes the
cut model's input; a name that is a tensor and not a node is that input itself.

>>> cut = cut_start_nodes(model, ["/stem/Conv"])                    # doctest: +SKIP
>>> cut.tensor, cut.removed_ops                                     # doctest: +SKIP
('/Div_output_0', ('Sub', 'Div'))
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ConfigError
from .model import TensorInfo, check_input_matches, inspect_model
from .transforms import resolve_tensor_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartCut:
    """The accelerator's graph after a start-node cut, and what the host now does instead."""

    model: onnx.ModelProto
    #: ``start_nodes`` as configured
    names: tuple[str, ...]
    #: the cut model's input: the full graph's tensor where the accelerator's part begins
    tensor: str
    #: the nodes left to the host (the cut-off part), in graph order, and their op types
    removed: tuple[str, ...]
    removed_ops: tuple[str, ...]


def close_names(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """The candidates that look most like ``name`` (a typo, another exporter's prefix)."""
    return difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=n, cutoff=0.4)


def _constants(model: onnx.ModelProto) -> set[str]:
    """Tensors that are weights: initializers and the outputs of Constant nodes."""
    out = {i.name for i in model.graph.initializer}
    out |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return out


def _unknown_name(name: str, model: onnx.ModelProto) -> ConfigError:
    g = model.graph
    names = [n.name for n in g.node] + [o for n in g.node for o in n.output]
    near = close_names(name, names)
    hint = (
        f"close names: {', '.join(repr(c) for c in near)}"
        if near
        else "the graph's first nodes are " + ", ".join(repr(n.name) for n in g.node[:5])
    )
    return ConfigError(
        f"start_nodes: {name!r} is neither a node nor a tensor of the model ({hint}); use the "
        "name of the node where the accelerator's graph begins, as Netron shows it"
    )


def start_tensors(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """The tensors the start nodes read (a node: its data inputs; a tensor: itself), each once.

    A node name wins over an equal tensor name: start_nodes name nodes first (Hailo)."""
    g = model.graph
    constants = _constants(model)
    by_node = {n.name: n for n in g.node}
    tensors = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    out: list[str] = []
    for name in names:
        if name in by_node:
            data = [i for i in by_node[name].input if i and i not in constants]
            if not data:
                raise ConfigError(
                    f"start_nodes: node {name!r} ({by_node[name].op_type}) reads only constants, "
                    "so nothing would enter the accelerator there; start at the node that reads "
                    "the image"
                )
            out.extend(data)
        elif name in tensors and name not in constants:
            out.append(name)
        elif name in constants:
            raise ConfigError(
                f"start_nodes: {name!r} is a weight (a constant tensor), not where the image "
                "enters; name the node that reads the image, as Netron shows it"
            )
        else:
            raise _unknown_name(name, model)
    return list(dict.fromkeys(out))


def _needed(
    model: onnx.ModelProto, outputs: Sequence[str], stop: str
) -> tuple[list[int], set[str]]:
    """Indices of the nodes that ``outputs`` need when ``stop`` is given (graph order), and
    the tensors they read that nothing among them produces (besides ``stop``)."""
    g = model.graph
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    keep: set[int] = set()
    todo = [t for t in outputs if t != stop]
    seen: set[str] = set()
    while todo:
        tensor = todo.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        k = producer.get(tensor)
        if k is None or k in keep:
            continue
        keep.add(k)
        todo.extend(i for i in g.node[k].input if i and i != stop)
    produced = {o for k in keep for o in g.node[k].output}
    inits = {i.name for i in g.initializer}
    read = {i for k in keep for i in g.node[k].input if i}
    dangling = read - produced - inits - {stop}
    return sorted(keep), dangling


def _downstream(model: onnx.ModelProto, sources: Sequence[str]) -> set[str]:
    """Every tensor computed (directly or not) from ``sources``."""
    reached = set(sources)
    for node in model.graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if any(i in reached for i in node.input):
            reached.update(node.output)
    return reached


def _upstream_nodes(model: onnx.ModelProto, tensor: str) -> list[int]:
    """Indices of the nodes that ``tensor`` is computed from (the cut-off part)."""
    keep, _ = _needed(model, [tensor], stop="")
    return keep


def _value_info(model: onnx.ModelProto, names: set[str]) -> dict[str, onnx.ValueInfoProto]:
    """Declared or inferred types and shapes of ``names`` (inference failing is not fatal:
    the cut's input is then refused as not image-shaped, with its reason)."""
    g = model.graph
    out = {v.name: v for v in list(g.input) + list(g.output) + list(g.value_info)}
    if names - set(out):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for v in inferred.graph.value_info:
                out.setdefault(v.name, v)
        except Exception as err:  # exotic ops: the declared information is all there is
            log.info("shape inference failed: %s", err)
    return {n: out[n] for n in names if n in out}


def cut_start_nodes(
    model: onnx.ModelProto, start_nodes: Sequence[str], end_nodes: Sequence[str] = ()
) -> StartCut:
    """The subgraph from the start nodes' input to the model outputs (or to ``end_nodes``,
    whose tensors then become the outputs). Refused in one sentence: a name that is not in
    the graph, a cut with more than one input, a start after the end."""
    names = tuple(start_nodes)
    starts = start_tensors(model, names)
    if len(starts) > 1:
        raise ConfigError(
            f"start_nodes {list(names)} give the accelerator's graph {len(starts)} inputs "
            f"({', '.join(starts)}); quantdoctor feeds one image input: name the one node "
            "(or tensor) where the image enters"
        )
    start = starts[0]
    g = model.graph
    outputs = (
        resolve_tensor_names(model, end_nodes) if end_nodes else [o.name for o in g.output]
    )
    keep, dangling = _needed(model, outputs, start)
    reads_start = start in outputs or any(start in g.node[k].input for k in keep)
    if not reads_start:
        if end_nodes and start in _downstream(model, outputs):
            raise ConfigError(
                f"start_nodes {list(names)} come after end_nodes {list(end_nodes)}: the "
                "accelerator's graph would be empty; the start must lie before the end"
            )
        raise ConfigError(
            f"start_nodes {list(names)}: no model output is computed from tensor {start!r}; "
            "start at a node that the outputs depend on"
        )
    if dangling:
        other = sorted(dangling)[0]
        user = next(g.node[k].name for k in keep if other in g.node[k].input)
        raise ConfigError(
            f"start_nodes {list(names)}: the graph after {start!r} still reads {other!r} "
            f"(node {user!r}), so the cut would have {1 + len(dangling)} inputs; quantdoctor "
            "feeds one image input: start before that branch leaves the input, or export a "
            "model whose later layers read only the start node's input"
        )
    return StartCut(
        _extract(model, keep, start, outputs),
        names,
        start,
        *_removed(model, start),
    )


def _removed(model: onnx.ModelProto, start: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    nodes = [model.graph.node[k] for k in _upstream_nodes(model, start)]
    return tuple(n.name for n in nodes), tuple(n.op_type for n in nodes)


def _extract(
    model: onnx.ModelProto, keep: list[int], start: str, outputs: Sequence[str]
) -> onnx.ModelProto:
    """A copy of ``model`` with only the ``keep`` nodes, ``start`` as its input and
    ``outputs`` as its outputs (opset, metadata and functions kept)."""
    g = model.graph
    nodes = [g.node[k] for k in keep]
    read = {i for n in nodes for i in n.input} | set(outputs)
    produced = {o for n in nodes for o in n.output}
    infos = _value_info(model, {start, *outputs})
    start_info = infos.get(start) or helper.make_tensor_value_info(start, TensorProto.FLOAT, None)
    out_infos = [
        infos.get(o) or helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs
    ]
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    cg = cut.graph
    del cg.node[:]
    cg.node.extend(nodes)
    inits = [i for i in g.initializer if i.name in read]
    del cg.initializer[:]
    cg.initializer.extend(inits)
    value_info = [v for v in g.value_info if v.name in produced and v.name not in outputs]
    del cg.value_info[:]
    cg.value_info.extend(value_info)
    del cg.input[:]
    cg.input.append(start_info)
    del cg.output[:]
    cg.output.extend(out_infos)
    return cut


def check_cut_input(cut: StartCut, hw: tuple[int, int] | None, layout: str) -> TensorInfo:
    """The cut model's input must be an image tensor that the preprocessing fills."""
    info = inspect_model(cut.model)
    inp = info.inputs[0]
    if len(inp.shape) != 4 or inp.dtype != np.float32:
        shape = "of unknown shape" if not inp.shape else str(list(inp.shape))
        raise ConfigError(
            f"start_nodes {list(cut.names)}: the accelerator's graph would begin at tensor "
            f"{cut.tensor!r} ({inp.dtype}, {shape}), which is not an image (a float32 tensor "
            "with 4 dimensions, NCHW or NHWC); start at the node that reads the (normalized) "
            "image, e.g. the first Conv"
        )
    return check_input_matches(info, hw, layout)


__all__ = ["StartCut", "check_cut_input", "close_names", "cut_start_nodes", "start_tensors"]
