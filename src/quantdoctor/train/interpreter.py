"""The trainable copy: an interpreter of quantdoctor's QDQ ONNX graph as a torch module.

The module is built from the QDQ model that the ``quantized`` context runs, so fake
quantization sits at exactly the points where that model quantizes, by construction:

- a ``QuantizeLinear → DequantizeLinear`` pair on an activation becomes a fake quantizer
  with the pair's scale and zero point (a buffer, or a parameter with learnable scales;
  passthrough ops that share their input's parameters share the same tensor);
- a weight ``DequantizeLinear`` becomes the layer's float weight (an ``nn.Parameter``,
  taken from the float model) fake-quantized with a scale recomputed from the current
  weight exactly as the QDQ builder computes it (symmetric, per tensor or per channel,
  clipped as the plan says, raised where the int32 bias would overflow);
- an int32 bias ``DequantizeLinear`` becomes the float bias (a parameter) quantized with
  scale = input scale × weight scale;
- every other node runs as a torch function (:mod:`quantdoctor.train.ops`).

Precision per layer (a16_w16, a8_w4 …) follows the plan the QDQ model was built with.

>>> module = QuantizedTorchModel(qdq, source_model, plan, ranges, layers)  # doctest: +SKIP
>>> module(torch.from_numpy(batch))["logits"]                               # doctest: +SKIP
>>> module.float_mode(); module(x)          # the float model, no quantizer  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import QuantdoctorError
from ..quant.calibration import Ranges
from ..quant.plan import WEIGHTED_OPS, LayerInfo, QuantPlan, weight_axis
from ..quant.target import QuantScheme
from . import fake_quant as fq
from .ops import MULTI_OUTPUT, OPS, UnsupportedOp, attributes, supported_ops, to_tensor

SCALE_SUFFIX, ZP_SUFFIX = "__scale", "__zero_point"

#: Integer range of each zero-point type: what ONNX Runtime's QuantizeLinear clamps to.
_DTYPE_RANGE = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT4: (0, 15),
    onnx.TensorProto.INT4: (-8, 7),
}


@dataclass
class _Node:
    """A plain ONNX node to run."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]


@dataclass
class _ActQuant:
    """Q → DQ on an activation: ``output = fake_quant(input)`` with a named scale."""

    name: str
    input: str
    output: str
    scale: str  # key in the module's ``scales``
    zero_point: float | torch.Tensor
    qmin: int
    qmax: int
    axis: int | None
    bits: int


@dataclass
class _WeightQuant:
    """A layer's quantized weight (and int32 bias): parameters, scheme and scale rules."""

    layer: LayerInfo
    weight: str  # ONNX initializer name of the float weight
    output: str  # the dequantized weight's tensor name in the QDQ graph
    scheme: QuantScheme
    axis: int | None
    stored_scale: np.ndarray
    clip: tuple[float, ...] | None
    bias: str | None = None  # ONNX name of the float bias, when it is an initializer
    bias_output: str | None = None  # the dequantized int32 bias, when the bias is quantized
    input_scale: str | None = None  # the scale key of the layer's 8-bit input quantizer
    extra: dict[str, Any] = field(default_factory=dict)


def _key(name: str, taken: set[str]) -> str:
    """A ParameterDict / buffer key for an ONNX name (unique, attribute-safe)."""
    base = re.sub(r"\W", "_", name) or "t"
    if base[0].isdigit():
        base = "t" + base
    key, k = base, 1
    while key in taken:
        key, k = f"{base}_{k}", k + 1
    taken.add(key)
    return key


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _weights_by_node(source: onnx.ModelProto, other: onnx.ModelProto) -> dict[str, Any]:
    """Initializer name in ``source`` → the value at the same place (same node, same input)
    in ``other``; None where ``other``'s node has no such input (a bias added later)."""
    inits = {i.name: i for i in other.graph.initializer}
    nodes = {n.name: n for n in other.graph.node}
    out: dict[str, Any] = {}
    for node in source.graph.node:
        twin = nodes.get(node.name)
        if twin is None or twin.op_type != node.op_type:
            continue
        for k, name in enumerate(node.input):
            if k >= len(twin.input) or not twin.input[k]:
                out[name] = None
            elif twin.input[k] in inits:
                out[name] = numpy_helper.to_array(inits[twin.input[k]]).astype(np.float32)
    return out


class QuantizedTorchModel(nn.Module):
    """quantdoctor's QDQ model as a trainable torch module (see the module docstring).

    ``forward(*inputs)`` takes the graph's inputs in order (float32 tensors, e.g. NCHW
    batches from ``engine.batches``) and returns a dict output name → tensor in the
    model's output order (``tuple(out.values())`` for positional use).

    Modes: :meth:`quant_mode` (default: the ``quantized`` context's arithmetic) and
    :meth:`float_mode` (every quantizer off: the float model). With
    ``learnable_scales=True`` the activation and weight scales are parameters trained with
    LSQ's gradient; zero points stay fixed.

    >>> module = to_torch(engine)                       # doctest: +SKIP
    >>> opt = torch.optim.SGD(module.parameters(), lr=1e-3)  # doctest: +SKIP
    """

    def __init__(
        self,
        qdq_model: onnx.ModelProto,
        float_model: onnx.ModelProto,
        plan: QuantPlan,
        ranges: Ranges,
        layers: Sequence[LayerInfo],
        learnable_scales: bool = False,
        lsq_grad_scale: bool = True,
    ) -> None:
        super().__init__()
        #: what :func:`from_torch` rebuilds the QDQ model from
        self.source_model = float_model
        self.plan = plan
        self.ranges = dict(ranges)
        self.layers = list(layers)
        self.learnable_scales = learnable_scales
        self.lsq_grad_scale = lsq_grad_scale
        self.quantize_activations = True
        self.quantize_weights = True
        self.opset = _opset(qdq_model)
        g = qdq_model.graph
        init_names = {x.name for x in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in init_names]
        self.output_names = [o.name for o in g.output]
        self._qdq_inits = {i.name: i for i in g.initializer}
        self._float_inits = {i.name: i for i in float_model.graph.initializer}
        self._keys: set[str] = set()
        self.weights = nn.ParameterDict()
        self.scales = nn.ParameterDict()
        self.weight_scales = nn.ParameterDict()
        #: ONNX name → key in ``weights`` (trainable float weights and biases)
        self.param_keys: dict[str, str] = {}
        #: ONNX scale initializer name → key in ``scales``
        self.scale_keys: dict[str, str] = {}
        self._consts: dict[str, str] = {}  # ONNX name → buffer name
        self._steps: list[_Node | _ActQuant | _WeightQuant] = []
        self._lower(g, layers)

    # --- building ------------------------------------------------------------------------
    def _lower(self, g: onnx.GraphProto, layers: Sequence[LayerInfo]) -> None:
        consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in g.node:
            for k, i in enumerate(n.input):
                consumers.setdefault(i, []).append((n, k))
        by_layer = {layer.name: layer for layer in layers}
        paired: set[str] = set()
        weight_dq: dict[str, onnx.NodeProto] = {}  # DQ output → DQ node
        for n in g.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in self._qdq_inits:
                weight_dq[n.output[0]] = n
        act_scale: dict[str, tuple[str, int]] = {}  # dequantized tensor → (scale key, bits)
        for node in g.node:
            if node.name in paired or (node.output and node.output[0] in weight_dq):
                continue
            if node.op_type == "QuantizeLinear":
                step = self._act_quant(node, consumers)
                paired.add(step.name)
                act_scale[step.output] = (step.scale, step.bits)
                self._steps.append(step)
            elif node.op_type == "DequantizeLinear":
                raise QuantdoctorError(
                    f"node '{node.name}': a DequantizeLinear without its QuantizeLinear is not "
                    "a structure quantdoctor's QDQ builder writes; convert the model quantdoctor "
                    "quantized (engine.model('quantized'))"
                )
            elif node.op_type == "Constant":
                self._add_const(node.output[0], attributes(node))
            else:
                self._add_node(node, weight_dq, by_layer, act_scale)

    def _act_quant(
        self, q: onnx.NodeProto, consumers: dict[str, list[tuple[onnx.NodeProto, int]]]
    ) -> _ActQuant:
        users = consumers.get(q.output[0], [])
        if len(users) != 1 or users[0][0].op_type != "DequantizeLinear":
            raise QuantdoctorError(
                f"node '{q.name}': a QuantizeLinear must feed exactly one DequantizeLinear"
            )
        dq = users[0][0]
        if list(dq.input[1:]) != list(q.input[1:]):
            raise QuantdoctorError(f"node '{dq.name}': its scale/zero point differ from its Q")
        zp_init = self._qdq_inits[q.input[2]]
        qmin, qmax = _DTYPE_RANGE[zp_init.data_type]
        zp = numpy_helper.to_array(zp_init).astype(np.float64)
        scale = numpy_helper.to_array(self._qdq_inits[q.input[1]]).astype(np.float32)
        if q.input[1] not in self.scale_keys:
            key = _key(q.input[1], self._keys)
            self.scale_keys[q.input[1]] = key
            self.scales[key] = nn.Parameter(
                torch.from_numpy(scale.copy()), requires_grad=self.learnable_scales
            )
        axis = attributes(q).get("axis", 1) if scale.ndim else None
        bits = int(math.log2(qmax - qmin + 1))
        return _ActQuant(
            dq.name,
            q.input[0],
            dq.output[0],
            self.scale_keys[q.input[1]],
            float(zp.reshape(-1)[0]) if zp.size == 1 else torch.from_numpy(zp.astype(np.float32)),
            qmin,
            qmax,
            axis,
            bits,
        )

    def _add_const(self, name: str, attrs: dict[str, Any]) -> None:
        if "value" in attrs:
            value = to_tensor(attrs["value"])
        elif "value_float" in attrs or "value_int" in attrs:
            v = attrs.get("value_float", attrs.get("value_int"))
            value = torch.tensor(v, dtype=torch.float32 if "value_float" in attrs else torch.int64)
        elif "value_floats" in attrs or "value_ints" in attrs:
            v = attrs.get("value_floats", attrs.get("value_ints"))
            value = torch.tensor(v, dtype=torch.float32 if "value_floats" in attrs else torch.int64)
        else:
            raise QuantdoctorError(f"Constant '{name}': unsupported attribute {sorted(attrs)}")
        buf = _key("const_" + name, self._keys)
        self.register_buffer(buf, value)
        self._consts[name] = buf

    def _float_array(self, name: str) -> np.ndarray:
        init = self._float_inits.get(name) or self._qdq_inits.get(name)
        if init is None:
            raise QuantdoctorError(f"initializer '{name}' is missing from the float model")
        return numpy_helper.to_array(init)

    def _add_param(self, name: str) -> None:
        if name not in self.param_keys:
            key = _key(name, self._keys)
            self.param_keys[name] = key
            array = self._float_array(name).astype(np.float32)
            self.weights[key] = nn.Parameter(torch.from_numpy(array.copy()))

    def _add_node(
        self,
        node: onnx.NodeProto,
        weight_dq: dict[str, onnx.NodeProto],
        by_layer: dict[str, LayerInfo],
        act_scale: dict[str, tuple[str, int]],
    ) -> None:
        if node.op_type not in OPS and node.op_type not in MULTI_OUTPUT:
            raise QuantdoctorError(
                f"node '{node.name}': the op {node.op_type} is not supported by "
                f"quantdoctor.train (supported: {', '.join(supported_ops())})"
            )
        weighted = node.op_type in WEIGHTED_OPS
        dq_inputs = [i for i in node.input[1:3] if i in weight_dq]
        if weighted and dq_inputs:
            self._steps.append(self._weight_quant(node, weight_dq, by_layer, act_scale))
        for k, name in enumerate(node.input):
            if not name or name in weight_dq:
                continue
            if (
                weighted
                and k in (1, 2)
                and name in self._float_inits
                and numpy_helper.to_array(self._float_inits[name]).dtype.kind == "f"
            ):
                self._add_param(name)
                continue
            if name in self._qdq_inits and name not in self._consts:
                buf = _key("init_" + name, self._keys)
                self.register_buffer(buf, to_tensor(numpy_helper.to_array(self._qdq_inits[name])))
                self._consts[name] = buf
        self._steps.append(
            _Node(node.op_type, node.name, list(node.input), list(node.output), attributes(node))
        )

    def _weight_quant(
        self,
        node: onnx.NodeProto,
        weight_dq: dict[str, onnx.NodeProto],
        by_layer: dict[str, LayerInfo],
        act_scale: dict[str, tuple[str, int]],
    ) -> _WeightQuant:
        layer = by_layer.get(node.name)
        if layer is None or layer.weight is None:
            raise QuantdoctorError(f"node '{node.name}': quantized weights but not a known layer")
        scheme = self.plan.weight_scheme(layer)
        if scheme is None:
            raise QuantdoctorError(f"node '{node.name}': the plan does not quantize its weights")
        w_dq = weight_dq.get(node.input[1])
        if w_dq is None:
            raise QuantdoctorError(f"node '{node.name}': its bias is quantized but not its weight")
        w = self._float_array(layer.weight)
        given = self.plan.weight_scale(layer)  # imported (quantized_model): fixed scales
        if given is not None:
            axis = weight_axis(node, w.ndim) if len(given) > 1 else None
        else:
            axis = weight_axis(node, w.ndim) if scheme.per_channel else None
        step = _WeightQuant(
            layer,
            layer.weight,
            node.input[1],
            scheme,
            axis,
            numpy_helper.to_array(self._qdq_inits[w_dq.input[1]]).astype(np.float32),
            self.plan.weight_range(layer),
        )
        if given is not None:
            step.extra["fixed_scale"] = True
        self._add_param(layer.weight)
        if node.input[0] in act_scale and act_scale[node.input[0]][1] == 8 and scheme.bits == 8:
            step.input_scale = act_scale[node.input[0]][0]
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            if bias in weight_dq:
                step.bias_output = bias
                base = weight_dq[bias].input[0]  # <node>__<bias>__quantized
                bias = base[len(node.name) + 2 : -len("__quantized")]
            if bias in self._float_inits:
                step.bias = bias
                self._add_param(bias)
        if self.learnable_scales:
            key = _key("w_" + layer.name, self._keys)
            step.extra["scale_key"] = key
            self.weight_scales[key] = nn.Parameter(torch.from_numpy(step.stored_scale.copy()))
        return step

    # --- modes ---------------------------------------------------------------------------
    def float_mode(self) -> QuantizedTorchModel:
        """Run without any quantizer: the float model (returns self)."""
        self.quantize_activations = self.quantize_weights = False
        return self

    def quant_mode(self) -> QuantizedTorchModel:
        """Run with every quantizer of the QDQ model on (returns self)."""
        self.quantize_activations = self.quantize_weights = True
        return self

    # --- access ---------------------------------------------------------------------------
    def onnx_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable float weights and biases by their ONNX initializer names."""
        return {name: self.weights[key] for name, key in self.param_keys.items()}

    def activation_scales(self) -> dict[str, torch.Tensor]:
        """The activation scales by their ONNX initializer names (``<tensor>__scale``)."""
        return {name: self.scales[key] for name, key in self.scale_keys.items()}

    def weight_steps(self) -> list[_WeightQuant]:
        return [s for s in self._steps if isinstance(s, _WeightQuant)]

    def activation_steps(self) -> list[_ActQuant]:
        return [s for s in self._steps if isinstance(s, _ActQuant)]

    def load_weights(self, model: onnx.ModelProto) -> None:
        """Copy the weights and biases of a float model of the same graph into the
        parameters, matched node by node (names of initializers may differ: bias correction
        renames the biases it edits); a bias the model lacks becomes zero. The model the
        module writes back into (:attr:`source_model`) does not change."""
        values = _weights_by_node(self.source_model, model)
        with torch.no_grad():
            for name, param in self.onnx_parameters().items():
                if name not in values:
                    continue
                if values[name] is None:
                    param.zero_()
                else:
                    param.copy_(torch.from_numpy(values[name]))

    # --- running ---------------------------------------------------------------------------
    def weight_scale(
        self,
        step: _WeightQuant,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The weight scale of a layer for the current weights, as the QDQ builder would
        compute it (or from the learnable scale); for ``weight`` and ``bias`` instead of the
        layer's parameters where given (a folded BatchNorm: :mod:`quantdoctor.train.batchnorm`)."""
        w = self.weights[self.param_keys[step.weight]] if weight is None else weight
        qmax = step.scheme.qmax
        if step.extra.get("fixed_scale") and not self.learnable_scales:
            # the scales of a QDQ model made elsewhere stay as given, as in the QDQ builder
            fixed = torch.from_numpy(step.stored_scale.copy())
            return fixed.reshape(()) if step.axis is None else fixed.reshape(-1)
        cap = None if step.clip is None else torch.tensor(step.clip, dtype=torch.float64)
        if self.learnable_scales:
            p = self.weight_scales[step.extra["scale_key"]]
            if self.lsq_grad_scale:
                p = fq.grad_scale(p, 1.0 / math.sqrt(max(w.numel() / max(p.numel(), 1), 1) * qmax))
            cap = p.double() * qmax
            scale = self._capped_scale(w, qmax, step.axis, cap)
        else:
            scale = fq.weight_scale(w, qmax, step.axis, cap)
        b = bias
        if b is None and step.bias is not None:
            b = self.weights[self.param_keys[step.bias]]
        s_in = step.input_scale
        if b is not None and s_in is not None and b.ndim == 1 and scale.numel() in (1, b.numel()):
            scale = fq.bias_safe_scale(scale, b, self.scales[s_in])
        return scale

    @staticmethod
    def _capped_scale(
        w: torch.Tensor, qmax: int, axis: int | None, cap: torch.Tensor
    ) -> torch.Tensor:
        """``min(max|w|, cap) / qmax`` with the gradient flowing into ``cap``."""
        a = w.detach().double().abs()
        amax = a.amax() if axis is None else a.movedim(axis, 0).reshape(a.shape[axis], -1).amax(1)
        scale = torch.minimum(amax, cap.reshape(amax.shape)) / qmax
        return torch.where(scale > 0, scale, torch.ones_like(scale)).float()

    def _act_scale(self, step: _ActQuant, x: torch.Tensor) -> torch.Tensor:
        s = self.scales[step.scale]
        if self.learnable_scales and self.lsq_grad_scale:
            n = max(x[0].numel() if x.ndim else 1, 1)
            s = fq.grad_scale(s, 1.0 / math.sqrt(n * step.qmax))
        return s.clamp_min(1e-12) if self.learnable_scales else s

    def _run_weight(self, step: _WeightQuant, env: dict[str, torch.Tensor]) -> None:
        w = self.weights[self.param_keys[step.weight]]
        b = self.weights[self.param_keys[step.bias]] if step.bias is not None else None
        if not self.quantize_weights:
            env[step.output] = w
            if step.bias_output is not None and b is not None:
                env[step.bias_output] = b
            return
        scale = self.weight_scale(step)
        env[step.output] = fq.fake_quantize_weight(
            w, scale, step.scheme.qmin, step.scheme.qmax, step.axis
        )
        if step.bias_output is not None and b is not None:
            if step.input_scale is None or not self.quantize_activations:
                env[step.bias_output] = b  # no input scale to quantize the bias with
            else:
                s_in = self.scales[step.input_scale]
                env[step.bias_output] = fq.fake_quantize_bias(b, s_in, scale)

    def _get(self, name: str, env: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self.param_keys:
            return self.weights[self.param_keys[name]]
        if name in self._consts:
            return getattr(self, self._consts[name])
        raise QuantdoctorError(f"tensor '{name}' is used before it is computed")

    def _run_node(self, step: _Node, env: dict[str, torch.Tensor]) -> None:
        inputs = [self._get(i, env) for i in step.inputs]
        try:
            if step.op in MULTI_OUTPUT:
                outs = MULTI_OUTPUT[step.op](inputs, step.attrs, self.opset, len(step.outputs))
            else:
                outs = OPS[step.op](inputs, step.attrs, self.opset)
        except UnsupportedOp as err:
            raise QuantdoctorError(
                f"node '{step.name}' ({step.op}): {err} is not supported by quantdoctor.train"
            ) from None
        if isinstance(outs, torch.Tensor):
            outs = [outs]
        for name, value in zip(step.outputs, outs, strict=False):
            if name:
                env[name] = value

    def node_step(self, node_name: str) -> int:
        """The position in :meth:`run_steps` order of the plain node named ``node_name``."""
        for k, step in enumerate(self._steps):
            if isinstance(step, _Node) and step.name == node_name:
                return k
        raise QuantdoctorError(f"the torch copy has no node '{node_name}'")

    def weight_step(self, layer_name: str) -> tuple[int, _WeightQuant]:
        """The position and the weight quantizer of a layer with quantized weights."""
        for k, step in enumerate(self._steps):
            if isinstance(step, _WeightQuant) and step.layer.name == layer_name:
                return k, step
        raise QuantdoctorError(f"layer '{layer_name}' has no quantized weight in the torch copy")

    def node_inputs(self, node_name: str) -> list[str]:
        """The input tensor names (QDQ graph) of a plain node."""
        step = self._steps[self.node_step(node_name)]
        assert isinstance(step, _Node)
        return list(step.inputs)

    def run_node_with(
        self, node_name: str, env: dict[str, torch.Tensor], replace: dict[int, torch.Tensor]
    ) -> list[torch.Tensor]:
        """Run one plain node on ``env`` with some of its inputs replaced (by position);
        returns its outputs (``env`` is not changed). AdaRound's per-layer objective."""
        step = self._steps[self.node_step(node_name)]
        assert isinstance(step, _Node)
        inputs = [replace.get(k, self._get(i, env)) for k, i in enumerate(step.inputs)]
        outs = OPS[step.op](inputs, step.attrs, self.opset)
        return [outs] if isinstance(outs, torch.Tensor) else list(outs)

    def _last_use(self) -> dict[str, int]:
        if not hasattr(self, "_last_use_cache"):
            last: dict[str, int] = {}
            for k, step in enumerate(self._steps):
                names = (
                    step.inputs
                    if isinstance(step, _Node)
                    else ([step.input] if isinstance(step, _ActQuant) else [])
                )
                for name in names:
                    last[name] = k
            for name in self.output_names:
                last[name] = len(self._steps)
            self._last_use_cache = last
        return self._last_use_cache

    def run_steps(self, env: dict[str, torch.Tensor], start: int, stop: int) -> None:
        """Run steps ``[start, stop)`` on ``env`` in place, dropping the tensors that no step
        from ``stop`` on reads (to walk the graph layer by layer over many images)."""
        for step in self._steps[start:stop]:
            self._run_step(step, env)
        last = self._last_use()
        for name in [n for n in env if last.get(n, -1) < stop]:
            del env[name]

    def _run_step(
        self, step: _Node | _ActQuant | _WeightQuant, env: dict[str, torch.Tensor]
    ) -> None:
        if isinstance(step, _Node):
            self._run_node(step, env)
        elif isinstance(step, _ActQuant):
            x = env[step.input]
            env[step.output] = (
                fq.fake_quantize(
                    x, self._act_scale(step, x), step.zero_point, step.qmin, step.qmax, step.axis
                )
                if self.quantize_activations
                else x
            )
        else:
            self._run_weight(step, env)

    def run(
        self, inputs: dict[str, torch.Tensor], keep: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the graph on named inputs; returns the graph outputs plus the intermediate
        tensors named in ``keep`` (QDQ-graph names: ``<t>`` is the dequantized value of a
        quantized tensor, ``<t>__float`` the value before its quantizer)."""
        env: dict[str, torch.Tensor] = dict(inputs)
        for step in self._steps:
            self._run_step(step, env)
        wanted = list(self.output_names) + [k for k in (keep or ()) if k in env]
        return {name: env[name] for name in dict.fromkeys(wanted)}

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise QuantdoctorError(
                f"the model takes {len(self.input_names)} input(s) "
                f"({', '.join(self.input_names)}), got {len(inputs)}"
            )
        return self.run(dict(zip(self.input_names, inputs, strict=True)))
