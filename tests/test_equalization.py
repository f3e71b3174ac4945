"""Cross-layer equalization (quant/equalize.py) on tiny models built here, with deliberately
imbalanced per-channel weight ranges, and (shared_data) on ResNet-20 and EfficientNet-Lite0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantdoctor.graph import clean_model, load_model
from quantdoctor.quant import PROFILES, QuantPlan, build_qdq, find_layers
from quantdoctor.quant.equalize import equalize, find_pairs
from quantdoctor.quant.qdq import tensors_to_calibrate

from .conftest import REPO, SHARED_DATA

RNG = np.random.default_rng(0)
#: Per-channel factors over six decades: the imbalance that BatchNorm folding can leave.
SPREAD = np.logspace(-3, 3, 8)


# --- building and running models --------------------------------------------------------------
def init(name: str, a: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def make_model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    input_shape: list[int | str],
    outputs: tuple[str, ...] = ("y",),
    rank: int = 4,
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "equalization_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, [f"d{k}" for k in range(rank)])
            for o in outputs
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def session(model: onnx.ModelProto, emulate: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if emulate:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray, emulate: bool = False) -> list[np.ndarray]:
    return session(model, emulate).run(None, {"x": x})


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / max(((ref - out) ** 2).sum(), 1e-30)))


def assert_equivalent(a: onnx.ModelProto, b: onnx.ModelProto, x: np.ndarray) -> None:
    for ref, out in zip(run(a, x), run(b, x), strict=True):
        assert np.abs(ref - out).max() <= 1e-4 * np.abs(ref).max()


def conv_x(channels: int = 4, n: int = 16, hw: int = 8) -> np.ndarray:
    return RNG.normal(size=(n, channels, hw, hw)).astype(np.float32)


def activation_nodes(op: str, src: str, dst: str, name: str) -> tuple[list, list]:
    """One activation node (and its constants) from ``src`` to ``dst``."""
    if op == "PRelu":
        return [helper.make_node("PRelu", [src, f"{name}_slope"], [dst], name=name)], [
            init(f"{name}_slope", np.array([0.1]))
        ]
    if op == "LeakyRelu":
        return [helper.make_node("LeakyRelu", [src], [dst], name=name, alpha=0.2)], []
    if op == "ClipMin0":  # Clip(0, no max): a Relu
        return [helper.make_node("Clip", [src, f"{name}_lo"], [dst], name=name)], [
            init(f"{name}_lo", 0.0)
        ]
    return [helper.make_node(op, [src], [dst], name=name)], []


def conv_act_conv(act: str = "Relu") -> onnx.ModelProto:
    """Conv → act → Conv; output channel i of conv1 scaled by SPREAD[i], conv2's input
    channel i by 1 / SPREAD[i] (the network computes the same at any imbalance)."""
    w1 = RNG.normal(size=(8, 4, 3, 3)) * SPREAD[:, None, None, None]
    b1 = RNG.normal(size=8) * 0.1 * SPREAD
    w2 = RNG.normal(size=(6, 8, 3, 3)) / SPREAD[None, :, None, None]
    act_nodes, act_inits = activation_nodes(act, "c1", "a1", "act1")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        *act_nodes,
        helper.make_node("Conv", ["a1", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inits = [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", RNG.normal(size=6))]
    return make_model(nodes, inits + act_inits, ["N", 4, 8, 8])


def relu6_chain() -> onnx.ModelProto:
    """Conv → ReLU6 → depthwise Conv → ReLU6 → pointwise Conv, the MobileNet block; the first
    Clip takes initializers, the second Constant nodes."""
    g = np.logspace(2, -2, 8)
    w1 = RNG.normal(size=(8, 3, 3, 3)) * SPREAD[:, None, None, None] * 0.3
    dw = RNG.normal(size=(8, 1, 3, 3)) / SPREAD[:, None, None, None] * g[:, None, None, None]
    pw = RNG.normal(size=(5, 8, 1, 1)) / g[None, :, None, None]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r1"], name="relu6_1"),
        helper.make_node(
            "Conv", ["r1", "dw", "bdw"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8
        ),
        helper.make_node("Constant", [], ["lo2"], name="lo2", value=init("lo2v", 0.0)),
        helper.make_node("Constant", [], ["hi2"], name="hi2", value=init("hi2v", 6.0)),
        helper.make_node("Clip", ["c2", "lo2", "hi2"], ["r2"], name="relu6_2"),
        helper.make_node("Conv", ["r2", "pw", "bpw"], ["y"], name="pw"),
    ]
    inits = [
        init("w1", w1),
        init("b1", RNG.normal(size=8) * SPREAD * 0.1),
        init("dw", dw),
        init("bdw", RNG.normal(size=8) * g * 0.1),
        init("pw", pw),
        init("bpw", RNG.normal(size=5)),
        init("zero", 0.0),
        init("six", 6.0),
    ]
    return make_model(nodes, inits, ["N", 3, 8, 8])


def gemm_relu_gemm() -> onnx.ModelProto:
    """Gemm (transB=0, scalar C) → Relu → Gemm (transB=1)."""
    b1 = RNG.normal(size=(16, 8)) * SPREAD[None, :]
    b2 = RNG.normal(size=(5, 8)) / SPREAD[None, :]
    nodes = [
        helper.make_node("Gemm", ["x", "B1", "C1"], ["h"], name="fc1", alpha=0.5),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "B2", "C2"], ["y"], name="fc2", transB=1),
    ]
    inits = [init("B1", b1), init("C1", [0.3]), init("B2", b2), init("C2", RNG.normal(size=5))]
    return make_model(nodes, inits, ["N", 16], rank=2)


def first_ratio_drop(result, first: str) -> float:  # type: ignore[no-untyped-def]
    pair = next(p for p in result.pairs if p.first == first)
    return pair.range_ratio_before / pair.range_ratio_after


# --- float equivalence and balance ------------------------------------------------------------
@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "PRelu", "ClipMin0"])
def test_conv_act_conv_is_equivalent_and_balanced(act: str) -> None:
    model = conv_act_conv(act)
    result = equalize(model)
    assert [(p.first, p.second) for p in result.pairs] == [("conv1", "conv2")]
    assert result.pairs[0].channels == 8
    assert_equivalent(model, result.model, conv_x())
    assert result.pairs[0].range_ratio_before > 100
    assert first_ratio_drop(result, "conv1") > 10
    # positive-homogeneous activations stay as they are
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]
    assert ("conv2", "the output of conv2 is a graph output") in result.skipped


def test_input_model_is_not_changed() -> None:
    model = conv_act_conv()
    before = model.SerializeToString()
    equalize(model)
    assert model.SerializeToString() == before


def test_relu6_chain_gets_per_channel_bounds() -> None:
    model = relu6_chain()
    x = conv_x(3)
    result = equalize(model)
    pairs = [(p.first, p.second, p.activation) for p in result.pairs]
    assert pairs == [("conv1", "dw", "Clip"), ("dw", "pw", "Clip")]
    assert_equivalent(model, result.model, x)
    assert first_ratio_drop(result, "conv1") > 10
    ops = [n.op_type for n in result.model.graph.node]
    assert "Clip" not in ops and "Constant" not in ops  # unused Clip bounds removed
    assert ops.count("Relu") == 2 and ops.count("Min") == 2
    bounds = [numpy_helper.to_array(i) for i in result.model.graph.initializer if "bound" in i.name]
    assert [b.shape for b in bounds] == [(1, 8, 1, 1)] * 2
    assert all(b.std() > 0 for b in bounds)  # 6 / s_i: one bound per channel
    # find_layers folds Relu → Min into the layer, output names are kept
    layers = {la.name: la for la in find_layers(result.model, PROFILES["hailo8"])}
    assert layers["conv1"].output == "r1" and layers["conv1"].fused_activation == "Relu+Min"
    assert layers["dw"].output == "r2" and layers["dw"].fused_activation == "Relu+Min"
    assert set(layers) == {"conv1", "dw", "pw"}


def test_equalizing_twice_updates_the_existing_bounds() -> None:
    model = relu6_chain()
    once = equalize(model, iterations=1)
    twice = equalize(once.model)
    assert [p.activation for p in twice.pairs] == ["Relu+Min", "Relu+Min"]
    assert_equivalent(model, twice.model, conv_x(3))
    assert [n.op_type for n in twice.model.graph.node].count("Min") == 2
    used = {i for n in twice.model.graph.node for i in n.input}
    assert all(i.name in used for i in twice.model.graph.initializer)


def test_clip_attributes_at_old_opset() -> None:
    w1 = RNG.normal(size=(8, 4, 1, 1)) * SPREAD[:, None, None, None]
    w2 = RNG.normal(size=(3, 8, 1, 1)) / SPREAD[None, :, None, None]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Clip", ["c1"], ["r1"], name="relu6", min=0.0, max=6.0),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    model = make_model(nodes, [init("w1", w1), init("w2", w2)], ["N", 4, 8, 8], opset=10)
    result = equalize(model)
    assert [p.activation for p in result.pairs] == ["Clip"]
    assert_equivalent(model, result.model, conv_x())
    assert "Clip" not in [n.op_type for n in result.model.graph.node]


def test_gemm_relu_gemm() -> None:
    model = gemm_relu_gemm()
    x = RNG.normal(size=(32, 16)).astype(np.float32)
    result = equalize(model)
    assert [(p.first, p.second) for p in result.pairs] == [("fc1", "fc2")]
    assert_equivalent(model, result.model, x)
    assert first_ratio_drop(result, "fc1") > 10
    c1 = next(i for i in result.model.graph.initializer if i.name == "C1")
    assert list(c1.dims) == [8]  # the scalar bias became per channel


def test_residual_is_skipped_with_a_reason() -> None:
    w1 = RNG.normal(size=(4, 4, 3, 3)) * SPREAD[:4, None, None, None]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "c2"], ["y"], name="add"),
    ]
    model = make_model(
        nodes, [init("w1", w1), init("w2", RNG.normal(size=(4, 4, 3, 3)))], ["N", 4, 8, 8]
    )
    result = equalize(model)
    assert result.pairs == [] and find_pairs(model) == []
    reasons = dict(result.skipped)
    assert "2 consumers" in reasons["conv1"] and "Add add" in reasons["conv1"]
    assert "feeds Add" in reasons["conv2"]
    assert_equivalent(model, result.model, conv_x())


def test_grouped_conv_is_skipped() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="grouped", group=2),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    inits = [
        init("w1", RNG.normal(size=(8, 4, 1, 1))),
        init("w2", RNG.normal(size=(8, 4, 1, 1))),
        init("w3", RNG.normal(size=(2, 8, 1, 1))),
    ]
    model = make_model(nodes, inits, ["N", 4, 8, 8])
    result = equalize(model)
    reasons = dict(result.skipped)
    assert result.pairs == []
    assert "grouped Conv (group=2)" in reasons["conv1"]
    assert "grouped Conv (group=2)" in reasons["grouped"]


def test_patterns_restrict_the_pairs() -> None:
    model = relu6_chain()
    pairs = find_pairs(model, ["pw"])
    assert [(p.first, p.second) for p in pairs] == [("dw", "pw")]
    assert [p.first for p in find_pairs(model, ["conv*"])] == ["conv1"]
    assert len(find_pairs(model, ["d?"])) == 2  # either node of the pair matches
    result = equalize(model, ["pw"])
    assert [p.first for p in result.pairs] == ["dw"]
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Clip") == 1 and ops.count("Min") == 1
    assert_equivalent(model, result.model, conv_x(3))


def test_shared_weights_are_copied_not_changed() -> None:
    """conv1 shares its weight with conv3 (another branch): only conv1's copy is scaled."""
    w1 = RNG.normal(size=(8, 4, 1, 1)) * SPREAD[:, None, None, None]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
        helper.make_node("Conv", ["x", "w1"], ["z"], name="conv3"),
    ]
    inits = [
        init("w1", w1),
        init("w2", RNG.normal(size=(3, 8, 1, 1)) / SPREAD[None, :, None, None]),
    ]
    model = make_model(nodes, inits, ["N", 4, 8, 8], outputs=("y", "z"))
    result = equalize(model)
    assert [p.first for p in result.pairs] == ["conv1"]
    assert_equivalent(model, result.model, conv_x())
    conv3 = next(n for n in result.model.graph.node if n.name == "conv3")
    assert conv3.input[1] == "w1"


def test_converged_pairs_need_no_change() -> None:
    balanced = equalize(conv_act_conv()).model
    again = equalize(balanced)
    ratio = again.pairs[0].range_ratio_before / again.pairs[0].range_ratio_after
    assert abs(ratio - 1) < 1e-2


# --- what it buys under per-tensor weights ------------------------------------------------------
def minmax_ranges(model: onnx.ModelProto, x: np.ndarray) -> dict[str, tuple[float, float]]:
    names = tensors_to_calibrate(model, find_layers(model, PROFILES["hailo8"]))
    capture = onnx.ModelProto()
    capture.CopyFrom(model)
    known = {o.name for o in capture.graph.output}
    capture.graph.output.extend(
        helper.make_empty_tensor_value_info(n) for n in names if n not in known
    )
    values = session(capture).run(names, {"x": x})
    return {n: (float(v.min()), float(v.max())) for n, v in zip(names, values, strict=True)}


def quantized_snr(model: onnx.ModelProto, calib: np.ndarray, x: np.ndarray) -> float:
    qdq = build_qdq(model, QuantPlan(PROFILES["hailo8"]), minmax_ranges(model, calib))
    onnx.checker.check_model(qdq)
    return snr_db(run(model, x)[0], run(qdq, x, emulate=True)[0])


@pytest.mark.parametrize(("make", "channels"), [(conv_act_conv, 4), (relu6_chain, 3)])
def test_equalized_model_quantizes_better_per_tensor(make, channels: int) -> None:  # type: ignore[no-untyped-def]
    model = make()
    calib, x = conv_x(channels, n=32), conv_x(channels, n=16)
    plain = quantized_snr(model, calib, x)
    equalized = quantized_snr(equalize(model).model, calib, x)
    assert equalized > plain + 10 and equalized > 25, (plain, equalized)


# --- real models (shared_data) ----------------------------------------------------------------
LITE0 = REPO / "examples" / "models" / "efficientnet_lite0.onnx"


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .test_real_models import _export

    return _export(
        tmp_path_factory,
        "export_resnet20",
        weights=SHARED_DATA / "cifar10" / "resnet20-12fca82f.th",
    )


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if LITE0.is_file():
        return LITE0
    from .test_real_models import _export

    return _export(tmp_path_factory, "export_efficientnet_lite0")


def float_snr_after_equalization(path: Path, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    model = clean_model(load_model(path))
    result = equalize(model)
    name = model.graph.input[0].name
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    ref = session(model).run(None, {name: x})[0]
    out = session(result.model).run(None, {name: x})[0]
    return result, snr_db(ref, out)


@pytest.mark.shared_data
def test_resnet20_equalization_is_float_equivalent(resnet20: Path) -> None:
    result, snr = float_snr_after_equalization(resnet20, (4, 3, 32, 32))
    assert snr > 60
    assert len(result.pairs) == 9  # conv1 → ReLU → conv2 inside each BasicBlock
    assert all(p.activation == "Relu" for p in result.pairs)
    assert any("consumers" in reason for _, reason in result.skipped)  # the residual inputs


@pytest.mark.shared_data
def test_efficientnet_lite0_equalization_is_float_equivalent(lite0: Path) -> None:
    result, snr = float_snr_after_equalization(lite0, (2, 3, 224, 224))
    assert snr > 60
    assert sum(p.activation == "Clip" for p in result.pairs) >= 30  # through ReLU6
    assert max(p.range_ratio_after for p in result.pairs) < max(
        p.range_ratio_before for p in result.pairs
    )
