"""The remedy layer: recipe commands that run, edits by content, bad input, and every recipe
line a finding emits running as is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import quantdoctor
from quantdoctor.checks.layers import LayerAnalysis
from quantdoctor.config import parse_config
from quantdoctor.engine import Engine
from quantdoctor.errors import ConfigError
from quantdoctor.quant.remedies import REMEDIES
from quantdoctor.tasks import make_task

from .test_cli_errors import assert_clean_error, run_cli
from .test_layers import _model, branchy_net, concat_head_net, spiky_net


def chain_net(seed: int = 0) -> onnx.ModelProto:
    """Conv-ReLU → depthwise Conv-ReLU6 (channel ranges 1e-2 … 3) → 1x1 Conv-ReLU → GAP →
    Gemm: a MobileNet-like chain whose pairs can be equalized."""
    rng = np.random.default_rng(seed)
    spread = np.geomspace(0.02, 3.0, 8)
    inits = {
        "w1": rng.normal(size=(8, 3, 3, 3)) * spread[:, None, None, None],
        "b1": rng.normal(size=8) * 0.05,
        "w2": rng.normal(size=(8, 1, 3, 3)) * spread[::-1, None, None, None],
        "b2": rng.normal(size=8) * 0.05,
        "lo": 0.0,
        "hi": 6.0,
        "w3": rng.normal(size=(8, 8, 1, 1)) * 0.5,
        "b3": rng.normal(size=8) * 0.1,
        "w4": rng.normal(size=(10, 8)),
        "b4": rng.normal(size=10),
    }
    nodes = [
        onnx.helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        onnx.helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        onnx.helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw2", pads=[1] * 4,
                              group=8),
        onnx.helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"),
        onnx.helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pw3"),
        onnx.helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        onnx.helper.make_node("GlobalAveragePool", ["r3"], ["p"], name="gap"),
        onnx.helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        onnx.helper.make_node("Gemm", ["f", "w4", "b4"], ["logits"], name="fc", transB=1),
    ]
    return _model(nodes, inits, name="chain")


@pytest.fixture
def engine_with(digits_config, tmp_path):  # type: ignore[no-untyped-def]
    """``make(model, recipe, **config) -> Engine`` on the digits images."""

    def make(model: onnx.ModelProto | None, recipe: list, **overrides: object) -> Engine:
        if model is not None:
            path = tmp_path / f"{model.graph.name}.onnx"
            onnx.save(model, path)
            overrides["model"] = str(path)
        cfg = quantdoctor.load_config(digits_config(recipe=recipe, **overrides))
        return Engine(cfg)

    return make


def _snr(ref: np.ndarray, got: np.ndarray) -> float:
    r = ref.astype(np.float64)
    return 10 * np.log10((r**2).sum() / max(((got - r) ** 2).sum(), 1e-30))


def test_every_recipe_command_has_a_remedy() -> None:
    assert {"calibration", "quantization_param", "activation_clipping", "weights_clipping",
            "equalization", "bias_correction", "adaround", "finetune",
            "trained_weights"} <= set(REMEDIES)


# --- ranges ---------------------------------------------------------------------------------


def test_manual_activation_clipping_sets_the_range(engine_with) -> None:  # type: ignore[no-untyped-def]
    base = engine_with(branchy_net(), [])
    engine = engine_with(branchy_net(), [
        {"activation_clipping": {"layers": ["conv1"], "mode": "manual", "values": [0.0, 1.5]}}
    ])
    tensor = next(la.output for la in engine.layers if la.name == "conv1")
    assert engine.ranges()[tensor] == (0.0, 1.5)
    assert base.ranges()[tensor][1] > 1.5
    others = {k: v for k, v in engine.ranges().items() if k != tensor}
    assert others == {k: v for k, v in base.ranges().items() if k != tensor}
    log = {r.command: r.summary for r in engine.recipe_log}
    assert log["activation_clipping"]["changed"] == 1
    # a different range is a different quantized model (caches by content)
    assert engine._model_key("int8", None, "calibration") != base._model_key(
        "int8", None, "calibration")


def test_percentile_and_mse_clipping_narrow_the_outlier_range(engine_with) -> None:  # type: ignore[no-untyped-def]
    base = engine_with(spiky_net(), [], target="int8")
    pct = engine_with(spiky_net(), [{"activation_clipping": {
        "layers": ["mix*"], "mode": "percentile", "values": [0, 99.9]}}], target="int8")
    mse = engine_with(spiky_net(), [{"activation_clipping": {
        "layers": ["mix*"], "mode": "mse"}}], target="int8")
    full = base.ranges()["mix"][1]
    assert pct.ranges()["mix"][1] < full / 4
    assert mse.ranges()["mix"][1] < full
    # the clipped range buys output SNR on the evaluation images
    ref = base.outputs("fp_optimized")["logits"]
    assert _snr(ref, pct.outputs("quantized")["logits"]) > _snr(
        ref, base.outputs("quantized")["logits"])


@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_calibration_methods_run(engine_with, method: str) -> None:  # type: ignore[no-untyped-def]
    base = engine_with(spiky_net(), [], target="int8")
    engine = engine_with(spiky_net(), [{"calibration": {"method": method}}], target="int8")
    assert set(engine.ranges()) == set(base.ranges())
    lo, hi = engine.ranges()["mix"]
    assert lo <= 0 <= hi and hi <= base.ranges()["mix"][1] + 1e-6
    assert engine.outputs("int8")["logits"].shape == base.outputs("int8")["logits"].shape


# --- weights --------------------------------------------------------------------------------


def test_weights_clipping_mse_lowers_weight_error(engine_with) -> None:  # type: ignore[no-untyped-def]
    engine = engine_with(branchy_net(), [{"weights_clipping": {"layers": ["*"], "mode": "mse"}}])
    clips = engine.plan().weight_ranges
    assert set(clips) == {la.name for la in engine.layers if la.weight}
    dw = next(la for la in engine.layers if la.name == "dw2")
    w = onnx.numpy_helper.to_array(
        next(i for i in engine.float_model.graph.initializer if i.name == dw.weight))
    assert clips["dw2"][0] <= np.abs(w).max() + 1e-9

    def err(amax: float) -> float:
        s = amax / 127
        return float(((np.clip(np.rint(w / s), -127, 127) * s - w) ** 2).sum())

    assert err(clips["dw2"][0]) <= err(float(np.abs(w).max())) + 1e-12
    manual = engine_with(branchy_net(), [
        {"weights_clipping": {"layers": ["dw2"], "mode": "manual", "values": [-0.5, 0.5]}}])
    assert manual.plan().weight_ranges == {"dw2": (0.5,)}
    qdq = manual.model("quantized")
    scale = next(i for i in qdq.graph.initializer if i.name.startswith("dw2__") and
                 i.name.endswith("__scale"))
    assert float(onnx.numpy_helper.to_array(scale)) == pytest.approx(0.5 / 127, rel=1e-6)


def test_quantization_param_precision_and_plan(engine_with) -> None:  # type: ignore[no-untyped-def]
    engine = engine_with(branchy_net(), [
        {"quantization_param": {"layers": ["pw3"], "precision": "a16_w16"}}])
    layer = next(la for la in engine.layers if la.name == "pw3")
    assert engine.plan().layer_precision(layer) == (16, 16)


# --- float-model edits ----------------------------------------------------------------------


def test_equalization_keeps_the_float_function_and_helps_per_tensor(engine_with) -> None:  # type: ignore[no-untyped-def]
    base = engine_with(chain_net(), [])
    eq = engine_with(chain_net(), [{"equalization": {}}])
    assert not eq.fp_is_native
    native = eq.outputs("native")["logits"]
    assert _snr(native, eq.outputs("fp_optimized")["logits"]) > 80
    summary = next(r.summary for r in eq.recipe_log if r.command == "equalization")
    assert summary["pairs"] == 2
    ref = base.outputs("fp_optimized")["logits"]
    assert _snr(ref, eq.outputs("quantized")["logits"]) > _snr(
        ref, base.outputs("quantized")["logits"])


def test_equalization_without_pairs_is_a_note_not_an_error(digits_config) -> None:  # type: ignore[no-untyped-def]
    # the digits MLP: mix Conv → Flatten → Gemm: no Conv/Gemm pair to equalize
    engine = Engine(quantdoctor.load_config(digits_config(recipe=[{"equalization": {}}])))
    summary = next(r.summary for r in engine.recipe_log if r.command == "equalization")
    if summary["pairs"] == 0:
        assert "nothing changed" in summary["note"]
    assert engine.outputs("int8")["logits"].shape[1] == 10


def test_bias_correction_removes_the_mean_shift(engine_with) -> None:  # type: ignore[no-untyped-def]
    base = engine_with(branchy_net(dw_scale=30.0), [])
    bc = engine_with(branchy_net(dw_scale=30.0), [{"bias_correction": {}}])
    ref = base.outputs("fp_optimized", "calibration")["logits"]
    shift = np.abs((base.outputs("quantized", "calibration")["logits"] - ref).mean(0)).mean()
    fixed = np.abs((bc.outputs("quantized", "calibration")["logits"] - ref).mean(0)).mean()
    assert fixed < shift / 2
    # fp_optimized is untouched (the correction applies to the model that is quantized)
    assert bc.fp_is_native
    summary = next(r.summary for r in bc.recipe_log if r.command == "bias_correction")
    assert summary["layers"] == sum(1 for la in bc.layers if la.weight)
    # the int8 context (fused kernels) gets the corrected biases too
    got = np.abs((bc.outputs("int8", "calibration")["logits"] - ref).mean(0)).mean()
    assert got < shift


def test_sibling_engine_shares_float_outputs(engine_with) -> None:  # type: ignore[no-untyped-def]
    base = engine_with(branchy_net(), [])
    native = base.outputs("native")
    sibling = base.with_recipe([{"equalization": {}}])
    assert sibling.outputs("native") is native
    assert any(r.command == "equalization" for r in sibling.recipe_log)
    assert not any(r.command == "equalization" for r in base.recipe_log)


def test_sibling_with_another_calibration_size_calibrates_on_its_own_images(engine_with) -> None:  # type: ignore[no-untyped-def]
    base = engine_with(branchy_net(), [{"calibration": {"method": "minmax", "size": 16}}])
    assert len(base.images("calibration")) == 16
    base.images("evaluation")
    sibling = base.with_recipe([{"calibration": {"method": "minmax", "size": 48}}])
    assert len(sibling.images("calibration")) == 48
    assert len(base.images("calibration")) == 16
    assert sibling.images("evaluation") is base.images("evaluation")


def test_siblings_reuse_a_correction_computed_from_the_same_inputs(engine_with) -> None:  # type: ignore[no-untyped-def]
    base = engine_with(branchy_net(), [])
    first = base.with_recipe([{"bias_correction": {}}])
    model = first.model("quantized")
    again = base.with_recipe([{"bias_correction": {}}])
    assert np.array_equal(
        next(iter(again.outputs("quantized").values())),
        next(iter(first.outputs("quantized").values())),
    )
    assert again.model("quantized") is model
    assert [r.summary.get("reused") for r in again.recipe_log if r.stage == "correction"] == [True]
    other = base.with_recipe([{"weights_clipping": {"layers": ["*"], "mode": "mse"}},
                              {"bias_correction": {}}])
    other.model("quantized")  # another plan: computed again
    assert not any(r.summary.get("reused") for r in other.recipe_log)


# --- bad input ------------------------------------------------------------------------------


def test_a_pattern_that_matches_nothing_names_the_closest_layers(engine_with) -> None:  # type: ignore[no-untyped-def]
    for step in (
        {"activation_clipping": {"layers": ["conv_1"], "mode": "manual", "values": [0, 1]}},
        {"weights_clipping": {"layers": ["conv_1"], "mode": "mse"}},
        {"quantization_param": {"layers": ["conv_1"], "precision": "a16_w16"}},
        {"bias_correction": {"layers": ["conv_1"]}},
        {"equalization": {"layers": ["conv_1"]}},
    ):
        with pytest.raises(ConfigError, match=r"'conv_1' matches no .*closest: conv1"):
            engine_with(branchy_net(), [step])


@pytest.mark.parametrize(
    "command, needle",
    [
        ({"mode": "manual", "values": [2.0, 1.0]}, "increasing order"),
        ({"mode": "percentile", "values": [99.9]}, "needs values: [low, high]"),
        ({"mode": "percentile", "values": [1, 101]}, "[0, 100]"),
        ({"mode": "mse", "values": [1, 2]}, "takes no values"),
    ],
)
def test_clipping_values_are_checked(command: dict, needle: str) -> None:
    for name in ("activation_clipping", "weights_clipping"):
        with pytest.raises(ConfigError, match="recipe") as err:
            parse_config({"model": "m.onnx", "recipe": [{name: command}]})
        assert needle in str(err.value)


def test_cli_bad_remedy_input_is_one_sentence(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    onnx.save(branchy_net(), tmp_path / "branchy.onnx")
    model = str(tmp_path / "branchy.onnx")
    cases = [
        ([{"activation_clipping": {"layers": ["nope"], "mode": "mse"}}], "matches no layer"),
        ([{"quantization_param": {"layers": ["pw3"], "precision": "a16_w8"}}],
         "not available on target hailo8"),
        ([{"weights_clipping": {"mode": "manual", "values": [3, 1]}}], "increasing order"),
    ]
    for recipe, needle in cases:
        cfg = digits_config(model=model, recipe=recipe)
        assert_clean_error(run_cli("evaluate", str(cfg)), needle)


# --- every recipe line that a finding emits runs as is --------------------------------------


def _findings(engine: Engine) -> list:
    analysis = LayerAnalysis(engine, make_task(engine.config), images=32)
    out = [analysis.low_snr(), analysis.wide_range(), analysis.weight_range_imbalance()]
    return out + analysis.concat_output()


def test_every_recipe_line_of_a_finding_runs(engine_with, digits_config) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, list[str]] = {}
    for model, target in ((chain_net(), "hailo8"), (spiky_net(), "int8"),
                          (concat_head_net(), "hailo8")):
        engine = engine_with(model, [], target=target)
        for finding in _findings(engine):
            if not finding.recipe:
                continue
            seen.setdefault(finding.id, [])
            steps, keys = [], {}
            for line in finding.recipe:
                parsed = yaml.safe_load(line)
                assert isinstance(parsed, dict) and len(parsed) == 1, line
                if next(iter(parsed)) in REMEDIES:
                    steps.append(parsed)
                else:
                    keys.update(parsed)  # a config key (target: …)
            seen[finding.id] += finding.recipe
            pasted = engine_with(model, [{"calibration": {"method": "minmax"}}, *steps],
                                 target=target, **keys)
            report = quantdoctor.evaluate(pasted.config, write=False)
            assert report.contexts["int8"].n > 0, finding.id
    # the findings whose remedies are recipe commands did fire here
    assert {"layers.wide_range", "layers.weight_range_imbalance"} <= set(seen), seen


def paste(config: dict, lines: list[str]) -> dict:
    """A finding's recipe lines pasted into a config (as a user would): recipe commands under
    ``recipe:``, config keys (``preprocess: {…}``, ``target: {…}``) merged into the config."""
    out = {**config, "recipe": list(config.get("recipe", []))}
    for line in lines:
        parsed = yaml.safe_load(line.strip().removeprefix("- "))
        assert isinstance(parsed, dict) and len(parsed) == 1, line
        key, value = next(iter(parsed.items()))
        if key in REMEDIES or key in ("normalization", "input_conversion"):
            out["recipe"].append(parsed)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = {**out[key], **value}
            out[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("mistake", ["double_normalization", "single_calibration_image", "none"])
def test_every_recipe_line_of_a_diagnosis_runs(tmp_path: Path, mistake: str) -> None:
    from quantdoctor.demo import prepare_demo

    path = prepare_demo(tmp_path / "demo", mistake)
    report = quantdoctor.diagnose(quantdoctor.load_config(path), write=False)
    lines = [line for f in report.findings for line in f.recipe]
    if mistake != "none":
        assert lines, [f.id for f in report.findings]
    raw = yaml.safe_load(path.read_text())
    fixed = tmp_path / "demo" / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(paste(raw, lines), sort_keys=False))
    after = quantdoctor.evaluate(quantdoctor.load_config(fixed), write=False)
    assert after.contexts["int8"].n > 0
    if mistake == "double_normalization":  # pasting the remedy fixes the pipeline
        assert after.contexts["native"].value > report.contexts["native"].value + 50
