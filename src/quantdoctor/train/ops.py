"""ONNX operators as torch functional calls: what the interpreter runs node by node.

Each function takes the node's inputs (tensors, ``None`` for an omitted optional input), its
attributes as Python values and the model's opset, and returns a tensor or a list of them.
Integer tensors (shapes, indices) flow through as int64 tensors, so ``Shape → Gather →
Concat → Reshape`` chains work without constant folding.

>>> import torch
>>> OPS["Flatten"]([torch.zeros(2, 3, 4)], {"axis": 1}, 17).shape
torch.Size([2, 12])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

Tensor = torch.Tensor
Attrs = dict[str, Any]
OpFn = Callable[[list[Any], Attrs, int], "Tensor | list[Tensor]"]


class UnsupportedOp(Exception):
    """An operator (or an attribute value of it) this interpreter does not implement."""


TORCH_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


def attributes(node: Any) -> Attrs:
    """A node's attributes as Python values (strings decoded, tensors as numpy arrays)."""
    out: Attrs = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def to_tensor(array: np.ndarray) -> Tensor:
    """A numpy array as a torch tensor (a copy; unsigned types beyond uint8 widened)."""
    a = np.asarray(array)
    if a.dtype in (np.uint16, np.uint32):
        a = a.astype(np.int64)
    return torch.from_numpy(np.array(a, copy=True))


def _ints(t: Tensor | Sequence[int] | None) -> list[int]:
    if t is None:
        return []
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


# --- padding helpers -----------------------------------------------------------------------
def _torch_pads(pads: Sequence[int], nd: int) -> list[int]:
    """ONNX pads ``[b1..bn, e1..en]`` of the last ``nd`` axes → F.pad's (last axis first)."""
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [int(pads[i]), int(pads[i + nd])]
    return out


def _auto_pads(
    attrs: Attrs,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    nd = len(spatial)
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * nd)))
    if mode == "VALID":
        return [0] * (2 * nd)
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin = small if mode == "SAME_UPPER" else total - small
        begins.append(begin)
        ends.append(total - begin)
    return begins + ends


def _padded(x: Tensor, pads: Sequence[int], nd: int, value: float = 0.0) -> tuple[Tensor, Any]:
    """Symmetric pads go to the op's own ``padding``; asymmetric ones are applied here."""
    if all(pads[i] == pads[i + nd] for i in range(nd)):
        return x, [int(p) for p in pads[:nd]]
    return F.pad(x, _torch_pads(pads, nd), value=value), 0


# --- convolution, matrix products ----------------------------------------------------------
def conv(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    nd = w.ndim - 2
    strides = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    kernel = attrs.get("kernel_shape", list(w.shape[2:]))
    pads = _auto_pads(attrs, x.shape[2:], kernel, strides, dil)
    x, padding = _padded(x, pads, nd)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, strides, padding, dil, attrs.get("group", 1))


def conv_transpose(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    nd = w.ndim - 2
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "") or "output_shape" in attrs:
        raise UnsupportedOp("ConvTranspose with auto_pad or output_shape")
    strides = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    out_pad = attrs.get("output_padding", [0] * nd)
    pads = attrs.get("pads", [0] * (2 * nd))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    y = fn(x, w, b, strides, 0, out_pad, attrs.get("group", 1), dil)
    index = [slice(None), slice(None)] + [
        slice(pads[i], y.shape[2 + i] - pads[i + nd]) for i in range(nd)
    ]
    return y[tuple(index)]


def gemm(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if attrs.get("transB", 0) and alpha == 1.0 and beta == 1.0 and (c is None or c.ndim <= 1):
        return F.linear(a, b, c)
    y = a @ (b.transpose(0, 1) if attrs.get("transB", 0) else b)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y


# --- pooling -------------------------------------------------------------------------------
def _pool_params(x: Tensor, attrs: Attrs) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    pads = _auto_pads(attrs, x.shape[2:], kernel, strides, dil)
    return kernel, strides, dil, pads


def max_pool(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    kernel, strides, dil, pads = _pool_params(x, attrs)
    nd = len(kernel)
    if any(pads):
        x = F.pad(x, _torch_pads(pads, nd), value=-math.inf)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    return fn(x, kernel, strides, 0, dil, bool(attrs.get("ceil_mode", 0)))


def average_pool(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    kernel, strides, dil, pads = _pool_params(x, attrs)
    nd = len(kernel)
    if any(d != 1 for d in dil):
        raise UnsupportedOp("AveragePool with dilations")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    ceil = bool(attrs.get("ceil_mode", 0))
    if not any(pads):
        return fn(x, kernel, strides, 0, ceil, True)
    xp = F.pad(x, _torch_pads(pads, nd))
    y = fn(xp, kernel, strides, 0, ceil, True)
    if attrs.get("count_include_pad", 0):
        return y
    ones = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype), _torch_pads(pads, nd))
    return y / fn(ones, kernel, strides, 0, ceil, True)


def global_average_pool(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


def global_max_pool(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


# --- resize --------------------------------------------------------------------------------
def _source_coords(out: int, size: int, scale: float, mode: str) -> Tensor:
    i = torch.arange(out, dtype=torch.float32)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out > 1 else torch.zeros(out)
    if mode == "align_corners":
        return i * (size - 1) / (out - 1) if out > 1 else torch.zeros(out)
    if mode == "asymmetric":
        return i / scale
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    raise UnsupportedOp(f"Resize coordinate_transformation_mode={mode}")


def _nearest(coords: Tensor, mode: str) -> Tensor:
    if mode == "round_prefer_floor":
        return torch.ceil(coords - 0.5)
    if mode == "round_prefer_ceil":
        return torch.floor(coords + 0.5)
    if mode == "floor":
        return torch.floor(coords)
    if mode == "ceil":
        return torch.ceil(coords)
    raise UnsupportedOp(f"Resize nearest_mode={mode}")


def resize(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    if opset < 11:
        scales_t, sizes_t = inputs[1] if len(inputs) > 1 else None, None
    else:
        scales_t = inputs[2] if len(inputs) > 2 else None
        sizes_t = inputs[3] if len(inputs) > 3 else None
    if sizes_t is not None and sizes_t.numel():
        sizes = _ints(sizes_t)
        scales = [o / i for o, i in zip(sizes, x.shape, strict=True)]
    elif scales_t is not None and scales_t.numel():
        scales = [float(v) for v in scales_t.reshape(-1).tolist()]
        sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scales, strict=True)]
    else:
        raise UnsupportedOp("Resize without scales or sizes")
    if "axes" in attrs or attrs.get("antialias", 0):
        raise UnsupportedOp("Resize with axes or antialias")
    mode = attrs.get("mode", "nearest")
    default_ctm = "asymmetric" if opset < 11 else "half_pixel"
    ctm = attrs.get("coordinate_transformation_mode", default_ctm)
    nearest_mode = attrs.get("nearest_mode", "round_prefer_floor")
    for d in range(x.ndim):
        if sizes[d] == x.shape[d] and scales[d] == 1.0:
            continue
        coords = _source_coords(sizes[d], x.shape[d], scales[d], ctm)
        if mode == "nearest":
            idx = _nearest(coords, nearest_mode).clamp(0, x.shape[d] - 1).long()
            x = x.index_select(d, idx)
        elif mode == "linear":
            coords = coords.clamp(0, x.shape[d] - 1)
            lo = coords.floor().long()
            hi = (lo + 1).clamp(max=x.shape[d] - 1)
            shape = [1] * x.ndim
            shape[d] = -1
            frac = (coords - lo.to(coords.dtype)).reshape(shape).to(x.dtype)
            x = x.index_select(d, lo) * (1 - frac) + x.index_select(d, hi) * frac
        else:
            raise UnsupportedOp(f"Resize mode={mode}")
    return x


# --- shapes and indexing -------------------------------------------------------------------
def reshape(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x, shape = inputs[0], _ints(inputs[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def flatten(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    axis = _axis(attrs.get("axis", 1), x.ndim)
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def transpose(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    return x.permute(attrs.get("perm", list(reversed(range(x.ndim)))))


def _axes_input(inputs: list[Any], attrs: Attrs, index: int = 1) -> list[int] | None:
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    return list(attrs["axes"]) if "axes" in attrs else None


def squeeze(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    axes = _axes_input(inputs, attrs)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(_axis(a, x.ndim) for a in axes))


def unsqueeze(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    axes = _axes_input(inputs, attrs) or []
    rank = x.ndim + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


def concat(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    parts = [t for t in inputs if t is not None]
    return torch.cat(parts, dim=attrs["axis"])


def slice_(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    if opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes, steps = list(attrs.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else []
        axes = axes or list(range(len(starts)))
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else []
        steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(axis, x.ndim)
        rng = range(*slice(start, end, step).indices(x.shape[axis]))
        if step > 0:
            index = [slice(None)] * x.ndim
            index[axis] = slice(rng.start, rng.stop, rng.step)
            x = x[tuple(index)]
        else:
            x = x.index_select(axis, torch.tensor(list(rng), dtype=torch.long))
    return x


def split(inputs: list[Any], attrs: Attrs, opset: int, n_outputs: int = 1) -> list[Tensor]:
    x = inputs[0]
    axis = _axis(attrs.get("axis", 0), x.ndim)
    sizes = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else []
    sizes = sizes or list(attrs.get("split", []))
    if not sizes:
        n = attrs.get("num_outputs", n_outputs)
        chunk = math.ceil(x.shape[axis] / n)
        sizes = [chunk] * (n - 1) + [x.shape[axis] - chunk * (n - 1)]
    return list(torch.split(x, sizes, dim=axis))


def gather(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x, idx = inputs[0], inputs[1].long()
    axis = _axis(attrs.get("axis", 0), x.ndim)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])


def pad(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    if opset < 11:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = _ints(inputs[1])
        value_t = inputs[2] if len(inputs) > 2 else None
        value = float(value_t.reshape(-1)[0]) if value_t is not None and value_t.numel() else 0.0
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
    if axes is not None:  # opset 18: pads of these axes only
        full = [0] * (2 * x.ndim)
        for k, a in enumerate(axes):
            a = _axis(a, x.ndim)
            full[a], full[a + x.ndim] = pads[k], pads[k + len(axes)]
        pads = full
    mode = attrs.get("mode", "constant")
    nd = x.ndim
    first = next((i for i in range(nd) if pads[i] or pads[i + nd]), nd)
    if first == nd:
        return x
    keep = nd - first
    sub = [pads[i] for i in range(first, nd)] + [pads[i + nd] for i in range(first, nd)]
    if mode == "constant":
        return F.pad(x, _torch_pads(sub, keep), value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None or keep > nd - 2:
        raise UnsupportedOp(f"Pad mode={mode} on these axes")
    return F.pad(x, _torch_pads(sub, keep), mode=torch_mode)


def expand(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(inputs[1]))))


def shape(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    dims = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


def constant_of_shape(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    value = to_tensor(attrs["value"]) if "value" in attrs else torch.zeros(1)
    return value.reshape(()).expand(_ints(inputs[0])).clone()


def cast(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    dtype = TORCH_DTYPES.get(attrs["to"])
    if dtype is None:
        raise UnsupportedOp(f"Cast to ONNX type {attrs['to']}")
    return inputs[0].to(dtype)


def depth_to_space(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x, b = inputs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x, b = inputs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# --- elementwise, activations, reductions --------------------------------------------------
def clip(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    if opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        hi = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    if lo is None and hi is None:
        return x
    return torch.clamp(x, min=lo, max=hi)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
        out = inputs[0]
        for t in inputs[1:]:
            out = fn(out, t)
        return out

    return run


def div(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    a, b = inputs
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def softmax(inputs: list[Any], attrs: Attrs, opset: int, log: bool = False) -> Tensor:
    x = inputs[0]
    fn = torch.log_softmax if log else torch.softmax
    if opset >= 13:
        return fn(x, dim=attrs.get("axis", -1))
    axis = _axis(attrs.get("axis", 1), x.ndim)
    flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    return fn(flat, dim=1).reshape(x.shape)


def _reduce(fn: Callable[..., Tensor], axes_input_from: int) -> OpFn:
    def run(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
        x = inputs[0]
        axes = _axes_input(inputs, attrs) if opset >= axes_input_from else attrs.get("axes")
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        return fn(x, dim=tuple(_axis(a, x.ndim) for a in axes), keepdim=keep)

    return run


def batch_norm(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x, scale, bias, mean, var = inputs[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, attrs.get("epsilon", 1e-5))


def layer_norm(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = _axis(attrs.get("axis", -1), x.ndim)
    return F.layer_norm(x, x.shape[axis:], None, None, attrs.get("epsilon", 1e-5)) * scale + (
        0 if bias is None else bias
    )


def hard_sigmoid(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    return torch.clamp(alpha * inputs[0] + beta, 0.0, 1.0)


def hard_swish(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    x = inputs[0]
    return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


def where(inputs: list[Any], attrs: Attrs, opset: int) -> Tensor:
    return torch.where(inputs[0].bool(), inputs[1], inputs[2])


def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda inputs, attrs, opset: fn(inputs[0])


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda inputs, attrs, opset: fn(inputs[0], inputs[1])


OPS: dict[str, OpFn] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": _binary(torch.matmul),
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "Resize": resize,
    "Reshape": reshape,
    "Flatten": flatten,
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Concat": concat,
    "Slice": slice_,
    "Gather": gather,
    "Pad": pad,
    "Expand": expand,
    "Tile": lambda i, a, o: i[0].repeat(_ints(i[1])),
    "Shape": shape,
    "Size": lambda i, a, o: torch.tensor(i[0].numel(), dtype=torch.int64),
    "ConstantOfShape": constant_of_shape,
    "Cast": cast,
    "Range": lambda i, a, o: torch.arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype),
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
    "Identity": _unary(lambda x: x),
    "Dropout": _unary(lambda x: x),
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),
    "Erf": _unary(torch.erf),
    "Softplus": _unary(F.softplus),
    "Not": _unary(torch.logical_not),
    "LeakyRelu": lambda i, a, o: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Elu": lambda i, a, o: F.elu(i[0], a.get("alpha", 1.0)),
    "Selu": _unary(torch.selu),
    "PRelu": lambda i, a, o: torch.where(i[0] >= 0, i[0], i[0] * i[1]),
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "Clip": clip,
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": div,
    "Pow": _binary(torch.pow),
    "Min": _variadic(torch.minimum),
    "Max": _variadic(torch.maximum),
    "Sum": _variadic(torch.add),
    "Equal": _binary(torch.eq),
    "Greater": _binary(torch.gt),
    "Less": _binary(torch.lt),
    "Where": where,
    "Softmax": softmax,
    "LogSoftmax": lambda i, a, o: softmax(i, a, o, log=True),
    "ReduceMean": _reduce(torch.mean, 18),
    "ReduceSum": _reduce(torch.sum, 13),
    "ReduceMax": _reduce(torch.amax, 18),
    "ReduceMin": _reduce(torch.amin, 18),
    "BatchNormalization": batch_norm,
    "LayerNormalization": layer_norm,
}

#: Ops with several outputs: called with the number of outputs the node declares.
MULTI_OUTPUT: dict[str, Callable[..., list[Tensor]]] = {"Split": split}


def supported_ops() -> list[str]:
    """The ONNX operators the interpreter runs (besides Constant and Q/DQ pairs)."""
    return sorted([*OPS, *MULTI_OUTPUT])
