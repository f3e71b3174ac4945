"""Float transforms of the recipe that turn the native model into the fp_optimized one
(DESIGN §2): normalization as a first layer, channel conversion, the end-node cut.

Each keeps the graph input's name, so the same host preprocessing feeds both models.

>>> fp = apply_input_transforms(model, [NormalizationCommand(mean=[127] * 3, std=[128] * 3)],
...                             layout="nchw")                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..config import NormalizationCommand
from ..errors import ConfigError


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _prepend(model: onnx.ModelProto, make: callable, tag: str) -> onnx.ModelProto:  # type: ignore[valid-type]
    """Insert nodes between the graph input and its consumers; ``make(src, dst)`` returns
    (nodes, initializers) computing dst from src."""
    g = model.graph
    inp = g.input[0].name
    inner = f"{inp}__{tag}"
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == inp:
                node.input[k] = inner
    for out in g.output:
        if out.name == inp:
            raise ConfigError("the model's input is also its output; nothing to transform")
    nodes, inits = make(inp, inner)
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    g.initializer.extend(inits)
    return model


def add_normalization(
    model: onnx.ModelProto, cmd: NormalizationCommand, layout: str
) -> onnx.ModelProto:
    """``(x - mean) / std`` as the model's first layer: a 1x1 depthwise Conv for NCHW (one
    quantizable layer, as accelerator compilers fold it), Mul + Add for NHWC."""
    model = _copy(model)
    mean = np.asarray(cmd.mean, np.float32)
    std = np.asarray(cmd.std, np.float32)

    def make(src: str, dst: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        if layout == "nchw":
            w = (1.0 / std).reshape(3, 1, 1, 1).astype(np.float32)
            b = (-mean / std).astype(np.float32)
            inits = [
                numpy_helper.from_array(w, f"{dst}_w"),
                numpy_helper.from_array(b, f"{dst}_b"),
            ]
            node = helper.make_node(
                "Conv", [src, f"{dst}_w", f"{dst}_b"], [dst], name="recipe/normalization", group=3
            )
            return [node], inits
        inits = [
            numpy_helper.from_array((1.0 / std).astype(np.float32), f"{dst}_scale"),
            numpy_helper.from_array((-mean / std).astype(np.float32), f"{dst}_shift"),
        ]
        nodes = [
            helper.make_node("Mul", [src, f"{dst}_scale"], [f"{dst}_mul"], name="recipe/norm_mul"),
            helper.make_node("Add", [f"{dst}_mul", f"{dst}_shift"], [dst], name="recipe/norm_add"),
        ]
        return nodes, inits

    return _prepend(model, make, "normalized")


def add_channel_flip(model: onnx.ModelProto, layout: str) -> onnx.ModelProto:
    """Reverse the channel order at the model input (bgr_to_rgb / rgb_to_bgr)."""
    model = _copy(model)
    axis = 1 if layout == "nchw" else 3

    def make(src: str, dst: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        idx = numpy_helper.from_array(np.array([2, 1, 0], np.int64), f"{dst}_order")
        node = helper.make_node(
            "Gather", [src, f"{dst}_order"], [dst], name="recipe/input_conversion", axis=axis
        )
        return [node], [idx]

    return _prepend(model, make, "converted")


def apply_input_transforms(
    model: onnx.ModelProto, transforms: Sequence[NormalizationCommand | str], layout: str
) -> onnx.ModelProto:
    """Fold the recipe's input transforms into the model. The host's data meets them in
    recipe order, so the first command ends up nearest the input."""
    for t in reversed(list(transforms)):
        if isinstance(t, NormalizationCommand):
            model = add_normalization(model, t, layout)
        else:
            model = add_channel_flip(model, layout)
    return model


def host_input_transform(
    x: np.ndarray, transforms: Sequence[NormalizationCommand | str], layout: str
) -> np.ndarray:
    """The same transforms applied on the host in float (the native context)."""
    axis = 1 if layout == "nchw" else 3
    shape = [1, 1, 1, 1]
    shape[axis] = 3
    for t in transforms:
        if isinstance(t, NormalizationCommand):
            x = (x - np.asarray(t.mean, np.float32).reshape(shape)) / np.asarray(
                t.std, np.float32
            ).reshape(shape)
        else:
            x = np.flip(x, axis=axis)
    return np.ascontiguousarray(x, dtype=np.float32)


def resolve_tensor_names(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """End/start nodes may name nodes (their outputs are taken) or tensors."""
    produced = {o for n in model.graph.node for o in n.output}
    by_node = {n.name: list(n.output) for n in model.graph.node}
    out: list[str] = []
    for name in names:
        if name in produced or name in {i.name for i in model.graph.input}:
            out.append(name)
        elif name in by_node:
            out.extend(by_node[name])
        else:
            raise ConfigError(
                f"end_nodes: {name!r} is neither a node nor a tensor of the model; use names "
                "as shown by Netron or onnx (node names or output tensor names)"
            )
    return out


def cut_end_nodes(model: onnx.ModelProto, end_nodes: Sequence[str]) -> onnx.ModelProto:
    """The subgraph from the model input to ``end_nodes`` (their tensors become the outputs)."""
    outputs = resolve_tensor_names(model, end_nodes)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        return onnx.utils.Extractor(inferred).extract_model(inputs, outputs)
    except Exception as err:
        raise ConfigError(f"end_nodes: cannot cut the model at {list(end_nodes)}: {err}") from None
