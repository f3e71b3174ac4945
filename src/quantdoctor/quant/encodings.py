"""Scales and zero points from ranges, and weight quantization (plain numpy)."""

from __future__ import annotations

import numpy as np

from .target import QuantScheme


def activation_params(lo: float, hi: float, scheme: QuantScheme) -> tuple[np.float32, int]:
    """Scale and zero point for a per-tensor range. The range always contains 0 so that zero
    (padding, ReLU) is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        amax = max(-lo, hi)
        if scheme.signed:
            scale = amax / qmax
            zp = 0
        else:
            scale = 2 * amax / (qmax - qmin)
            zp = (qmax + qmin + 1) // 2
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = int(np.clip(round(qmin - lo / scale), qmin, qmax)) if scale > 0 else qmin
    if not scale > 0:
        scale = 1.0  # an all-zero tensor: any scale represents it exactly
    return np.float32(scale), int(zp)


def weight_params(
    w: np.ndarray,
    scheme: QuantScheme,
    axis: int | None,
    clip: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Symmetric weight scales, one per output channel along ``axis`` (or a scalar).

    ``clip`` (weights_clipping) caps the range: one max |w| for the tensor, or one per
    channel; a channel's range never grows beyond its own max |w|."""
    if not scheme.symmetric:
        raise ValueError("weights are quantized symmetrically")
    a = np.abs(w.astype(np.float64))
    if axis is None:
        amax = np.asarray(a.max() if a.size else 0.0)
    else:
        amax = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1)
    if clip is not None:
        cap = np.asarray(clip, dtype=np.float64)
        if axis is None and cap.size > 1:
            cap = np.asarray(cap.max())  # a per-channel clip on a per-tensor scheme
        elif axis is not None and cap.size == 1:
            cap = np.full(amax.shape, float(cap.reshape(-1)[0]))
        amax = np.minimum(amax, cap.reshape(amax.shape))
    scale = amax / scheme.qmax
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | int,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> np.ndarray:
    """Round-half-to-even quantization like ONNX QuantizeLinear; returns int64 values."""
    s = np.asarray(scale, dtype=np.float64)
    z = np.asarray(zero_point, dtype=np.float64)
    if axis is not None and s.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return np.clip(np.rint(x.astype(np.float64) / s) + z, qmin, qmax).astype(np.int64)
