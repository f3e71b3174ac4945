"""Multiply-accumulates per layer, from the graph's shapes (batch 1): the cost measure of
16-bit layers (a layer at 16 bits costs about its MACs again on 8-bit hardware).

>>> macs = layer_macs(model)          # {node name: MACs per image}     # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import onnx


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensor shapes with symbolic dimensions (the batch) set to 1."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    inits = {i.name for i in work.graph.initializer}
    for inp in work.graph.input:
        if inp.name in inits:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(work)
    except Exception:
        return {}
    g = inferred.graph
    out: dict[str, list[int]] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        shape = vi.type.tensor_type.shape.dim
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in shape]
        if dims and all(d > 0 for d in dims):
            out[vi.name] = dims
    return out


def layer_macs(model: onnx.ModelProto) -> dict[str, int]:
    """MACs per image of every Conv, ConvTranspose, Gemm and MatMul node (by node name);
    0 where a shape is unknown."""
    shapes = _static_shapes(model)
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        y = shapes.get(node.output[0])
        if not w or not y:
            out[node.name] = 0
            continue
        if node.op_type == "Conv":
            # each output element: (C_in / group) * kernel MACs = prod(w[1:])
            out[node.name] = int(np.prod(y)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            x = shapes.get(node.input[0])
            out[node.name] = int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
        else:  # Gemm / MatMul: each output element sums over the shared dimension
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            k = w[-1] if (node.op_type == "Gemm" and trans_b) else w[0] if len(w) == 2 else w[-2]
            out[node.name] = int(np.prod(y)) * int(k)
    return out
