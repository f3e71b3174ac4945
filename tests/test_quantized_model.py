"""quantized_model: a QDQ model made by ONNX Runtime's quantize_static, read into
quantdoctor's plan and ranges, so that every context, the per-layer analysis and fix run on
that quantization; bad input is one sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

import quantdoctor
from quantdoctor.engine import Engine
from quantdoctor.errors import ModelError

from .test_cli_errors import assert_clean_error, run_cli
from .test_layers import branchy_net
from .test_remedies import chain_net


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self.items = iter([x[i : i + 1] for x in batches for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.items, None)
        return None if x is None else {"input": x}


@pytest.fixture
def ort_quantized(digits_config, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``make(model, per_channel) -> (float path, qdq path, config path)``: the model
    quantized by ONNX Runtime on the digits calibration images, and a config using it."""

    def make(model: onnx.ModelProto, per_channel: bool = False, **overrides: object):  # type: ignore[no-untyped-def]
        name = f"{model.graph.name}_{'pc' if per_channel else 'pt'}"
        float_path, qdq_path = tmp_path / f"{name}.onnx", tmp_path / f"{name}.qdq.onnx"
        onnx.save(model, float_path)
        engine = Engine(quantdoctor.load_config(digits_config(model=str(float_path))))
        batches = list(engine.batches(engine.images("calibration"), "native"))
        quantize_static(str(float_path), str(qdq_path), _Reader(batches),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=per_channel)
        config = digits_config(model=str(float_path), quantized_model=str(qdq_path),
                               **overrides)
        return float_path, qdq_path, config

    return make


def _run_file(path: Path, engine: Engine) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(names, {"input": x}) for x in engine.batches(engine.images(), "int8")]
    return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("net", [chain_net, branchy_net])
def test_imported_plan_reproduces_onnx_runtime(ort_quantized, net, per_channel: bool) -> None:  # type: ignore[no-untyped-def]
    _, qdq, config = ort_quantized(net(), per_channel)
    engine = Engine(quantdoctor.load_config(config))
    theirs = _run_file(qdq, engine)["logits"]
    ours = engine.outputs("int8")["logits"]
    # quantdoctor's own QDQ model of the imported plan, run by the same integer kernels
    assert np.array_equal(ours, theirs)
    emulated = engine.outputs("quantized")["logits"].astype(np.float64)
    assert (emulated.argmax(1) == theirs.argmax(1)).mean() > 0.97
    summary = engine.recipe_log[0].summary
    assert engine.recipe_log[0].command == "quantized_model"
    assert summary["per_channel_weights"] is per_channel
    assert "uint8" in summary["conventions"]
    assert ("per-channel" if per_channel else "per-tensor") in summary["conventions"]
    # ONNX Runtime folds ReLU and ReLU6 (Clip) into the Conv before them
    assert "Relu" in summary["conventions"] and "Clip" in summary["conventions"]
    assert summary["not_reproduced_count"] == 0


def test_every_context_and_the_layer_sweep_use_the_imported_scales(ort_quantized) -> None:  # type: ignore[no-untyped-def]
    _, qdq, config = ort_quantized(chain_net(), per_channel=True)
    engine = Engine(quantdoctor.load_config(config))
    file_inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(qdq).graph.initializer}
    pw3 = next(layer for layer in engine.layers if layer.name == "pw3")
    theirs = file_inits[f"{pw3.weight}_scale"]
    assert np.array_equal(np.asarray(engine.plan().weight_scales["pw3"], np.float32), theirs)
    # only pw3 quantized (the per-layer sweep's variant): the file's scales, not its own
    alone = engine.model("quantized", plan=engine.plan().only(["pw3"]))
    inits = {i.name: numpy_helper.to_array(i) for i in alone.graph.initializer}
    assert np.array_equal(inits[f"pw3__{pw3.weight}__scale"], theirs)
    ranges = engine.ranges()
    r3 = engine.imported.activations[pw3.output]
    assert ranges[pw3.output] == pytest.approx(r3.range())
    report = quantdoctor.analyze(quantdoctor.load_config(config))
    assert report.steps["layers"] == "done"


def test_recipe_commands_apply_on_top_of_the_import(ort_quantized) -> None:  # type: ignore[no-untyped-def]
    _, _, config = ort_quantized(chain_net(), recipe=[
        {"calibration": {"method": "mse"}},
        {"quantization_param": {"layers": ["pw3"], "precision": "a16_w16"}},
    ])
    engine = Engine(quantdoctor.load_config(config))
    base = engine.outputs("quantized")["logits"]
    applied = {r.command: r.summary for r in engine.recipe_log}
    assert "the ranges come from quantized_model" in applied["calibration"]["skipped"]
    assert engine.plan().precision == {"pw3": "a16_w16"}
    plain = Engine(quantdoctor.load_config(ort_quantized(chain_net())[2]))
    assert not np.array_equal(base, plain.outputs("quantized")["logits"])  # 16 bits changed it


def test_fix_starts_from_the_imported_quantization(ort_quantized) -> None:  # type: ignore[no-untyped-def]
    _, _, config = ort_quantized(branchy_net())
    result, report = quantdoctor.fix(quantdoctor.load_config(config), max_drop=0.0,
                                     max_evaluations=2)
    assert result.status in ("met", "not_met")
    assert report.recipe["applied"][0]["command"] == "quantized_model"


# --- bad input -------------------------------------------------------------------------------


def test_a_quantized_model_of_another_float_model(ort_quantized, digits_config) -> None:  # type: ignore[no-untyped-def]
    float_path, qdq, _ = ort_quantized(chain_net())
    other = float_path.with_name("branchy.onnx")
    onnx.save(branchy_net(), other)
    config = digits_config(model=str(other), quantized_model=str(qdq))
    with pytest.raises(ModelError, match="another float model"):
        Engine(quantdoctor.load_config(config))
    assert_clean_error(run_cli("evaluate", str(config)), "quantized_model", "another float model")


def test_same_graph_other_weights(ort_quantized, digits_config) -> None:  # type: ignore[no-untyped-def]
    float_path, qdq, _ = ort_quantized(chain_net(seed=0))
    other = float_path.with_name("chain_seed1.onnx")
    onnx.save(chain_net(seed=1), other)
    config = digits_config(model=str(other), quantized_model=str(qdq))
    assert_clean_error(run_cli("evaluate", str(config)), "differ from the float model's")


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"not a model at all", "is not a valid ONNX file"), (None, "not found")],
)
def test_a_file_that_is_not_a_model(digits_config, tmp_path: Path, content, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "broken.qdq.onnx"
    if content is not None:
        path.write_bytes(content)
    assert_clean_error(run_cli("evaluate", str(digits_config(quantized_model=str(path)))),
                       "quantized_model", needle)


def test_a_float_model_as_quantized_model(digits_config, digits) -> None:  # type: ignore[no-untyped-def]
    config = digits_config(quantized_model=str(digits["model"]))
    assert_clean_error(run_cli("evaluate", str(config)), "not a QDQ model")


def test_equalization_cannot_change_imported_weights(ort_quantized) -> None:  # type: ignore[no-untyped-def]
    _, _, config = ort_quantized(chain_net(), recipe=[{"equalization": {}}])
    assert_clean_error(run_cli("evaluate", str(config)), "recipe[0]: equalization changes")


def test_per_channel_weights_requantize_a_per_tensor_import(ort_quantized) -> None:  # type: ignore[no-untyped-def]
    """fix's per-channel candidate on an ONNX Runtime per-tensor model: the weights get
    per-channel scales of their own; the activation ranges stay the file's."""
    _, _, config = ort_quantized(chain_net(), target={"profile": "int8",
                                                      "weights": {"per_channel": True}})
    engine = Engine(quantdoctor.load_config(config))
    assert engine.target.weights.per_channel and not engine.plan().weight_scales
    assert engine.ranges() == engine.imported.ranges()
    assert "per channel" in engine.recipe_log[0].summary["weights"]
    from quantdoctor.commands.fix import Candidate, imported_conflict

    assert imported_conflict(engine, Candidate("mse calibration",
                                               [{"calibration": {"method": "mse"}}], "x"))
    assert imported_conflict(engine, Candidate("16-bit layers", [{"quantization_param": {
        "layers": ["pw3"], "precision": "a16_w16"}}], "x")) is None


def test_adaround_trains_on_the_imported_scales(ort_quantized) -> None:  # type: ignore[no-untyped-def]
    """The trainable copy keeps the file's weight scales (fix's AdaRound candidate on a
    quantized_model stopped with 'the torch copy's weight scale differs')."""
    pytest.importorskip("torch")
    _, qdq, config = ort_quantized(chain_net(), per_channel=True,
                                   recipe=[{"adaround": {"iterations": 20}}])
    engine = Engine(quantdoctor.load_config(config))
    model = engine.model("int8")
    assert any(r.command == "adaround" for r in engine.recipe_log)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    theirs = {i.name: numpy_helper.to_array(i) for i in onnx.load(qdq).graph.initializer}
    pw3 = next(layer for layer in engine.layers if layer.name == "pw3")
    assert np.array_equal(inits[f"pw3__{pw3.weight}__scale"], theirs[f"{pw3.weight}_scale"])
