"""Targets, encodings, calibration and the QDQ builder on a small conv net built here."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantdoctor.engine import OrtRunner
from quantdoctor.quant import (
    PROFILES,
    QuantPlan,
    build_qdq,
    calibrate,
    find_layers,
    tensors_to_calibrate,
)
from quantdoctor.quant.encodings import activation_params, weight_params
from quantdoctor.quant.target import QuantScheme


def conv_net(seed: int = 0) -> onnx.ModelProto:
    """Conv → ReLU → depthwise Conv → ReLU6 (Clip) → GAP → Flatten → Gemm."""
    rng = np.random.default_rng(seed)

    def init(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(a.astype(np.float32), name)

    # channel 0 of the depthwise weights is 20x larger: per-tensor weights hurt it
    dw = rng.normal(size=(8, 1, 3, 3)) * 0.3
    dw[0] *= 20
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], name="dw2", pads=[1, 1, 1, 1], group=8
        ),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [
            init("w1", rng.normal(size=(8, 3, 3, 3)) * 0.3),
            init("b1", rng.normal(size=8) * 0.1),
            init("w2", dw),
            init("b2", rng.normal(size=8) * 0.1),
            init("lo", np.array(0.0)),
            init("hi", np.array(6.0)),
            init("w3", rng.normal(size=(10, 8))),
            init("b3", rng.normal(size=10)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def net() -> dict:
    model = conv_net()
    x = np.random.default_rng(1).normal(size=(64, 3, 16, 16)).astype(np.float32)
    target = PROFILES["hailo8"]
    layers = find_layers(model, target)
    names = tensors_to_calibrate(model, layers)
    captured = OrtRunner(model, extra_outputs=names).run(x, names)
    ranges = calibrate(lambda: [captured], names, "minmax")
    ref = OrtRunner(model).run(x)["y"]
    return {"model": model, "x": x, "layers": layers, "ranges": ranges, "ref": ref}


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / max(((ref - out) ** 2).sum(), 1e-30)))


def run(net: dict, plan: QuantPlan, optimization: str = "emulate") -> np.ndarray:
    qdq = build_qdq(net["model"], plan, net["ranges"], net["layers"])
    onnx.checker.check_model(qdq)
    return OrtRunner(qdq, optimization).run(net["x"])["y"]


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def test_activation_params() -> None:
    u8 = QuantScheme(bits=8, signed=False, symmetric=False)
    scale, zp = activation_params(-1.0, 3.0, u8)
    assert np.isclose(scale, 4 / 255) and zp == 64
    scale, zp = activation_params(0.5, 2.0, u8)  # the range is widened to contain 0
    assert zp == 0 and np.isclose(scale, 2 / 255)
    s8 = QuantScheme(bits=8, signed=True, symmetric=True)
    scale, zp = activation_params(-1.0, 3.0, s8)
    assert zp == 0 and np.isclose(scale, 3 / 127)


def test_weight_scales_per_tensor_and_per_channel() -> None:
    w = np.array([[1.0, -2.0], [0.5, 0.25]])
    s = QuantScheme(bits=8, signed=True, symmetric=True)
    assert np.isclose(weight_params(w, s, None), 2 / 127)
    assert np.allclose(weight_params(w, s, 0), [2 / 127, 0.5 / 127])


def test_calibration_minmax_and_percentile() -> None:
    x = np.concatenate([np.linspace(0, 1, 100_000), [50.0]]).astype(np.float32)
    batches = [{"t": x[:50_000]}, {"t": x[50_000:]}]
    assert calibrate(lambda: batches, ["t"], "minmax")["t"] == (0.0, 50.0)
    lo, hi = calibrate(lambda: batches, ["t"], "percentile", 99.9)["t"]
    assert lo == 0.0 and 0.95 < hi < 1.1  # the single outlier is cut


def test_layers_fold_activations(net: dict) -> None:
    layers = {layer.name: layer for layer in net["layers"]}
    assert layers["conv1"].output == "r1" and layers["conv1"].fused_activation == "Relu"
    assert layers["dw2"].output == "r2" and layers["dw2"].fused_activation == "Clip"
    assert "flatten" not in layers and "relu1" not in layers  # passthrough / absorbed


def test_qdq_keeps_names_and_never_quantizes_between_conv_and_relu(net: dict) -> None:
    qdq = build_qdq(net["model"], QuantPlan(PROFILES["hailo8"]), net["ranges"], net["layers"])
    quantized_inputs = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert "c1" not in quantized_inputs and "c2" not in quantized_inputs
    assert {"x", "r1__float", "r2__float", "p__float", "y__float"} <= quantized_inputs
    assert [o.name for o in qdq.graph.output] == ["y"]
    produced = {o for n in qdq.graph.node for o in n.output}
    assert {"r1", "r2", "y"} <= produced  # original names now hold dequantized values


def test_emulation_and_integer_kernels_agree(net: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = QuantPlan(PROFILES["hailo8"])
    emulated = run(net, plan, "emulate")
    fused = run(net, plan, "all")
    assert snr_db(net["ref"], emulated) > 25
    assert snr_db(emulated, fused) > 40
    # and the integer path really runs integer kernels
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    qdq = build_qdq(net["model"], plan, net["ranges"], net["layers"])
    ort.InferenceSession(qdq.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert ops(onnx.load(str(tmp_path / "opt.onnx")))["QLinearConv"] == 2


def test_per_channel_weights_fix_the_imbalanced_depthwise_layer(net: dict) -> None:
    per_tensor = run(net, QuantPlan(PROFILES["hailo8"]).replace(quantize_activations=False))
    from dataclasses import replace

    pc_target = replace(
        PROFILES["hailo8"], weights=replace(PROFILES["hailo8"].weights, per_channel=True)
    )
    per_channel = run(net, QuantPlan(pc_target).replace(quantize_activations=False))
    assert snr_db(net["ref"], per_channel) > snr_db(net["ref"], per_tensor) + 3
    qdq = build_qdq(net["model"], QuantPlan(pc_target), net["ranges"], net["layers"])
    axes = [a.i for n in qdq.graph.node for a in n.attribute if a.name == "axis"]
    assert 0 in axes


def test_precision_per_layer(net: dict) -> None:
    base = snr_db(net["ref"], run(net, QuantPlan(PROFILES["hailo8"])))
    plan16 = QuantPlan(PROFILES["hailo8"]).set_precision(["*"], "a16_w16")
    plan4 = QuantPlan(PROFILES["hailo8"]).set_precision(["conv1", "dw2"], "a8_w4")
    assert snr_db(net["ref"], run(net, plan16)) > base + 20
    assert snr_db(net["ref"], run(net, plan4)) < base - 3
    with pytest.raises(Exception, match="not available"):
        QuantPlan(PROFILES["hailo8"]).set_precision(["*"], "a16_w8")


def test_enable_and_disable_per_layer_and_tensor(net: dict) -> None:
    target = PROFILES["hailo8"]
    only = build_qdq(net["model"], QuantPlan(target).only(["dw2"]), net["ranges"], net["layers"])
    q_inputs = {n.input[0] for n in only.graph.node if n.op_type == "QuantizeLinear"}
    assert q_inputs == {"r2__float"}
    weights = {i.name for i in only.graph.initializer}
    assert "w1" in weights and "w3" in weights and "w2" not in weights  # only dw2 quantized

    off = build_qdq(
        net["model"],
        QuantPlan(target).disable_layers(["fc"]).disable_tensors(["x"]),
        net["ranges"],
        net["layers"],
    )
    q_inputs = {n.input[0] for n in off.graph.node if n.op_type == "QuantizeLinear"}
    assert "y__float" not in q_inputs and "x" not in q_inputs and "r1__float" in q_inputs

    wonly = build_qdq(
        net["model"],
        QuantPlan(target).replace(quantize_activations=False),
        net["ranges"],
        net["layers"],
    )
    assert ops(wonly)["QuantizeLinear"] == 0 and ops(wonly)["DequantizeLinear"] == 3
