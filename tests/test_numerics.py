"""Direct tests of the numerics against independent numpy references (issue #14, "Trust").

The reference quantizer here is written from the ONNX operator definitions, not from
quantdoctor's code: QuantizeLinear ``q = saturate(round_half_even(x / scale) + zero_point)``,
DequantizeLinear ``x = (q - zero_point) * scale``, scale and zero point from a range that
contains 0, symmetric narrow-range weights (zero point 0, ``[-(2**(b-1) - 1), 2**(b-1) - 1]``)
and an int32 bias with scale ``input scale x weight scale``. Tiny Conv/Gemm/MatMul models are
quantized through the real plan and QDQ builder; what the built graph holds and what ONNX
Runtime computes with it are compared with the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import onnx
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from quantdoctor.engine import OrtRunner
from quantdoctor.quant import PROFILES, QuantPlan, Target, build_qdq, find_layers
from quantdoctor.quant.target import PRECISIONS

INT32_MAX = 2**31 - 1


# --- the reference quantizer ---------------------------------------------------------------
@dataclass(frozen=True)
class RefScheme:
    bits: int
    signed: bool
    narrow: bool = False  # symmetric weights: [-(2**(b-1) - 1), 2**(b-1) - 1]

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + int(self.narrow)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def dtype(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}"


def ref_activation_params(lo: float, hi: float, s: RefScheme) -> tuple[np.float32, int]:
    """Asymmetric: the range widened to contain 0 (zero exact), mapped onto [qmin, qmax]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (s.qmax - s.qmin)
    zero_point = int(np.clip(np.rint(s.qmin - lo / scale), s.qmin, s.qmax))
    return np.float32(scale), zero_point


def ref_weight_scale(w: np.ndarray, s: RefScheme, axis: int | None) -> np.ndarray:
    """Symmetric: max |w| (of the tensor, or of each output channel) onto qmax."""
    a = np.abs(w.astype(np.float64))
    amax = a.max() if axis is None else a.max(axis=tuple(i for i in range(w.ndim) if i != axis))
    return np.asarray(amax / s.qmax, np.float32)


def _along(v: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or np.ndim(v) == 0:
        return np.asarray(v)
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(v).reshape(shape)


def ref_quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: int | np.ndarray,
    s: RefScheme,
    axis: int | None = None,
    exact: bool = False,
) -> np.ndarray:
    """QuantizeLinear. ``exact``: the quotient in float64 (weights, quantized offline); else
    in float32, as QuantizeLinear computes for a float32 input."""
    dt = np.float64 if exact else np.float32
    sc = _along(np.asarray(scale, np.float32), x.ndim, axis).astype(dt)
    q = np.rint(x.astype(dt) / sc) + _along(np.asarray(zero_point), x.ndim, axis)
    return np.clip(q, s.qmin, s.qmax).astype(np.int64)


def ref_dequantize(
    q: np.ndarray, scale: np.ndarray, zero_point: int | np.ndarray = 0, axis: int | None = None
) -> np.ndarray:
    """DequantizeLinear (float32 arithmetic)."""
    z = _along(np.asarray(zero_point, np.int64), q.ndim, axis)
    return (q - z).astype(np.float32) * _along(np.asarray(scale, np.float32), q.ndim, axis)


def ref_bias(b: np.ndarray, s_in: np.float32, s_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias: scale = input scale x weight scale (float32), q = round(b / scale)."""
    scale = np.broadcast_to(np.float32(s_in) * np.asarray(s_w, np.float32), b.shape)
    q = np.rint(b.astype(np.float64) / scale.astype(np.float64))
    return np.clip(q, -INT32_MAX - 1, INT32_MAX).astype(np.int64), scale.astype(np.float32)


# --- tiny models ---------------------------------------------------------------------------
def _model(
    nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "numerics",
        inputs,
        outputs,
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # N, C, H, W, kh, kw
    out = np.einsum("nchwij,ocij->nohw", windows, w, dtype=np.float32)
    return out + b.reshape(1, -1, 1, 1)


Hook = Callable[[str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Weighted:
    """A layer with a weight: the tensor it reads, its weight and bias initializers and the
    weight's output-channel axis."""

    input: str
    weight: str
    bias: str | None
    axis: int


class Net:
    """A float model, its weights, inputs, and a numpy forward that calls ``hook`` on every
    tensor the plan quantizes (to quantize it there)."""

    #: layer node -> the tensor whose quantized value it produces, in graph order
    OUTPUTS: ClassVar[dict[str, str]]
    WEIGHTED: ClassVar[dict[str, Weighted]]

    def __init__(self, model: onnx.ModelProto, x: np.ndarray, params: dict) -> None:
        self.model, self.x, self.params = model, x, params

    def forward(
        self,
        hook: Hook,
        weights: dict[str, np.ndarray] | None = None,
        biases: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError


class ConvGemm(Net):
    """x[N,3,6,6] → Conv(pads 1)+bias → Relu → Flatten → Gemm(transB=1)+bias → y."""

    OUTPUTS: ClassVar = {"conv1": "r1", "fc": "y"}
    WEIGHTED: ClassVar = {
        "conv1": Weighted("x", "w1", "b1", 0),
        "fc": Weighted("r1", "w2", "b2", 0),
    }

    def __init__(self, seed: int, dead_channel: bool = False) -> None:
        rng = np.random.default_rng(seed)
        w1 = (rng.normal(size=(4, 3, 3, 3)) * 0.4).astype(np.float32)
        b1 = (rng.normal(size=4) * 0.2).astype(np.float32)
        if dead_channel:  # a near-dead channel with a bias: its int32 bias would overflow
            w1[0] *= 1e-8
            b1[0] = 3.0
        p = {
            "w1": w1,
            "b1": b1,
            "w2": (rng.normal(size=(10, 144)) * 0.1).astype(np.float32),
            "b2": (rng.normal(size=10) * 0.5).astype(np.float32),
        }
        nodes = [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Flatten", ["r1"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
        ]
        model = _model(
            nodes,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
            p,
        )
        x = (rng.normal(size=(16, 3, 6, 6)) * 1.5 + 0.3).astype(np.float32)
        super().__init__(model, x, p)

    def forward(
        self,
        hook: Hook,
        weights: dict[str, np.ndarray] | None = None,
        biases: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        w = {**self.params, **(weights or {})}
        b = {**self.params, **(biases or {})}
        t = {"x": hook("x", self.x)}
        t["r1"] = hook("r1", np.maximum(conv2d(t["x"], w["w1"], b["b1"], 1), 0))
        f = t["r1"].reshape(len(self.x), -1)  # Flatten shares r1's quantization: exact
        t["y"] = hook("y", (f @ w["w2"].T + b["b2"]).astype(np.float32))
        return t


class GemmMatMul(Net):
    """x[N,8] → Gemm(transB=0)+bias → g → MatMul → m → Add(bias) → y."""

    OUTPUTS: ClassVar = {"gemm": "g", "matmul": "m", "add": "y"}
    WEIGHTED: ClassVar = {
        "gemm": Weighted("x", "w1", "b1", 1),
        "matmul": Weighted("g", "w2", None, 1),
    }

    def __init__(self, seed: int, tiny_weights: bool = False) -> None:
        rng = np.random.default_rng(seed)
        w1 = (rng.normal(size=(8, 6)) * 0.5).astype(np.float32)
        if tiny_weights:  # every weight near zero, a normal bias: a per-tensor raise
            w1 *= 1e-8
        p = {
            "w1": w1,
            "b1": (rng.normal(size=6) * 0.3).astype(np.float32),
            "w2": (rng.normal(size=(6, 5)) * 0.5).astype(np.float32),
            "b2": (rng.normal(size=5) * 0.3).astype(np.float32),
        }
        nodes = [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], name="gemm"),
            helper.make_node("MatMul", ["g", "w2"], ["m"], name="matmul"),
            helper.make_node("Add", ["m", "b2"], ["y"], name="add"),
        ]
        model = _model(
            nodes,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
            p,
        )
        x = (rng.normal(size=(32, 8)) * 2.0 - 0.5).astype(np.float32)
        super().__init__(model, x, p)

    def forward(
        self,
        hook: Hook,
        weights: dict[str, np.ndarray] | None = None,
        biases: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        w = {**self.params, **(weights or {})}
        b = {**self.params, **(biases or {})}
        t = {"x": hook("x", self.x)}
        t["g"] = hook("g", (t["x"] @ w["w1"] + b["b1"]).astype(np.float32))
        t["m"] = hook("m", (t["g"] @ w["w2"]).astype(np.float32))
        t["y"] = hook("y", (t["m"] + self.params["b2"]).astype(np.float32))
        return t


def float_ranges(net: Net) -> dict[str, tuple[float, float]]:
    t = net.forward(lambda name, v: v)
    return {k: (float(v.min()), float(v.max())) for k, v in t.items()}


# --- reading the built graph ---------------------------------------------------------------
class Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.by_name = {n.name: n for n in model.graph.node}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def _quantized(self, tensor: str) -> str:
        """The tensor holding ``tensor``'s quantized value: itself, or for a graph input
        (which keeps its name for the float value) the end of the quantizer reading it."""
        if tensor in self.producer:
            return tensor
        (node,) = [n for n in self.consumers[tensor] if n.op_type in ("QuantizeLinear", "Div")]
        while node.op_type not in ("DequantizeLinear", "Mul"):
            (node,) = self.consumers[node.output[0]]
        return node.output[0]

    def activation(self, tensor: str) -> tuple[np.float32, int, str | tuple[int, int]]:
        """(scale, zero point, integer type or (qmin, qmax)) of the quantizer writing
        ``tensor``: a DequantizeLinear, or the float ops that emulate one (Div, Round, Add,
        Clip, Sub, Mul)."""
        node = self.producer[self._quantized(tensor)]
        if node.op_type == "DequantizeLinear":
            q = self.producer[node.input[0]]
            assert q.op_type == "QuantizeLinear" and list(q.input[1:]) == list(node.input[1:])
            zp = self.inits[node.input[2]]
            return self.inits[node.input[1]], int(zp), str(zp.dtype)
        assert node.op_type == "Mul", node.op_type
        sub = self.producer[node.input[0]]
        clip = self.producer[sub.input[0]]
        add = self.producer[clip.input[0]]
        rnd = self.producer[add.input[0]]
        div = self.producer[rnd.input[0]]
        chain = [n.op_type for n in (sub, clip, add, rnd, div)]
        assert chain == ["Sub", "Clip", "Add", "Round", "Div"]
        assert div.input[1] == node.input[1] and add.input[1] == sub.input[1]
        zp = float(self.inits[sub.input[1]])
        assert zp == int(zp)
        bounds = (int(self.inits[clip.input[1]]), int(self.inits[clip.input[2]]))
        return self.inits[node.input[1]], int(zp), bounds

    def dequantized(
        self, tensor: str
    ) -> tuple[str, np.ndarray | None, np.ndarray | None, int | None, np.ndarray]:
        """A weight/bias input: (integer type, q, scale, axis, dequantized) from its
        DequantizeLinear, or ("float", None, None, None, value) for a float constant."""
        if tensor in self.inits:
            return "float", None, None, None, self.inits[tensor]
        node = self.producer[tensor]
        assert node.op_type == "DequantizeLinear"
        q, scale, zp = (self.inits[i] for i in node.input)
        assert not np.any(zp.astype(np.int64)), "symmetric: zero point 0"
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        axis = axis if scale.ndim else None
        return (
            str(q.dtype),
            q.astype(np.int64),
            scale,
            axis,
            ref_dequantize(q.astype(np.int64), scale, 0, axis),
        )


# --- quantizing through quantdoctor and comparing -----------------------------------------
def signed_activations(target: Target) -> Target:
    return replace(target, activations=replace(target.activations, signed=True))


def plan_for(target: Target, precision: str) -> QuantPlan:
    plan = QuantPlan(target)
    return plan if precision == "a8_w8" else plan.set_precision(["*"], precision)


def reference(net: Net, target: Target, precision: str, ranges: dict) -> dict:
    """What each quantized tensor, weight and bias must be, and the fake-quantized forward."""
    a_bits, w_bits = PRECISIONS[precision]
    signed = target.activations.signed
    graph_input = RefScheme(target.activations.bits, signed)  # the target's default
    act = RefScheme(a_bits, signed)
    wsch = RefScheme(w_bits, True, narrow=True)
    per_channel = target.weights.per_channel
    schemes = {"x": graph_input, **dict.fromkeys(net.OUTPUTS.values(), act)}
    acts = {t: (*ref_activation_params(*ranges[t], s), s) for t, s in schemes.items()}
    weights, biases, wq, bq = {}, {}, {}, {}
    for node, layer in net.WEIGHTED.items():
        w = net.params[layer.weight]
        ax = layer.axis if per_channel else None
        s_w = ref_weight_scale(w, wsch, ax)
        s_in, _, in_scheme = acts[layer.input]
        if layer.bias is not None and w_bits == 8 and in_scheme.bits == 8:
            b = net.params[layer.bias]
            # the weight scale is raised where the int32 bias would overflow
            need = np.abs(b.astype(np.float64)) / (np.float64(s_in) * (2**31 - 2**8))
            s_w = np.asarray(np.maximum(s_w, need if ax is not None else need.max()), np.float32)
            qb, sb = ref_bias(b, s_in, s_w)
            bq[node] = (qb, sb)
            biases[layer.bias] = ref_dequantize(qb, sb, 0, 0)
        q = ref_quantize(w, s_w, 0, wsch, ax, exact=True)
        wq[node] = (q, s_w, ax, wsch)
        weights[layer.weight] = ref_dequantize(q, s_w, 0, ax)

    def hook(name: str, v: np.ndarray) -> np.ndarray:
        scale, zp, s = acts[name]
        return ref_dequantize(ref_quantize(v, scale, zp, s), scale, zp)

    out = net.forward(hook, weights, biases)
    return {"acts": acts, "weights": wq, "biases": bq, "out": out}


CASES = [
    (profile, precision, signed)
    for profile in ("hailo8", "int8")
    for precision in PROFILES[profile].precisions
    for signed in (False, True)
    if not signed or precision in ("a8_w8", "a16_w16")
]


@pytest.mark.parametrize("integer", [False, True], ids=["emulated", "integer_kernels"])
@pytest.mark.parametrize(("profile", "precision", "signed"), CASES)
@pytest.mark.parametrize("net_class", [ConvGemm, GemmMatMul])
def test_qdq_builder_equals_the_reference_quantizer(
    net_class: type, profile: str, precision: str, signed: bool, integer: bool
) -> None:
    net = net_class(seed=7)
    target = signed_activations(PROFILES[profile]) if signed else PROFILES[profile]
    ranges = float_ranges(net)
    qdq = build_qdq(
        net.model,
        plan_for(target, precision),
        ranges,
        find_layers(net.model, target),
        for_integer_kernels=integer,
    )
    onnx.checker.check_model(qdq)
    ref = reference(net, target, precision, ranges)
    g = Graph(qdq)
    fake = integer and precision != "a8_w8"

    for tensor, (scale, zp, s) in ref["acts"].items():
        got_scale, got_zp, kind = g.activation(tensor)
        assert got_scale.dtype == np.float32 and got_scale.shape == ()
        assert got_scale == pytest.approx(scale, rel=1e-6), tensor
        assert got_zp == zp, tensor
        emulated = integer and s.bits != 8
        assert kind == ((s.qmin, s.qmax) if emulated else s.dtype), tensor

    for node_name, (q, s_w, axis, wsch) in ref["weights"].items():
        node = g.by_name[node_name]
        kind, got_q, got_s, got_axis, deq = g.dequantized(node.input[1])
        if fake and wsch.bits != 8:
            assert kind == "float"  # no integer kernel takes them: dequantized constants
        else:
            assert kind == wsch.dtype and got_axis == axis
            assert np.array_equal(got_q, q), node_name
            assert np.allclose(got_s, s_w, rtol=1e-6, atol=0), node_name
            assert got_q.min() >= wsch.qmin and got_q.max() <= wsch.qmax
        assert np.allclose(deq, ref_dequantize(q, s_w, 0, axis), rtol=1e-6, atol=0)

    for node_name, layer in net.WEIGHTED.items():
        if layer.bias is None:
            continue
        kind, got_q, got_s, _, deq = g.dequantized(g.by_name[node_name].input[2])
        if node_name in ref["biases"]:
            qb, sb = ref["biases"][node_name]
            assert kind == "int32"
            assert np.array_equal(got_q, qb), node_name
            assert np.allclose(got_s, sb, rtol=1e-6, atol=0)
        else:  # a 16-bit input or non-8-bit weights: the bias stays float
            assert kind == "float" and np.array_equal(deq, net.params[layer.bias])

    # ONNX Runtime running the QDQ graph computes the reference's fake-quantized forward, up
    # to float summation order (an intermediate value on a rounding boundary may move one
    # step): within one quantization step of the output, and almost everywhere exact.
    optimization = "all" if integer else "emulate"
    got = OrtRunner(qdq, optimization).run(net.x)["y"]
    want = ref["out"]["y"]
    out_scale = float(ref["acts"]["y"][0])
    assert np.abs(got - want).max() <= 1.01 * out_scale
    assert np.mean(np.abs(got - want) > 1e-3 * out_scale) < 0.02


@pytest.mark.parametrize("profile", ["hailo8", "int8"])
@pytest.mark.parametrize("net_class", [ConvGemm, GemmMatMul])
def test_weights_only_keeps_activations_float_on_integer_kernels(
    net_class: type, profile: str
) -> None:
    """ONNX Runtime's fused path once quantized the float input of a MatMul/Gemm with 8-bit
    weights to int8 on the fly (MatMulNBits, accuracy level 4): weights-only quantization got
    activation noise, 0.05 on outputs of about 2 (make_session now asks for float32)."""
    net = net_class(seed=7)
    target = PROFILES[profile]
    plan = QuantPlan(target).replace(quantize_activations=False)
    qdq = build_qdq(net.model, plan, {}, find_layers(net.model, target), for_integer_kernels=True)
    wsch = RefScheme(8, True, narrow=True)
    weights = {}
    for layer in net.WEIGHTED.values():
        ax = layer.axis if target.weights.per_channel else None
        w = net.params[layer.weight]
        s_w = ref_weight_scale(w, wsch, ax)
        weights[layer.weight] = ref_dequantize(ref_quantize(w, s_w, 0, wsch, ax, True), s_w, 0, ax)
    want = net.forward(lambda name, v: v, weights)["y"]
    got = OrtRunner(qdq, "all").run(net.x)["y"]
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("profile", "net_class", "kwargs"),
    [
        ("int8", ConvGemm, {"dead_channel": True}),  # per-channel: one channel raised
        ("hailo8", ConvGemm, {"dead_channel": True}),  # per-tensor: normal scale, no raise
        ("hailo8", GemmMatMul, {"tiny_weights": True}),  # per-tensor: the whole tensor raised
        ("int8", GemmMatMul, {"tiny_weights": True}),  # per-channel: the channels that overflow
    ],
)
def test_int32_bias_never_overflows(profile: str, net_class: type, kwargs: dict) -> None:
    net = net_class(seed=3, **kwargs)
    target = PROFILES[profile]
    ranges = float_ranges(net)
    qdq = build_qdq(net.model, QuantPlan(target), ranges, find_layers(net.model, target))
    ref = reference(net, target, "a8_w8", ranges)
    g = Graph(qdq)
    node = g.by_name[next(iter(net.WEIGHTED))]  # the first layer: its bias overflows
    layer = net.WEIGHTED[node.name]
    w, b = net.params[layer.weight], net.params[str(layer.bias)]
    ax = layer.axis if target.weights.per_channel else None
    plain = ref_weight_scale(w, RefScheme(8, True, True), ax)
    s_in = ref["acts"]["x"][0]
    would_overflow = np.abs(ref_bias(b, s_in, plain)[0]) >= INT32_MAX
    _, got_q, got_s, _, _ = g.dequantized(node.input[1])
    qb_kind, qb, sb, _, _ = g.dequantized(node.input[2])
    assert qb_kind == "int32" and np.abs(qb).max() < INT32_MAX
    raised = got_s > plain  # per channel, or one for the tensor
    if ax is not None:  # exactly the channels that would overflow are raised
        assert np.array_equal(raised, would_overflow)
    else:
        assert bool(raised) == bool(would_overflow.any())
    if would_overflow.any():
        fit = np.abs(b.astype(np.float64)) / (np.float64(s_in) * INT32_MAX)
        assert np.all(
            got_s.astype(np.float64) * (1 + 1e-6) >= (fit if ax is not None else fit.max())
        )
        assert np.abs(qb).max() > 2**30  # raised no further than needed
    assert np.array_equal(got_q, ref["weights"][node.name][0])
    assert np.array_equal(qb, ref["biases"][node.name][0])
    # the bias within half a step of its grid, up to float32 (the dead channel's output is
    # its bias)
    error = np.abs(ref_dequantize(qb, sb, 0, 0) - b)
    assert np.all(error <= 0.5 * sb * (1 + 1e-6) + np.spacing(np.abs(b)))
    got = OrtRunner(qdq, "emulate").run(net.x)["y"]
    out_scale = float(ref["acts"]["y"][0])
    assert np.abs(got - ref["out"]["y"]).max() <= 1.01 * out_scale


# --- percentile calibration: the tails -------------------------------------------------------
def two_sided_heavy_tails(n: int, seed: int) -> np.ndarray:
    """Skewed data with heavy tails on both sides: a log-normal right tail, a Pareto left tail
    of another weight and scale, and ties (a share of the values on a coarse grid)."""
    rng = np.random.default_rng(seed)
    right = rng.lognormal(0.0, 1.5, int(n * 0.7))
    left = -0.3 * rng.pareto(1.5, n - right.size)
    x = np.concatenate([right, left])
    tied = rng.random(n) < 0.2
    x[tied] = np.round(x[tied] * 4) / 4
    return rng.permutation(x).astype(np.float32)


def split(x: np.ndarray, cuts: list[int], name: str = "t") -> list[dict[str, np.ndarray]]:
    """Batches of uneven size, one of them empty."""
    edges = [0, *cuts, cuts[-1], x.size]
    return [{name: x[a:b]} for a, b in zip(edges[:-1], edges[1:], strict=True)]


@pytest.mark.parametrize("p", [99.99, 99.0])
@pytest.mark.parametrize("cap", [None, 10])  # the default one pass, or a second one
def test_percentile_observer_equals_numpy_on_heavy_two_sided_tails(
    p: float, cap: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantdoctor.quant import calibration as cal

    if cap is not None:
        monkeypatch.setattr(cal, "TAIL_CAP", cap)
    x = two_sided_heavy_tails(200_003, seed=11)
    negative = -np.abs(x) - 0.5  # all below 0: both bounds negative
    cuts = [7, 40_000, 40_001, 123_456]
    data = [
        {**b, "neg": n["t"]} for b, n in zip(split(x, cuts), split(negative, cuts), strict=True)
    ]
    passes = []
    got = cal.calibrate(lambda: passes.append(1) or data, ["t", "neg"], "percentile", p)
    assert len(passes) == (1 if cap is None else 2)
    for name, values in (("t", x), ("neg", negative)):
        lo, hi = got[name]
        assert (lo, hi) == (float(np.percentile(values, 100 - p)), float(np.percentile(values, p)))
        assert values.min() < lo < hi <= values.max()  # the tails are really cut
    assert got["t"][1] < x.max() and got["neg"][1] < 0


@pytest.mark.parametrize("percentiles", [(0.01, 99.99), (1.0, 99.0), (0.1, 99.0)])
def test_percentile_clipping_equals_numpy_over_batches(
    percentiles: tuple[float, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """activation_clipping's percentile mode: its low and high percentile of each tensor over
    all calibration batches, tensors measured in memory-bounded groups."""
    from quantdoctor.config import ClippingCommand
    from quantdoctor.quant.plan import LayerInfo
    from quantdoctor.quant.remedies import activation_clipping as ac

    tensors = {
        "a": two_sided_heavy_tails(60_001, seed=1),
        "b": 3.0 * two_sided_heavy_tails(45_000, seed=2)[::-1],
        "c": -np.abs(two_sided_heavy_tails(30_000, seed=3)),
    }
    cuts = {
        "a": [1, 9_000, 9_001, 50_000],
        "b": [2, 15_000, 15_001, 30_000],
        "c": [3, 10_000, 10_001, 20_000],
    }
    batches = [
        dict(zip(tensors, parts, strict=True))
        for parts in zip(
            *([b["t"] for b in split(v, cuts[k])] for k, v in tensors.items()), strict=True
        )
    ]
    passes: list[tuple[str, ...]] = []

    class Backend:
        target = PROFILES["hailo8"]
        layers = [LayerInfo(f"layer_{t}", "Conv", None, t) for t in tensors]
        ranges = {t: (float(v.min()), float(v.max())) for t, v in tensors.items()}

        def tensor_bytes(self, names: list[str]) -> dict[str, int]:
            return {n: tensors[n].nbytes for n in names}

        def float_tensors(self, names: list[str]):  # type: ignore[no-untyped-def]
            passes.append(tuple(names))
            for batch in batches:
                yield {n: batch[n] for n in names}

    one_a_pass = tensors["a"].nbytes + 1
    groups = ac.tensor_groups
    monkeypatch.setattr(ac, "tensor_groups", lambda names, sizes: groups(names, sizes, one_a_pass))
    remedy = ac.ActivationClipping(ClippingCommand(mode="percentile", values=list(percentiles)), 0)
    edit = remedy.apply(Backend())  # type: ignore[arg-type]
    assert passes == [("a",), ("b",), ("c",)]
    for name, values in tensors.items():
        want = tuple(float(np.percentile(values, q)) for q in percentiles)
        assert edit.ranges[name] == want, name
        assert values.min() < want[0] < want[1] <= values.max()  # ties at the top of "c"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("p", [99.99, 99.0, 90.0, 62.5])
def test_percentile_of_tiny_tensors_interpolates_between_samples(n: int, p: float) -> None:
    """Few values: the percentile falls between two samples (numpy's linear interpolation),
    the batches are single values."""
    from quantdoctor.quant.calibration import calibrate, clip_range

    x = np.random.default_rng(n).normal(size=n).astype(np.float32) * 10
    data = [{"t": x[i : i + 1]} for i in range(n)]
    assert calibrate(lambda: data, ["t"], "percentile", p)["t"] == (
        float(np.percentile(x, 100 - p)),
        float(np.percentile(x, p)),
    )
    lo, hi = clip_range(x, "percentile", [100 - p, p], None)
    assert (lo, hi) == (float(np.percentile(x, 100 - p)), float(np.percentile(x, p)))
    sorted_x = np.sort(x)
    position = (n - 1) * p / 100
    if position != int(position):  # between two samples: strictly between them
        assert sorted_x[int(position)] < hi < sorted_x[int(position) + 1]


@pytest.mark.parametrize("value", [3.25, -2.5, 0.0])
def test_percentile_of_a_constant_tensor_is_the_constant(value: float) -> None:
    from quantdoctor.quant.calibration import calibrate, clip_range

    x = np.full(10_000, value, np.float32)
    data = split(x, [1, 5_000, 5_001, 9_000])
    for p in (99.99, 99.0):
        assert calibrate(lambda: data, ["t"], "percentile", p)["t"] == (value, value)
        assert clip_range(x, "percentile", [100 - p, p], None) == (value, value)


# --- one SNR, one convention ---------------------------------------------------------------
def test_snr_db_known_values_and_its_caps() -> None:
    from quantdoctor.stats import MAX_SNR_DB, snr_db

    assert snr_db(100.0, 1.0) == 20.0
    assert snr_db(1.0, 100.0) == -20.0
    assert snr_db(2.0, 1.0) == pytest.approx(3.0103, abs=1e-4)
    assert isinstance(snr_db(100.0, 1.0), float)
    # no noise: the cap, finite (JSON has no Infinity), even for two all-zero tensors
    assert snr_db(5.0, 0.0) == MAX_SNR_DB and snr_db(0.0, 0.0) == MAX_SNR_DB
    # noise without signal: minus the cap
    assert snr_db(0.0, 3.0) == -MAX_SNR_DB
    # every value within the caps
    assert snr_db(1e300, 1e-300) == MAX_SNR_DB and snr_db(1e-300, 1e300) == -MAX_SNR_DB
    got = snr_db(np.array([100.0, 1.0, 5.0, 0.0, 0.0]), np.array([1.0, 100.0, 0.0, 0.0, 3.0]))
    assert isinstance(got, np.ndarray)
    assert got.tolist() == [20.0, -20.0, MAX_SNR_DB, MAX_SNR_DB, -MAX_SNR_DB]


def test_snr_db_between_arrays() -> None:
    from quantdoctor.stats import MAX_SNR_DB, snr_db_between

    ref = np.full((4, 25), 10.0, np.float32)  # signal 100 * 100
    assert snr_db_between(ref, ref + 1) == pytest.approx(20.0, abs=1e-12)  # noise 100
    assert snr_db_between(ref, ref) == MAX_SNR_DB
    assert snr_db_between(np.zeros(3), np.ones(3)) == -MAX_SNR_DB


def test_every_snr_of_the_checks_and_engine_follows_the_convention() -> None:
    """The layer statistics, the calibration coverage, the engine's per-layer noise and the
    fp_optimized check share one function; an exact tensor gives the cap, never inf or NaN
    (the coverage's clipping cost was inf - inf = NaN for values exactly on the grid)."""
    from quantdoctor.checks import calibration_stats as cs
    from quantdoctor.checks import layer_stats, layers, pipeline
    from quantdoctor.engine import subgraph
    from quantdoctor.stats import MAX_SNR_DB, snr_db

    for module in (layer_stats, layers, subgraph):
        assert module.snr_db is snr_db
    assert pipeline.snr_db_between.__module__ == "quantdoctor.stats"
    assert subgraph.MAX_SNR_DB == MAX_SNR_DB

    on_grid = np.arange(0, 256, dtype=np.float32) * np.float32(2 / 255)  # exactly the levels
    acc = cs.CoverageAccumulator(0.0, 2.0, PROFILES["hailo8"].activations, stride=1)
    acc.add(on_grid)
    summary = acc.summary()
    assert summary["snr_db"] == MAX_SNR_DB and summary["snr_without_clipping_db"] == MAX_SNR_DB
    assert summary["clipping_cost_db"] == 0.0

    noise = subgraph.OutputNoise(["y"])
    ref = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]], np.float32)
    noise.add("y", ref, ref + np.array([[0.1, 0.0], [0.5, 0.0], [0.0, 0.0]], np.float32))
    per_image = noise.per_image_snr_db("y")  # noise; noise without signal; no noise
    assert per_image[0] == pytest.approx(10 * np.log10(5 / 0.01), abs=1e-5)
    assert per_image[1:].tolist() == [-MAX_SNR_DB, MAX_SNR_DB]
    assert noise.snr_db()["y"] == pytest.approx(10 * np.log10(30 / 0.26), abs=1e-5)


def test_findings_json_holds_no_infinity_or_nan(digits_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A whole diagnosis (a folded normalization too, so that fp_optimized is its own model)
    writes strict JSON: Infinity and NaN are not JSON."""
    import json

    import quantdoctor

    recipe = [
        {"normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]}},
        {"calibration": {"method": "minmax", "size": 64}},
    ]
    config = quantdoctor.load_config(digits_config(recipe=recipe))
    quantdoctor.diagnose(config, report_dir=tmp_path / "report")
    text = (tmp_path / "report" / "findings.json").read_text()

    def refuse(constant: str) -> None:
        raise ValueError(f"findings.json holds {constant}")

    findings = json.loads(text, parse_constant=refuse)
    assert findings["findings"] and "native" in findings["contexts"]
