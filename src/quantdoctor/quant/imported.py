"""A QDQ model made by another tool (ONNX Runtime's ``quantize_static``, NNCF, AIMET's
export, a vendor toolchain), read into quantdoctor's own terms: activation ranges, exact
weight scales, per-layer precision and the target conventions it follows, so that every
context, the per-layer analysis and ``fix`` run on that quantization (``quantized_model:``).

Matching is by node name and op type against the (cleaned) float model. A node of the file
that the float model lacks is an error (another float model); activations of the float model
that the file lacks were folded into the layer before them by the tool (ONNX Runtime removes
ReLU/Clip after a Conv) and are listed. An 8-bit or 16-bit affine grid (scale, zero point) is
the same grid whatever the integer type, so every activation is represented exactly with
quantdoctor's asymmetric scheme of that width; weights must be symmetric (zero point 0).

>>> imp = read_quantized_model(Path("model.qdq.onnx"), float_model, layers)  # doctest: +SKIP
>>> imp.ranges()["conv1_out"], imp.plan(imp.target()).weight_scales["conv1"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError
from .calibration import Ranges
from .encodings import quantize
from .plan import PASSTHROUGH_OPS, LayerInfo, QuantPlan, weight_axis
from .target import PROFILES, Target

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: what a tool may fold into the layer before it (no node of its own in the QDQ file)
REMOVABLE = ("Relu", "Clip", "LeakyRelu", "Identity", "Dropout")
_BITS = {
    onnx.TensorProto.UINT8: (8, False), onnx.TensorProto.INT8: (8, True),
    onnx.TensorProto.UINT16: (16, False), onnx.TensorProto.INT16: (16, True),
    onnx.TensorProto.UINT4: (4, False), onnx.TensorProto.INT4: (4, True),
}


@dataclass(frozen=True)
class ActivationEncoding:
    """One quantized activation tensor of the file: its grid."""

    scale: float
    zero_point: int
    bits: int
    signed: bool

    def range(self) -> tuple[float, float]:
        """The (lo, hi) whose asymmetric unsigned grid of ``bits`` is this grid exactly."""
        qmin = -(2 ** (self.bits - 1)) if self.signed else 0
        qmax = qmin + 2**self.bits - 1
        s = float(self.scale)
        return (qmin - self.zero_point) * s, (qmax - self.zero_point) * s


@dataclass(frozen=True, eq=False)
class WeightEncoding:
    """One layer's quantized weight in the file: scales (one or per channel), integer values."""

    scales: tuple[float, ...]
    bits: int
    axis: int | None
    values: np.ndarray  # the integers, in the weight's shape


@dataclass
class ImportedQuantization:
    """What :func:`read_quantized_model` found (see the module docstring)."""

    path: Path
    activations: dict[str, ActivationEncoding]
    weights: dict[str, WeightEncoding]
    #: layer name → the file's dequantized bias (int32 in the file), where it has one
    biases: dict[str, np.ndarray]
    removed_activations: list[str]
    #: layers whose weights in the file are not the float weights rounded with the file's
    #: scales (the tool changed them: AdaRound, bias correction, fine-tuning)
    changed_weights: list[str] = field(default_factory=list)
    #: float layers whose weights the file leaves unquantized
    float_weights: list[str] = field(default_factory=list)

    def per_channel(self) -> bool:
        return any(w.axis is not None for w in self.weights.values())

    def target(self, base: Target | None = None) -> Target:
        """The conventions of the file as a target: ``int8``'s (Relu/Clip fused, as ONNX
        Runtime's quantizer does) with per-channel weights where the file has them."""
        base = base or PROFILES["int8"]
        weights = replace(base.weights, per_channel=self.per_channel())
        return replace(
            base,
            name="quantized_model",
            weights=weights,
            description=f"the quantization of {self.path.name}: " + self.describe(),
            allows_per_channel_weights=True,
        )

    def ranges(self) -> Ranges:
        return {name: enc.range() for name, enc in self.activations.items()}

    def plan(
        self, target: Target, layers: list[LayerInfo], weight_scales: bool = True
    ) -> QuantPlan:
        """The recipe's starting plan: the file's per-layer precision and weight scales
        (``weight_scales=False``: the weights are quantized anew, as the target says)."""
        precision: dict[str, str] = {}
        for layer in layers:
            a = self.activations.get(layer.output)
            w = self.weights.get(layer.name)
            bits = (a.bits if a else 8, w.bits if w else 8)
            if bits != (8, 8):
                name = {(16, 16): "a16_w16", (8, 4): "a8_w4", (16, 8): "a16_w8"}.get(bits)
                if name is None or name not in target.precisions:
                    raise ModelError(
                        f"quantized_model: layer '{layer.name}' has {bits[0]}-bit activations "
                        f"and {bits[1]}-bit weights, which no precision of quantdoctor "
                        "expresses (a8_w8, a16_w16, a8_w4, a16_w8)"
                    )
                precision[_literal(layer.name)] = name
        return QuantPlan(
            target,
            precision=precision,
            weight_scales={k: w.scales for k, w in self.weights.items()} if weight_scales
            else {},
        )

    def describe(self) -> str:
        """The tool's conventions in words (for the report)."""
        kinds = Counter(
            f"{'int' if e.signed else 'uint'}{e.bits}"
            + (" symmetric" if e.zero_point == 0 and e.signed else "")
            for e in self.activations.values()
        )
        wbits = Counter(w.bits for w in self.weights.values())
        parts = [
            "activations " + ", ".join(f"{k} ({n})" for k, n in kinds.most_common()),
            ("per-channel" if self.per_channel() else "per-tensor") + " symmetric weights "
            + ", ".join(f"int{b} ({n})" for b, n in sorted(wbits.items())),
        ]
        if self.removed_activations:
            ops = Counter(a.split(":", 1)[0] for a in self.removed_activations)
            parts.append("folded into the layer before: " + ", ".join(
                f"{n} {op}" for op, n in ops.most_common()))
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        """For findings.json and the report: what was imported and what it follows."""
        return {
            "path": str(self.path),
            "conventions": self.describe(),
            "activations": len(self.activations),
            "weights": len(self.weights),
            "per_channel_weights": self.per_channel(),
            "removed_activations": self.removed_activations[:20],
            "removed_activations_count": len(self.removed_activations),
            "changed_weights": self.changed_weights[:20],
            "changed_weights_count": len(self.changed_weights),
            "float_weights": self.float_weights[:20],
        }


def _literal(name: str) -> str:
    """An fnmatch pattern that matches ``name`` only."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(f"quantized_model: {path} not found; give the QDQ ONNX file made by "
                         "the other tool")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and friends
        raise ModelError(f"quantized_model: {path} is not a valid ONNX file ({type(err).__name__}"
                         "); give the QDQ model the other tool wrote") from None
    if not any(n.op_type in QDQ_OPS for n in model.graph.node):
        ops = {n.op_type for n in model.graph.node}
        hint = (" (a QOperator model, with QLinearConv: write it with quant_format=QDQ)"
                if any(op.startswith("QLinear") for op in ops) else "")
        raise ModelError(f"quantized_model: {path} has no QuantizeLinear/DequantizeLinear nodes, "
                         f"so it is not a QDQ model{hint}")
    return model


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _dtype(types: dict[str, int], consts: dict[str, np.ndarray], node: onnx.NodeProto
           ) -> tuple[int, bool]:
    """(bits, signed) of a Q/DQ node, from its zero point's (or quantized input's) type;
    ONNX's default without a zero point is uint8."""
    zp = node.input[2] if len(node.input) > 2 else ""
    kind = types.get(zp) or (types.get(node.input[0]) if node.op_type == "DequantizeLinear"
                             else None)
    if kind in _BITS:
        return _BITS[kind]
    arr = consts.get(zp)
    by_numpy = {"uint8": (8, False), "int8": (8, True), "uint16": (16, False),
                "int16": (16, True)}
    return by_numpy.get(str(arr.dtype), (8, False)) if arr is not None else (8, False)


def read_quantized_model(
    path: Path, float_model: onnx.ModelProto, layers: list[LayerInfo]
) -> ImportedQuantization:
    """Read ``path`` (a QDQ ONNX of ``float_model``) into :class:`ImportedQuantization`;
    :class:`ModelError` in one sentence where it is not a QDQ model of that float model."""
    model = _load(Path(path))
    g = model.graph
    consts = _constants(model)
    types = {i.name: i.data_type for i in g.initializer}
    float_tensors = {o for n in float_model.graph.node for o in n.output}
    float_tensors |= {i.name for i in float_model.graph.input}

    # DequantizeLinear of a constant: weights and biases (output name → (q, scale, zp, axis))
    const_dq: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int | None, int, bool]] = {}
    # QuantizeLinear → DequantizeLinear on a tensor: DQ output → the float model's tensor
    act_dq: dict[str, str] = {}
    activations: dict[str, ActivationEncoding] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in consts:
            q = consts[n.input[0]]
            scale = consts.get(n.input[1])
            has_zp = len(n.input) > 2 and n.input[2] in consts
            zp = consts[n.input[2]] if has_zp else np.zeros((), q.dtype)
            if scale is None:
                continue
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            bits, signed = _dtype(types, consts, n)
            const_dq[n.output[0]] = (q, scale, zp, axis if scale.size > 1 else None, bits, signed)
        elif n.op_type == "QuantizeLinear" and n.input[0] not in consts:
            scale, zp = consts.get(n.input[1]), consts.get(n.input[2]) if len(n.input) > 2 else None
            if scale is None or scale.size != 1:
                raise ModelError(
                    f"quantized_model: activation '{n.input[0]}' is quantized per channel "
                    "(scale with several values); quantdoctor supports per-tensor activations"
                )
            bits, signed = _dtype(types, consts, n)
            z = int(np.asarray(zp).reshape(-1)[0]) if zp is not None else 0
            for dq in consumers.get(n.output[0], []):
                if dq.op_type != "DequantizeLinear":
                    continue
                out = dq.output[0]
                # ONNX Runtime renames a graph output's producer ("logits_QuantizeLinear_Input")
                # and gives the DequantizeLinear the output's name
                tensor = n.input[0] if n.input[0] in float_tensors else out
                if tensor not in float_tensors:
                    continue
                act_dq[out] = tensor
                activations[tensor] = ActivationEncoding(
                    float(np.asarray(scale, np.float32).reshape(-1)[0]), z, bits, signed
                )

    def source(name: str) -> str:
        """A tensor of the file in float-model terms (through a DequantizeLinear)."""
        return act_dq.get(name, name)

    # --- nodes: the same graph ---------------------------------------------------------------
    compute = [n for n in g.node if n.op_type not in QDQ_OPS and n.op_type != "Constant"]
    float_nodes = {n.name: n for n in float_model.graph.node}
    for n in compute:
        twin = float_nodes.get(n.name)
        if twin is None and n.op_type in PASSTHROUGH_OPS:
            continue  # moved values only: cleaning may merge them (two Slices into one)
        if twin is None or twin.op_type != n.op_type:
            hint = f" (the float model's '{n.name}' is a {twin.op_type})" if twin else ""
            raise ModelError(
                f"quantized_model: {Path(path).name} has a {n.op_type} node '{n.name}' that the "
                f"float model lacks{hint}; it was made from another float model: give as "
                "model: the float model it was quantized from"
            )
    in_file = {n.name for n in compute}
    removed = [f"{n.op_type}:{n.name}" for n in float_model.graph.node
               if n.name not in in_file and n.op_type in REMOVABLE]
    missing = [n for n in float_model.graph.node
               if n.name not in in_file
               and n.op_type not in REMOVABLE + PASSTHROUGH_OPS + ("Constant",)]
    if missing:
        names = ", ".join(f"{n.op_type} '{n.name}'" for n in missing[:3])
        raise ModelError(
            f"quantized_model: {Path(path).name} lacks {len(missing)} node(s) of the float "
            f"model ({names}); it was made from another float model: give as model: the float "
            "model it was quantized from"
        )

    # --- weights and biases ------------------------------------------------------------------
    by_name = {n.name: n for n in compute}
    float_inits = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    weights: dict[str, WeightEncoding] = {}
    biases: dict[str, np.ndarray] = {}
    changed: list[str] = []
    float_weights: list[str] = []
    for layer in layers:
        node = by_name.get(layer.name)
        if node is None or layer.weight is None:
            continue
        enc = const_dq.get(node.input[1]) if len(node.input) > 1 else None
        if enc is None:
            float_weights.append(layer.name)
            continue
        q, scale, zp, axis, bits, signed = enc
        w = float_inits[layer.weight]
        if q.shape != w.shape:
            raise ModelError(
                f"quantized_model: the weight of '{layer.name}' has shape {list(q.shape)} in "
                f"{Path(path).name} but {list(w.shape)} in the float model; it was made from "
                "another float model"
            )
        if np.any(np.asarray(zp) != 0) or not signed:
            raise ModelError(
                f"quantized_model: the weight of '{layer.name}' is quantized asymmetrically "
                "(zero point not 0); quantdoctor supports symmetric weights, as Hailo and "
                "ONNX Runtime's integer kernels use"
            )
        ours = weight_axis(float_nodes[layer.name], w.ndim)
        if axis is not None and axis % w.ndim != ours:
            raise ModelError(
                f"quantized_model: the weight of '{layer.name}' is quantized per channel along "
                f"axis {axis}, not along its output channels (axis {ours})"
            )
        scales = tuple(float(s) for s in np.asarray(scale, np.float32).reshape(-1))
        weights[layer.name] = WeightEncoding(scales, bits, None if len(scales) == 1 else ours, q)
        qmax = 2 ** (bits - 1) - 1
        rounded = quantize(w, np.asarray(scales if len(scales) > 1 else scales[0]), 0,
                           -qmax - 1, qmax, None if len(scales) == 1 else ours)
        steps = np.abs(rounded - q.astype(np.int64))
        if steps.max(initial=0) > 1 and np.mean(steps > 1) > 0.01:
            raise ModelError(
                f"quantized_model: the weights of '{layer.name}' differ from the float model's "
                f"by more than one quantization step in {100 * np.mean(steps > 1):.0f}% of "
                "values; it was made from another float model (or another training state)"
            )
        if steps.any():
            changed.append(layer.name)
        if len(node.input) > 2 and node.input[2] in const_dq:
            qb, sb, zb, _, _, _ = const_dq[node.input[2]]
            biases[layer.name] = ((qb.astype(np.float64) - zb) * sb).astype(np.float32)
    return ImportedQuantization(
        Path(path), activations, weights, biases, removed, changed, float_weights
    )


def imported_weights_model(
    float_model: onnx.ModelProto, imported: ImportedQuantization, layers: list[LayerInfo]
) -> onnx.ModelProto:
    """A copy of ``float_model`` with the file's own (dequantized) weights and biases on the
    layers whose weights the tool changed: what the file computes, in float."""
    out = onnx.ModelProto()
    out.CopyFrom(float_model)
    inits = {i.name: i for i in out.graph.initializer}
    nodes = {n.name: n for n in out.graph.node}
    for layer in layers:
        if layer.name not in imported.changed_weights or layer.weight is None:
            continue
        enc = imported.weights[layer.name]
        shape = [1] * enc.values.ndim
        if enc.axis is not None:
            shape[enc.axis] = -1
        deq = enc.values.astype(np.float64) * np.asarray(enc.scales).reshape(shape)
        inits[layer.weight].CopyFrom(numpy_helper.from_array(deq.astype(np.float32),
                                                             layer.weight))
        node = nodes[layer.name]
        bias = imported.biases.get(layer.name)
        if bias is not None and len(node.input) > 2 and node.input[2] in inits:
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(bias, node.input[2]))
    return out


__all__ = [
    "ActivationEncoding",
    "ImportedQuantization",
    "WeightEncoding",
    "imported_weights_model",
    "read_quantized_model",
]
