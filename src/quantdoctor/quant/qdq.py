"""Build a QDQ ONNX model (QuantizeLinear → DequantizeLinear pairs) from a float model, a
:class:`QuantPlan` and calibrated ranges.

Every quantized tensor keeps its original name for its *dequantized* value (the float value
is renamed ``<name>__float``), so a tensor captured by name in the quantized model is
directly comparable with the same name in the float model. Fused activations (ReLU, ReLU6 …)
stay in the graph with no quantizer before them: the comparison happens after the activation,
and ONNX Runtime's integer path removes them where the output range makes them exact.

Run the result unfused for float emulation, or with ONNX Runtime's full optimizations for
fused integer kernels.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from ..errors import ModelError
from .calibration import Ranges
from .encodings import activation_params, quantize, weight_params
from .plan import PASSTHROUGH_OPS, LayerInfo, QuantPlan, find_layers, weight_axis
from .target import QuantScheme

FLOAT_SUFFIX = "__float"
_MS = "com.microsoft"


def _graph_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [
        i.name
        for i in model.graph.input
        if i.name not in inits and i.type.tensor_type.elem_type == TensorProto.FLOAT
    ]


def tensors_to_calibrate(model: onnx.ModelProto, layers: list[LayerInfo]) -> list[str]:
    """Tensors that need a calibrated range: the graph's float inputs and every layer output."""
    return _graph_inputs(model) + [layer.output for layer in layers]


def _ensure_opset(model: onnx.ModelProto, minimum: int = 13) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= minimum:
        return model
    try:
        return version_converter.convert_version(model, minimum)
    except Exception as err:
        raise ModelError(
            f"the model is opset {opset}; per-channel quantization needs opset {minimum} and "
            f"the automatic conversion failed ({err}); re-export the model with opset >= "
            f"{minimum}"
        ) from None


class _Builder:
    def __init__(
        self,
        model: onnx.ModelProto,
        plan: QuantPlan,
        ranges: Ranges,
        float_arithmetic_beyond_8bit: bool = False,
    ) -> None:
        self.float_arithmetic_beyond_8bit = float_arithmetic_beyond_8bit
        self.model = model
        self.plan = plan
        self.ranges = ranges
        self.inits = {i.name: i for i in model.graph.initializer}
        self.new_inits: list[onnx.TensorProto] = []
        self.params: dict[str, tuple[str, str, QuantScheme, float]] = {}
        self.uses_ms = False

    def _domain(self, bits: int) -> str:
        if bits == 8:
            return ""
        self.uses_ms = True  # 4/16-bit Q/DQ at any opset via ONNX Runtime's contrib ops
        return _MS

    def qdq_pair(
        self,
        tensor: str,
        source: str,
        target: str,
        scheme: QuantScheme,
        shared: tuple[str, str, float] | None = None,
    ) -> list[onnx.NodeProto]:
        """Q(source) → DQ → target, with the range of ``tensor`` (or ``shared`` params)."""
        if shared is None:
            lo, hi = self.ranges[tensor]
            scale, zp = activation_params(lo, hi, scheme)
            s_name, z_name = f"{tensor}__scale", f"{tensor}__zero_point"
            self.new_inits.append(numpy_helper.from_array(np.asarray(scale, np.float32), s_name))
            self.new_inits.append(helper.make_tensor(z_name, scheme.onnx_type, [], [zp]))
            scale_value = float(scale)
        else:
            s_name, z_name, scale_value = shared
        self.params[target] = (s_name, z_name, scheme, scale_value)
        if scheme.bits != 8 and self.float_arithmetic_beyond_8bit:
            return self._fake_quant(tensor, source, target, scheme, s_name, z_name)
        domain = self._domain(scheme.bits)
        q = helper.make_node(
            "QuantizeLinear",
            [source, s_name, z_name],
            [f"{tensor}__q"],
            name=f"{tensor}__QuantizeLinear",
            domain=domain,
        )
        dq = helper.make_node(
            "DequantizeLinear",
            [f"{tensor}__q", s_name, z_name],
            [target],
            name=f"{tensor}__DequantizeLinear",
            domain=domain,
        )
        return [q, dq]

    def _fake_quant(
        self, tensor: str, source: str, target: str, scheme: QuantScheme, s_name: str, z_name: str
    ) -> list[onnx.NodeProto]:
        """The same rounding as Q→DQ, written as float ops (Div, Round, Add, Clip, Sub, Mul):
        ONNX Runtime's integer fusion mis-handles 16-bit Q/DQ around Conv, and no integer
        kernel exists for it anyway."""
        p = f"{tensor}__fq"
        zp = float(self._zero_point(z_name))
        consts = {f"{p}_zp": zp, f"{p}_qmin": float(scheme.qmin), f"{p}_qmax": float(scheme.qmax)}
        for name, value in consts.items():
            self.new_inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return [
            helper.make_node("Div", [source, s_name], [f"{p}_div"], name=f"{p}_Div"),
            helper.make_node("Round", [f"{p}_div"], [f"{p}_round"], name=f"{p}_Round"),
            helper.make_node("Add", [f"{p}_round", f"{p}_zp"], [f"{p}_q"], name=f"{p}_Add"),
            helper.make_node(
                "Clip", [f"{p}_q", f"{p}_qmin", f"{p}_qmax"], [f"{p}_clip"], name=f"{p}_Clip"
            ),
            helper.make_node("Sub", [f"{p}_clip", f"{p}_zp"], [f"{p}_int"], name=f"{p}_Sub"),
            helper.make_node("Mul", [f"{p}_int", s_name], [target], name=f"{p}_Mul"),
        ]

    def _zero_point(self, name: str) -> int:
        init = next(i for i in self.new_inits if i.name == name)
        return int(numpy_helper.to_array(init).reshape(-1)[0])

    def quantize_weight(
        self,
        node: onnx.NodeProto,
        scheme: QuantScheme,
        clip: tuple[float, ...] | None = None,
        given: tuple[float, ...] | None = None,
    ) -> None:
        """Quantize ``node``'s weight: scales computed from the weights (capped by ``clip``),
        or ``given`` as they are (imported from a QDQ model made elsewhere)."""
        name = node.input[1]
        w = numpy_helper.to_array(self.inits[name]).astype(np.float32)
        if given is not None:
            axis = weight_axis(node, w.ndim) if len(given) > 1 else None
            scales = np.asarray(given if axis is not None else given[0], np.float32)
        else:
            axis = weight_axis(node, w.ndim) if scheme.per_channel else None
            scales = self._bias_safe(node, weight_params(w, scheme, axis, clip), scheme)
        qw = quantize(w, scales, 0, scheme.qmin, scheme.qmax, axis)
        base = f"{node.name}__{name}"
        if scheme.bits != 8 and self.float_arithmetic_beyond_8bit:
            # Dequantized weights as a float constant: no integer kernel takes them.
            shape = [1] * w.ndim
            if axis is not None:
                shape[axis] = -1
            deq = (qw * scales.reshape(shape)).astype(np.float32)
            self.new_inits.append(numpy_helper.from_array(deq, f"{base}__dequantized"))
            node.input[1] = f"{base}__dequantized"
            return
        qname, sname, zname = f"{base}__quantized", f"{base}__scale", f"{base}__zero_point"
        self.new_inits.append(helper.make_tensor(qname, scheme.onnx_type, w.shape, qw.flatten()))
        self.new_inits.append(numpy_helper.from_array(scales, sname))
        zeros = np.zeros(scales.shape, dtype=np.int64)
        self.new_inits.append(helper.make_tensor(zname, scheme.onnx_type, zeros.shape, zeros))
        out = f"{base}__dequantized"
        attrs = {"axis": axis} if axis is not None else {}
        self.extra_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [qname, sname, zname],
                [out],
                name=f"{base}__DequantizeLinear",
                domain=self._domain(scheme.bits),
                **attrs,
            )
        )
        node.input[1] = out
        self._quantize_bias(node, scales, scheme, axis)

    def _bias_safe(
        self, node: onnx.NodeProto, scales: np.ndarray, scheme: QuantScheme
    ) -> np.ndarray:
        """Weight scales raised where the int32 bias (scale = input scale x weight scale)
        would overflow: near-dead channels with a bias (as ONNX Runtime's quantizer does).
        Otherwise such a bias stays float, and a plain ONNX Runtime session quantizes it
        itself: the exported model would then not compute what the int8 context computed."""
        if len(node.input) < 3 or node.input[2] not in self.inits or scheme.bits != 8:
            return scales
        src = self.params.get(node.input[0])
        if src is None or src[2].bits != 8:
            return scales
        b = np.abs(numpy_helper.to_array(self.inits[node.input[2]]).astype(np.float64))
        if b.ndim != 1 or (scales.size not in (1, b.size)):
            return scales
        # headroom below 2**31 - 1 for the rounding of the bias
        need = b / (src[3] * float(2**31 - 2**8))
        if scales.ndim == 0 or need.size != scales.size:  # one scale for every channel
            need = np.asarray(need.max(initial=0.0))
        raised = np.maximum(scales.astype(np.float64), need.reshape(scales.shape))
        return raised.astype(np.float32) if (raised > scales).any() else scales

    def _quantize_bias(
        self, node: onnx.NodeProto, w_scales: np.ndarray, scheme: QuantScheme, axis: int | None
    ) -> None:
        """int32 bias with scale = input scale × weight scale, as integer hardware accumulates;
        kept float where that is not representable (16-bit layers, grouped ConvTranspose…)."""
        if len(node.input) < 3 or node.input[2] not in self.inits or scheme.bits != 8:
            return
        src = self.params.get(node.input[0])
        if src is None or src[2].bits != 8:
            return
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Gemm" and any(
            k in attrs and attrs[k].f != 1.0 for k in ("alpha", "beta")
        ):
            return
        b = numpy_helper.to_array(self.inits[node.input[2]]).astype(np.float64)
        if node.op_type == "ConvTranspose" and "group" in attrs and attrs["group"].i != 1:
            return
        if b.ndim != 1 or (w_scales.ndim == 1 and w_scales.size not in (1, b.size)):
            return
        scale = (src[3] * w_scales.astype(np.float64)).astype(np.float32)
        if scale.ndim == 0 or scale.size == 1:
            scale = np.full(b.shape, float(scale.reshape(-1)[0]), np.float32)
        qb = np.rint(b / scale)
        if np.abs(qb).max(initial=0) >= 2**31 - 1:
            return
        base = f"{node.name}__{node.input[2]}"
        self.new_inits.append(numpy_helper.from_array(qb.astype(np.int32), f"{base}__quantized"))
        self.new_inits.append(numpy_helper.from_array(scale, f"{base}__scale"))
        self.new_inits.append(
            numpy_helper.from_array(np.zeros(b.shape, np.int32), f"{base}__zero_point")
        )
        self.extra_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}__quantized", f"{base}__scale", f"{base}__zero_point"],
                [f"{base}__dequantized"],
                name=f"{base}__DequantizeLinear",
                axis=0,
            )
        )
        node.input[2] = f"{base}__dequantized"

    def build(self, layers: list[LayerInfo]) -> onnx.ModelProto:
        g = self.model.graph
        by_node = {layer.name: layer for layer in layers}
        by_output = {layer.output: layer for layer in layers}
        nodes: list[onnx.NodeProto] = []
        self.extra_nodes = nodes  # weight/bias DQ nodes go before their consumer

        renames: dict[str, str] = {}
        for name in _graph_inputs(self.model):
            scheme = self.plan.activation_scheme(None, name)
            if scheme is not None and name in self.ranges:
                renames[name] = f"{name}__dequantized"
                nodes.extend(self.qdq_pair(name, name, renames[name], scheme))
        if renames:
            for node in g.node:
                for k, i in enumerate(node.input):
                    if i in renames:
                        node.input[k] = renames[i]
            self.params.update({src: self.params[dst] for src, dst in renames.items()})

        # A per-channel ReLU6 (Relu -> Min(bound), written by equalization): its Relu output is
        # quantized with the layer's output range too. Exact (the Min of grid values and a
        # bound rounds to what the Min of the values rounds to, and both clamp at the range
        # top), and it lets ONNX Runtime fuse Conv+Relu+Q into an integer kernel.
        relu_before_min = self._relu_before_min(layers)

        for node in list(g.node):
            layer = by_node.get(node.name)
            if layer is not None:
                wscheme = self.plan.weight_scheme(layer)
                if wscheme is not None:
                    self.quantize_weight(node, wscheme, self.plan.weight_range(layer),
                                         self.plan.weight_scale(layer))
            nodes.append(node)
            for k, out in enumerate(node.output):
                if out in relu_before_min:
                    owner = relu_before_min[out]
                    scheme = self.plan.activation_scheme(owner, owner.output)
                    if scheme is not None and owner.output in self.ranges:
                        self.ranges = {**self.ranges, out: self.ranges[owner.output]}
                        node.output[k] = out + FLOAT_SUFFIX
                        nodes.extend(self.qdq_pair(out, out + FLOAT_SUFFIX, out, scheme))
                    continue
                if out in by_output:
                    scheme = self.plan.activation_scheme(by_output[out], out)
                    if scheme is None or out not in self.ranges:
                        continue
                    node.output[k] = out + FLOAT_SUFFIX
                    nodes.extend(self.qdq_pair(out, out + FLOAT_SUFFIX, out, scheme))
                elif (
                    node.op_type in PASSTHROUGH_OPS
                    and node.input
                    and node.input[0] in (self.params)
                ):
                    s_name, z_name, scheme, scale = self.params[node.input[0]]
                    if node.op_type == "Pad" and not self._pad_is_zero(node):
                        continue
                    node.output[k] = out + FLOAT_SUFFIX
                    nodes.extend(
                        self.qdq_pair(out, out + FLOAT_SUFFIX, out, scheme, (s_name, z_name, scale))
                    )
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(self.new_inits)
        used = {i for n in g.node for i in n.input}
        unused = [i for i in g.initializer if i.name not in used]
        for init in unused:  # float weights replaced by their quantized copies
            g.initializer.remove(init)
        if self.uses_ms and not any(o.domain == _MS for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(_MS, 1))
        return self.model

    def _relu_before_min(self, layers: list[LayerInfo]) -> dict[str, LayerInfo]:
        """The Relu output inside each ``Relu+Min`` layer → that layer."""
        if not any(layer.fused_activation == "Relu+Min" for layer in layers):
            return {}
        producer = {o: n for n in self.model.graph.node for o in n.output}
        out: dict[str, LayerInfo] = {}
        for layer in layers:
            if layer.fused_activation == "Relu+Min":
                node = producer.get(layer.output)
                if node is not None and node.op_type == "Min":
                    out[node.input[0]] = layer
        return out

    def _pad_is_zero(self, node: onnx.NodeProto) -> bool:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if mode != b"constant":
            return True
        if len(node.input) > 2 and node.input[2]:
            v = self.inits.get(node.input[2])
            return v is not None and float(numpy_helper.to_array(v).reshape(-1)[0]) == 0.0
        return True


def build_qdq(
    model: onnx.ModelProto,
    plan: QuantPlan,
    ranges: Ranges,
    layers: list[LayerInfo] | None = None,
    for_integer_kernels: bool = False,
) -> onnx.ModelProto:
    """A QDQ copy of ``model`` quantized as ``plan`` says, with activation ranges ``ranges``.

    ``for_integer_kernels``: the model is meant for ONNX Runtime's fused integer kernels; its
    non-8-bit tensors (16-bit activations, 4/16-bit weights) are then written as float
    arithmetic with the same rounding, because ONNX Runtime fuses 16-bit Q/DQ around Conv
    into kernels that give wrong results (measured: 9.7 dB instead of 70 dB SNR on
    YOLOX-Nano's first Conv).

    >>> qdq = build_qdq(float_model, QuantPlan(PROFILES["hailo8"]), ranges)  # doctest: +SKIP
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    work = _ensure_opset(work)
    if layers is None:
        layers = find_layers(work, plan.target)
    return _Builder(work, plan, ranges, for_integer_kernels).build(layers)
