"""Suspect 4, the per-layer analysis: the chunked sweep against whole-model runs, every
finding on small models built here (digits images), and the real models of ../shared/data
(marked shared_data): EfficientNet-Lite0's depthwise layers, YOLOX-Nano's concatenated
output, and a CIFAR-10 CNN trained with and without BatchNorm."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import quantdoctor
from quantdoctor.checks import layer_graph as lg
from quantdoctor.checks.layer_stats import (
    TensorStats,
    best_clip,
    estimated_snr,
    qdq,
    weight_range_stats,
)
from quantdoctor.checks.layers import LayerAnalysis, layer_checks, split_name, sweep_images
from quantdoctor.config import TargetConfig
from quantdoctor.engine import Engine
from quantdoctor.engine.subgraph import ChunkedModel, LayerSweep, Variant, literal
from quantdoctor.quant import PROFILES, QuantScheme
from quantdoctor.stats import snr_db
from quantdoctor.tasks import make_task

from .conftest import REPO, SHARED_DATA

EXAMPLES = REPO / "examples"
FINDING_IDS = {
    "layers.low_snr",
    "layers.wide_range",
    "layers.weight_range_imbalance",
    "layers.bn_missing",
    "layers.concat_output",
    "layers.activation_function",
    "quantization.weights_sensitive",
    "quantization.activations_sensitive",
}


# --- small models on the digits images ([N, 3, 8, 8]) -----------------------------------------


def _model(nodes, inits, outputs=(("logits", ["N", 10]),), name="net") -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def branchy_net(seed: int = 0, dw_scale: float = 30.0) -> onnx.ModelProto:
    """Conv-ReLU → depthwise Conv-ReLU6 (channel 0 ``dw_scale`` x larger) → Add (residual)
    → 1x1 Conv-ReLU → Concat with the residual → GAP → Flatten → Gemm: tensors that live
    across chunks, a depthwise layer with imbalanced weights, an inner Concat."""
    rng = np.random.default_rng(seed)
    dw = rng.normal(size=(8, 1, 3, 3)) * 0.3
    dw[0] *= dw_scale
    inits = {
        "w1": rng.normal(size=(8, 3, 3, 3)),
        "b1": rng.normal(size=8) * 0.1,
        "w2": dw,
        "b2": rng.normal(size=8) * 0.1,
        "lo": 0.0,
        "hi": 6.0,
        "w3": rng.normal(size=(8, 8, 1, 1)) * 0.5,
        "b3": rng.normal(size=8) * 0.1,
        "w4": rng.normal(size=(10, 16)),
        "b4": rng.normal(size=10),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw2", pads=[1] * 4, group=8),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"),
        helper.make_node("Add", ["r1", "r2"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "w3", "b3"], ["c3"], name="pw3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Concat", ["s", "r3"], ["cat"], name="cat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["logits"], name="fc", transB=1),
    ]
    return _model(nodes, inits, name="branchy")


def concat_head_net(seed: int = 0) -> onnx.ModelProto:
    """logits = Concat(box-like scores with a range of ±tens, sigmoid scores in [0, 1])."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.normal(size=(8, 3, 3, 3)),
        "b1": np.zeros(8),
        "wa": rng.normal(size=(4, 8)) * 20,
        "ba": np.zeros(4),
        "wb": rng.normal(size=(6, 8)),
        "bb": np.zeros(6),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wa", "ba"], ["boxes"], name="fc_boxes", transB=1),
        helper.make_node("Gemm", ["f", "wb", "bb"], ["z"], name="fc_scores", transB=1),
        helper.make_node("Sigmoid", ["z"], ["scores"], name="sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["logits"], name="head_concat", axis=1),
    ]
    return _model(nodes, inits, name="concat_head")


def spiky_net(seed: int = 0) -> onnx.ModelProto:
    """A pre-activation with rare spikes (a detector of fully bright 3x3 patches, in one
    channel, amplified 100x, added to an ordinary convolution) followed by a Tanh: the
    calibrated range serves the spikes, the Tanh ignores them."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(8, 3, 3, 3)) * 0.4
    detect = np.zeros((8, 3, 3, 3))
    detect[0] = 1 / 3.0
    bias = np.full(8, -100.0)
    bias[0] = -8.0
    inits = {
        "w1": w1,
        "b1": -w1.sum(axis=(1, 2, 3)) * 0.3,  # about zero-mean on [0, 1] pixels
        "w2": detect,
        "b2": bias,
        "amp": 100.0,
        "w3": rng.normal(size=(10, 8)),
        "b3": np.zeros(10),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Conv", ["input", "w2", "b2"], ["c2"], name="detect", pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Mul", ["r2", "amp"], ["spike"], name="amplify"),
        helper.make_node("Add", ["c1", "spike"], ["mix"], name="mix"),
        helper.make_node("Tanh", ["mix"], ["t"], name="tanh"),
        helper.make_node("GlobalAveragePool", ["t"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    return _model(nodes, inits, name="spiky")


def silu_net(seed: int = 0) -> onnx.ModelProto:
    """Conv → SiLU (Mul(x, Sigmoid(x))) → GAP → Gemm."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.normal(size=(8, 3, 3, 3)),
        "b1": np.zeros(8),
        "w2": rng.normal(size=(10, 8)),
        "b2": np.zeros(10),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Sigmoid", ["c1"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["c1", "s"], ["silu"], name="silu"),
        helper.make_node("GlobalAveragePool", ["silu"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], name="fc", transB=1),
    ]
    return _model(nodes, inits, name="silu")


def conv_stack(batchnorm: bool, scale: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """Two 3x3 convolutions with ReLU (weights x ``scale``: unnormalized pre-activations), with
    or without BatchNormalization nodes (identity statistics: same function), named like a
    PyTorch export (``features.0.weight``)."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {
        "features.0.weight": rng.normal(size=(16, 3, 3, 3)) * scale,
        "features.0.bias": rng.normal(size=16) * scale,
        "features.2.weight": rng.normal(size=(16, 16, 3, 3)) * 0.2 * scale,
        "features.2.bias": rng.normal(size=16) * scale,
        "fc.weight": rng.normal(size=(10, 16)),
        "fc.bias": np.zeros(10),
    }
    nodes = []
    x = "input"
    for k in (0, 2):
        conv = f"/features.{k}/Conv"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"features.{k}.weight", f"features.{k}.bias"],
                [f"{conv}_out"],
                name=conv,
                pads=[1] * 4,
            )
        )
        y = f"{conv}_out"
        if batchnorm:
            for p, v in (("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)):
                inits[f"bn{k}.{p}"] = np.full(16, v)
            names = [f"bn{k}.{p}" for p in "gbmv"]
            nodes.append(
                helper.make_node(
                    "BatchNormalization", [y, *names], [f"bn{k}_out"], name=f"/bn{k}", epsilon=0.0
                )
            )
            y = f"bn{k}_out"
        nodes.append(helper.make_node("Relu", [y], [f"relu{k}"], name=f"/relu{k}"))
        x = f"relu{k}"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["p"], name="/gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="/flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="/fc", transB=1),
    ]
    return _model(nodes, inits, name="conv_stack")


@pytest.fixture
def engine_for(digits_config, tmp_path):  # type: ignore[no-untyped-def]
    """Returns ``make(model, **config) -> (Engine, Task)`` on the digits images."""

    def make(model: onnx.ModelProto, **overrides: object):  # type: ignore[no-untyped-def]
        path = tmp_path / f"{model.graph.name}.onnx"
        onnx.save(model, path)
        cfg = quantdoctor.load_config(digits_config(model=str(path), **overrides))
        return Engine(cfg), make_task(cfg)

    return make


def _snr(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], name: str) -> float:
    r = ref[name].astype(np.float64)
    return snr_db(float((r**2).sum()), float(((got[name] - r) ** 2).sum()))


# --- the chunked sweep -------------------------------------------------------------------------


def test_chunks_hold_whole_layers_and_rebuild_the_model(engine_for) -> None:  # type: ignore[no-untyped-def]
    engine, _ = engine_for(branchy_net())
    chunked = ChunkedModel(engine.float_model, engine.layers, layers_per_chunk=1)
    assert len(chunked.chunks) >= 4
    nodes = [n.name for c in chunked.chunks for n in c.nodes]
    assert nodes == [n.name for n in engine.float_model.graph.node]  # each once, in order
    for layer in engine.layers:  # a layer and its fused activation share a chunk
        (chunk,) = [c for c in chunked.chunks if layer.name in {n.name for n in c.nodes}]
        assert layer.output in {o for n in chunk.nodes for o in n.output}
    # the residual input of the Add and the Concat crosses chunk boundaries
    assert {"r1", "s"} <= set(chunked.boundary)
    whole = chunked.submodel(0, len(chunked.chunks) - 1)
    assert [o.name for o in whole.graph.output] == ["logits"]


@pytest.mark.parametrize("per_chunk", [1, 2, None])
def test_sweep_equals_whole_model_runs(engine_for, per_chunk: int | None) -> None:  # type: ignore[no-untyped-def]
    """Each layer alone in the sweep (its chunk rebuilt, downstream float chunks) gives the
    same output SNR as the whole model built with ``plan.only([layer])``."""
    engine, _ = engine_for(branchy_net())
    images = sweep_images(engine, 32)
    sweep = LayerSweep(engine, images, layers_per_chunk=per_chunk)
    variants = [Variant.input_alone(engine)] + [Variant.alone(engine, la) for la in engine.layers]
    got = sweep.run(variants)
    split = split_name(32)
    ref = engine.outputs("native", split)
    plan = engine.plan()

    def same(a: float, b: float) -> bool:  # above 100 dB both are float round-off
        return a == pytest.approx(b, abs=0.05) or min(a, b) > 100

    for layer in engine.layers:
        whole = engine.outputs("quantized", split, plan=plan.only([literal(layer.name)]))
        assert same(got[layer.name].snr_db()["logits"], _snr(ref, whole, "logits")), layer.name
    whole = engine.outputs("quantized", split, plan=plan.disable_layers(["*"]))
    assert same(got["<input>"].snr_db()["logits"], _snr(ref, whole, "logits"))
    assert min(got[la.name].min_snr_db() for la in engine.layers) < 40  # real noise measured
    # the sweep reran only what its variants reached, not the whole model each time
    assert 0 < sweep.cost.model_evaluations < 0.8 * len(variants)
    assert sweep.cost.captures == 1
    again = sweep.run(variants[:2])  # the captured float tensors are reused
    assert sweep.cost.captures == 1
    assert again[variants[1].key].snr_db() == got[variants[1].key].snr_db()


# --- the checks on small models ----------------------------------------------------------------


def test_layer_checks_digits_end_to_end(digits_config) -> None:  # type: ignore[no-untyped-def]
    cfg = quantdoctor.load_config(digits_config())
    engine = Engine(cfg)
    seen = []
    result = layer_checks(engine, make_task(cfg), images=48, on_finding=seen.append)
    ids = [f.id for f in result.findings]
    assert ids == [f.id for f in seen]
    assert set(ids) <= FINDING_IDS and len(set(ids)) == len(ids)
    assert FINDING_IDS - {"layers.concat_output"} <= set(ids)
    text = json.dumps(
        {"evidence": result.evidence, "findings": [f.evidence for f in result.findings]}
    )
    assert "NaN" not in text and "Infinity" not in text
    rows = result.evidence["layers"]
    assert [r["name"] for r in rows[1:]] == [la.name for la in engine.layers]
    assert rows[0]["name"] == "<input>"
    for r in rows:
        assert set(r["alone_snr_db"]) == {"logits"} and r["accumulated_snr_db"] is not None
    hist = result.evidence["tensors"]["h_relu"]["evaluation"]["histogram"]
    assert len(hist["edges"]) == len(hist["counts"]) + 1
    assert sum(hist["counts"]) + hist["under"] + hist["over"] == hist["sampled_values"]
    by_id = {f.id: f for f in result.findings}
    sensitive = by_id["quantization.weights_sensitive"]
    assert {"drop", "drop_ci95", "p_value", "output_snr_db"} <= set(sensitive.evidence)
    assert sensitive.evidence["context"] == "int8"
    # float weights under quantized activations: ONNX Runtime's integer path would quantize
    # them itself, so that variant is measured emulated
    assert by_id["quantization.activations_sensitive"].evidence["context"] == "quantized"


def test_weight_range_imbalance_names_the_depthwise_layer(engine_for) -> None:  # type: ignore[no-untyped-def]
    engine, task = engine_for(branchy_net())  # hailo8: per-tensor weights
    finding = LayerAnalysis(engine, task, images=32).weight_range_imbalance()
    assert finding.id == "layers.weight_range_imbalance" and finding.severity != "ok"
    assert finding.evidence["layers"][0] == "dw2"
    assert finding.evidence["depthwise_layers"] == ["dw2"]
    row = next(r for r in finding.evidence["candidates"] if r["layer"] == "dw2")
    assert row["median_channel_loss_db"] > 20 and row["measured_output_gain_db"] > 3
    assert finding.evidence["remedy_metric"]["context"] == "int8"
    # a per-channel target has nothing to fix
    engine, task = engine_for(branchy_net(), target="int8")
    assert LayerAnalysis(engine, task, images=32).weight_range_imbalance().severity == "ok"


def test_concat_output_with_parts_of_different_ranges(engine_for) -> None:  # type: ignore[no-untyped-def]
    engine, task = engine_for(concat_head_net())
    (finding,) = LayerAnalysis(engine, task, images=32).concat_output()
    ev = finding.evidence
    assert finding.severity != "ok" and ev["output"] == "logits"
    assert ev["concats"] == ["head_concat"]
    assert [p["tensor"] for p in ev["parts"]] == ["boxes", "scores"]
    assert ev["range_ratio"] > 8
    scores = ev["parts"][1]
    assert scores["own_range_snr_db"] - scores["shared_range_snr_db"] >= 6
    cut = ev["remedies"]["cut_before_concat"]
    assert cut["output_snr_db"]["logits"] >= ev["baseline_output_snr_db"]["logits"]
    assert {"gain", "gain_ci95", "p_value"} <= set(cut["metric"])
    assert ev["concat_alone"]["metric"] == "top1"


def test_concat_of_similar_ranges_is_fine(engine_for) -> None:  # type: ignore[no-untyped-def]
    engine, task = engine_for(branchy_net())  # its Concat is inside, not an output
    assert LayerAnalysis(engine, task, images=16).concat_output() == []


def test_wide_range_clips_rare_outliers_and_measures_it(engine_for) -> None:  # type: ignore[no-untyped-def]
    engine, task = engine_for(spiky_net(), target="int8")  # Tanh not fused: "mix" quantized
    finding = LayerAnalysis(engine, task, images=64).wide_range()
    rows = {r["tensor"]: r for r in finding.evidence["candidates"]}
    mix = rows["mix"]
    assert mix["calibrated_range"][1] > 20 and mix["wasted_ratio"] > 5
    assert mix["suggested_range"][1] < 5  # the spikes are cut
    assert mix["measured_output_gain_db"] > 6  # run with the clipped range, not guessed
    assert finding.severity != "ok" and any("'mix'" in r for r in finding.recipe)
    assert finding.evidence["remedy_output_snr_db"]["logits"] > mix["alone_output_snr_db"][0]
    assert finding.evidence["remedy_metric"]["metric"] == "top1"


def test_bn_missing_from_graph_and_statistics(engine_for) -> None:  # type: ignore[no-untyped-def]
    engine, task = engine_for(conv_stack(batchnorm=False, scale=8.0))
    finding = LayerAnalysis(engine, task, images=32).bn_missing()
    assert finding.severity == "warning"
    assert finding.evidence["without_batchnorm"] == ["/features.0/Conv", "/features.2/Conv"]
    assert finding.evidence["unnormalized"]
    # the same (unnormalized) function with BatchNormalization nodes: not a missing BatchNorm
    engine, task = engine_for(conv_stack(batchnorm=True, scale=8.0))
    finding = LayerAnalysis(engine, task, images=32).bn_missing()
    assert finding.severity == "ok" and finding.evidence["graph_evidence"]["batchnorm"] == 2
    # without BatchNorm but normalized: reported as a low risk
    engine, task = engine_for(conv_stack(batchnorm=False, scale=0.3))
    finding = LayerAnalysis(engine, task, images=32).bn_missing()
    assert finding.severity == "info" and not finding.evidence["unnormalized"]


def test_source_batchnorm_status_per_convolution() -> None:
    model = conv_stack(batchnorm=True)
    from quantdoctor.graph import clean_model

    cleaned = clean_model(conv_stack(batchnorm=True))
    sbn = lg.source_batchnorm(model, cleaned)
    assert set(sbn.status.values()) == {"batchnorm"} and sbn.source_has_batchnorm
    plain = conv_stack(batchnorm=False)
    assert set(lg.source_batchnorm(plain, clean_model(conv_stack(False))).status.values()) == {
        "none"
    }
    for init in plain.graph.initializer:  # what PyTorch's exporter leaves after folding BN
        if init.name.endswith("weight"):
            old = init.name
            init.name = f"onnx::Conv_{len(old)}"
            for node in plain.graph.node:
                node.input[:] = [init.name if i == old else i for i in node.input]
    assert set(lg.source_batchnorm(plain, plain).status.values()) == {"folded"}


def test_activation_function_patterns() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
        helper.make_node("Mul", ["x", "s"], ["silu"], name="silu_mul"),
        helper.make_node("HardSwish", ["silu"], ["hs"], name="hswish"),
        helper.make_node("Div", ["hs", "sqrt2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="add1"),
        helper.make_node("Mul", ["hs", "e1"], ["g"], name="gelu_mul"),
        helper.make_node("Sigmoid", ["g"], ["s2"], name="sig2"),
        helper.make_node("Mul", ["x", "s2"], ["not_silu"], name="gate"),  # x·σ(g): not SiLU
    ]
    graph = helper.make_graph(
        nodes,
        "acts",
        [x],
        [helper.make_tensor_value_info("not_silu", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    uses = lg.activation_functions(helper.make_model(graph))
    kinds = {u.kind: u for u in uses}
    assert set(kinds) == {"SiLU/Swish", "HardSwish", "GELU"}
    assert kinds["SiLU/Swish"].input == "x" and kinds["SiLU/Swish"].output == "silu"
    assert kinds["GELU"].nodes[0] == "erf"


def test_activation_function_finding_on_silu(engine_for) -> None:  # type: ignore[no-untyped-def]
    engine, task = engine_for(silu_net())
    a = LayerAnalysis(engine, task, images=16, metrics=False)
    a.evaluation_statistics()
    a.run_sweep()
    finding = a.activation_function()
    assert finding.severity in ("info", "warning")
    found = finding.evidence["found"]["SiLU/Swish"]
    assert found["count"] == 1 and set(found["layers"]) == {"sigmoid", "silu"}
    assert len(found["alone_snr_db"]) == 2 and found["snr_lost_across_db"]


# --- the numbers -------------------------------------------------------------------------------


def test_tensor_stats_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 16, 16)).astype(np.float32)
    acc = TensorStats(-5.0, 5.0)
    acc.add(x[:2])
    acc.add(x[2:])
    s = acc.summary()
    assert s["min"] == x.min() and s["max"] == x.max()
    assert s["mean"] == pytest.approx(x.mean(), abs=1e-6)
    assert s["std"] == pytest.approx(x.std(), rel=1e-5)
    assert float(s["percentiles"]["50.0"]) == pytest.approx(np.median(x), abs=0.01)
    mean, std = acc.channel_mean_std()  # type: ignore[misc]
    assert np.allclose(mean, x.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-5)
    assert np.allclose(s["channel_max"], x.max(axis=(0, 2, 3)))
    assert acc.hist.sum() + acc.under + acc.over == x.size


def test_estimated_snr_and_clip_choice_against_exact_quantization() -> None:
    """The clipping search's SNR estimates (histogram + exactly kept extremes) agree with
    exact quantize-dequantize of every value, and its choice beats the full range."""
    rng = np.random.default_rng(0)
    u8 = PROFILES["hailo8"].activations
    x = rng.standard_t(3, size=200_000).astype(np.float32)  # heavy tails
    acc = TensorStats(float(x.min()), float(x.max()), per_channel=False)
    for part in np.array_split(x, 4):
        acc.add(part)
    assert acc.percentile(99.99) == pytest.approx(np.percentile(x, 99.99), rel=1e-4)
    full, best = best_clip(acc, u8)
    power = float((x.astype(np.float64) ** 2).sum())

    def exact(lo: float, hi: float) -> float:
        return snr_db(power, float(((qdq(x, lo, hi, u8) - x) ** 2).sum()))

    assert full.snr_db == pytest.approx(exact(acc.lo, acc.hi), abs=0.3)
    assert best.snr_db == pytest.approx(exact(best.lo, best.hi), abs=0.3)
    assert exact(best.lo, best.hi) > exact(acc.lo, acc.hi) + 1.0
    assert best.hi < acc.hi and best.lo > acc.lo
    assert estimated_snr(acc, acc.lo, acc.hi, u8) == full.snr_db


def test_weight_range_stats() -> None:
    w = np.random.default_rng(0).normal(size=(8, 1, 3, 3)).astype(np.float32)
    w[0] *= 50
    s8 = QuantScheme(bits=8, signed=True, symmetric=True)
    stats = weight_range_stats(w, 0, s8)
    assert stats["channels"] == 8 and stats["max_over_median"] > 20
    assert stats["snr_per_channel_db"] > stats["snr_per_tensor_db"]
    assert stats["channels_below_16_levels"] == 7
    assert min(stats["channel_snr_per_tensor_db"][1:]) < 20 < stats["channel_snr_per_tensor_db"][0]


# --- real models (../shared/data) --------------------------------------------------------------


def _example(script: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(script, EXAMPLES / f"{script}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[script] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [
        m for m in ("torch", "efficientnet_lite_pytorch") if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[examples]'")
    out = tmp_path_factory.mktemp("models") / "efficientnet_lite0.onnx"
    return _example("export_efficientnet_lite0").export(out)


@pytest.mark.shared_data
def test_lite0_hailo8_depthwise_weight_range_imbalance(lite0: Path) -> None:
    """Per-tensor weights (hailo8) on EfficientNet-Lite0: the depthwise layers are named, and
    per-channel weights measurably recover top-1 on the 1000 ImageNet sample images."""
    cfg = quantdoctor.load_config(EXAMPLES / "efficientnet_lite0.yaml")
    cfg = cfg.model_copy(update={"model": lite0})
    engine = Engine(cfg)
    finding = LayerAnalysis(engine, make_task(cfg), images=64).weight_range_imbalance()
    ev = finding.evidence
    assert finding.severity in ("warning", "error")
    depthwise = set(ev["depthwise_layers"])
    assert len(depthwise) >= 6 and len(depthwise) >= len(ev["layers"]) / 2
    assert all("_depthwise_conv" in name for name in depthwise)
    assert "/_blocks.7/_depthwise_conv/Conv" in depthwise  # max/median channel range 17.5
    m = ev["remedy_metric"]
    assert m["n"] == 1000 and m["metric"] == "top1"
    assert m["gain"] > 2.0 and m["gain_ci95"][0] > 0 and m["p_value"] < 0.01


@pytest.mark.shared_data
def test_yolox_nano_concat_output() -> None:
    """YOLOX-Nano's single output concatenates raw boxes (range ±4) and sigmoid scores: the
    finding, the per-part SNR lost to the shared scale, and the measured remedies."""
    model = SHARED_DATA / "models" / "yolox_nano.onnx"
    cfg = quantdoctor.load_config(EXAMPLES / "yolox_nano_coco128.yaml")
    cfg = cfg.model_copy(update={"model": model, "target": TargetConfig(profile="int8")})
    engine = Engine(cfg)
    (finding,) = LayerAnalysis(engine, make_task(cfg), images=16).concat_output()
    ev = finding.evidence
    assert finding.severity != "ok" and ev["output"] == "output"
    assert len(ev["concats"]) == 4 and len(ev["parts"]) == 9  # 3 scales x (box, obj, cls)
    assert ev["range_ratio"] > 4
    boxes = [p for p in ev["parts"] if p["range"][0] < 0]
    scores = [p for p in ev["parts"] if p["range"][0] >= 0]
    assert len(boxes) == 3 and len(scores) == 6
    assert all(p["own_range_snr_db"] - p["shared_range_snr_db"] > 6 for p in scores)
    for label in ("cut_before_concat", "output_16bit"):
        m = ev["remedies"][label]["metric"]
        assert m["metric"] == "map" and m["n"] == 128
        assert m["gain_ci95"][0] <= m["gain"] <= m["gain_ci95"][1]
    assert ev["concat_alone"]["n"] == 128


@pytest.fixture(scope="module")
def cifar_twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CNN of examples/train_cifar_cnn.py trained without and with BatchNorm (same seed
    and recipe), the latter exported with its BatchNorm nodes and with them folded."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed: pip install -e '.[train]'")
    train = _example("train_cifar_cnn")
    root = tmp_path_factory.mktemp("cifar_cnn")
    data = SHARED_DATA / "cifar10"
    x, y = train.load_split(data, "train")
    out = {}
    for bn in (False, True):
        import torch

        torch.manual_seed(0)
        model = train.train(train.build_model(bn), x, y)
        name = "bn" if bn else "nobn"
        out[name] = train.export(root / f"{name}.onnx", batchnorm=bn, model=model)
        if bn:
            out["bn_folded"] = train.export(
                root / "bn_folded.onnx", batchnorm=True, model=model, fold_bn=True
            )
    return out


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("twin", "expected"), [("nobn", {"warning", "info"}), ("bn", {"ok"}), ("bn_folded", {"ok"})]
)
def test_cifar_cnn_bn_missing(cifar_twins: dict[str, Path], twin: str, expected: set[str]) -> None:
    cfg = quantdoctor.load_config(EXAMPLES / "resnet20_cifar10.yaml")
    cfg = cfg.model_copy(update={"model": cifar_twins[twin]})
    engine = Engine(cfg)
    finding = LayerAnalysis(engine, make_task(cfg), images=64, metrics=False).bn_missing()
    assert finding.severity in expected, finding.title
    ev = finding.evidence
    assert ev["convolutions"] == 5
    if twin == "nobn":
        assert len(ev["without_batchnorm"]) == 5 and not ev["source_has_batchnorm"]
    elif twin == "bn":
        assert ev["graph_evidence"]["batchnorm"] == 5 and ev["without_batchnorm"] == []
    else:
        assert ev["graph_evidence"]["folded"] == 5


def test_sweep_over_the_memory_budget_counts_each_variant_once(engine_for) -> None:  # type: ignore[no-untyped-def]
    """Images in several groups (a tiny memory budget): the same noise as in one group, and
    progress counts variants, never past their number (it showed 137% on YOLOX-Nano)."""
    engine, _ = engine_for(branchy_net())
    images = sweep_images(engine, 32)
    variants = [Variant.alone(engine, la) for la in engine.layers]
    counted: list[int] = []
    grouped = LayerSweep(engine, images, memory_budget=1).run(variants, counted.append)
    whole = LayerSweep(engine, images).run(variants)
    assert sum(counted) == len(variants)
    for v in variants:
        assert grouped[v.key].snr_db() == pytest.approx(whole[v.key].snr_db(), abs=1e-6)
