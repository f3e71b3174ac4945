"""The gradient remedies on the trainable copy (``adaround``, ``finetune``) and the
``trained_weights`` recipe command, on the shipped demo CNN with 4-bit weights (where round to
nearest loses accuracy that AdaRound and fine-tuning recover), plus what happens without torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import quantdoctor
from quantdoctor.errors import ConfigError

torch = pytest.importorskip("torch")

from quantdoctor.engine.engine import Engine  # noqa: E402
from quantdoctor.engine.runner import OrtRunner  # noqa: E402
from quantdoctor.train import from_torch, save_trained_weights, to_torch  # noqa: E402

W4 = {"quantization_param": {"layers": ["*"], "precision": "a8_w4"}}


@pytest.fixture(scope="module")
def demo_w4(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    from quantdoctor.demo import prepare_demo

    path = prepare_demo(tmp_path_factory.mktemp("demo") / "demo", "none")
    return Engine(quantdoctor.load_config(path)).with_recipe([W4])


def _top1(engine: Engine, context: str = "quantized") -> float:
    out = next(iter(engine.outputs(context, "evaluation").values()))
    labels = np.array(engine.images("evaluation").labels)
    return float((out.argmax(1) == labels).mean())


def _int_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.name.endswith("__quantized") or i.name.endswith("weight__scale")
    }


def test_adaround_recovers_4bit_weights_and_writes_exact_grid_values(demo_w4: Engine) -> None:
    nearest = _top1(demo_w4)
    engine = demo_w4.with_recipe([{"adaround": {"iterations": 200}}])
    learned = _top1(engine)
    summary = engine.recipe_log[-1].summary
    print(f"demo a8_w4: nearest {nearest:.3f}, adaround {learned:.3f}; {summary}")
    assert summary["reconstruction_error_adaround"] < 0.7 * summary["reconstruction_error_nearest"]
    assert learned > nearest + 0.1
    # the weights written back lie on the quantization grid of the plan's scales: the QDQ
    # model built from them has the same weight scales as round-to-nearest's
    scales = {k: v for k, v in _int_weights(demo_w4.model("quantized")).items() if "scale" in k}
    after = _int_weights(engine.model("quantized"))
    for name, scale in scales.items():
        np.testing.assert_allclose(after[name], scale, rtol=1e-6, err_msg=name)
    # and quantizing them again changes nothing: s * q exactly
    source, _ = engine.quantization_source(engine.plan())
    module = to_torch(engine, verify_split=None)
    with torch.no_grad():
        for step in module.weight_steps():
            w = module.weights[module.param_keys[step.weight]]
            s = module.weight_scale(step).double()
            shape = [1] * w.ndim
            if step.axis is not None:
                shape[step.axis] = -1
            q = w.double() / s.reshape(shape)
            assert torch.allclose(q, torch.round(q), atol=1e-4), step.layer.name
    assert source is not engine.float_model


def test_finetune_distills_and_improves_the_quantized_model(demo_w4: Engine) -> None:
    nearest = _top1(demo_w4)
    engine = demo_w4.with_recipe([{"finetune": {"epochs": 3, "learning_rate": 1e-3}}])
    tuned = _top1(engine)
    summary = engine.recipe_log[-1].summary
    print(f"demo a8_w4: nearest {nearest:.3f}, finetune {tuned:.3f}; {summary}")
    assert summary["distillation_loss_after"] < 0.5 * summary["distillation_loss_before"]
    assert not summary["kept_original"]
    assert tuned > nearest + 0.1
    # native and fp_optimized are the original model
    assert np.array_equal(engine.outputs("native")["logits"], demo_w4.outputs("native")["logits"])


def test_trained_weights_evaluate_exactly_what_was_trained(demo_w4: Engine, tmp_path: Path) -> None:
    module = to_torch(demo_w4, verify_split=None)
    x = torch.from_numpy(next(demo_w4.batches(demo_w4.images("calibration"))))
    with torch.no_grad():
        teacher = module.float_mode()(x)["logits"]
    module.quant_mode()
    opt = torch.optim.Adam(module.weights.parameters(), lr=1e-3)
    for _ in range(5):
        loss = (module(x)["logits"] - teacher).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = save_trained_weights(module, tmp_path / "trained.onnx")
    engine = demo_w4.with_recipe([{"trained_weights": {"model": str(path)}}])
    got = OrtRunner(engine.model("quantized"), "emulate").run(x.numpy())["logits"]
    want = OrtRunner(from_torch(module, demo_w4), "emulate").run(x.numpy())["logits"]
    assert np.array_equal(got, want)
    assert engine.recipe_log[-1].summary["tensors"] > 0
    assert np.array_equal(
        engine.outputs("native", "calibration")["logits"],
        demo_w4.outputs("native", "calibration")["logits"],
    )


def test_trained_weights_of_another_graph_or_no_file_is_one_clear_error(
    demo_w4: Engine, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"trained_weights\.model: .*missing\.onnx not found"):
        demo_w4.with_recipe([{"trained_weights": {"model": str(tmp_path / "missing.onnx")}}])
    other = onnx.ModelProto()
    other.CopyFrom(demo_w4.float_model)
    other.graph.node[1].name = "renamed"
    onnx.save(other, tmp_path / "other.onnx")
    engine = demo_w4.with_recipe([{"trained_weights": {"model": str(tmp_path / "other.onnx")}}])
    with pytest.raises(ConfigError, match="the trained model has no .* node"):
        engine.model("quantized")


def test_gradient_remedies_without_torch_say_how_to_install(
    demo_w4: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantdoctor.commands.fix import gradient_remedies_available

    monkeypatch.setitem(sys.modules, "torch", None)
    assert not gradient_remedies_available()
    for command in ("adaround", "finetune"):
        with pytest.raises(ConfigError, match=r"needs PyTorch.*pip install 'quantdoctor\[train\]'"):
            demo_w4.with_recipe([{command: {}}])


def test_adaround_layers_pattern_that_matches_nothing_is_an_error(demo_w4: Engine) -> None:
    with pytest.raises(ConfigError, match=r"adaround: layers pattern 'nope\*' matches no"):
        demo_w4.with_recipe([{"adaround": {"layers": ["nope*"]}}])


def test_fix_tries_adaround_then_finetune_last_for_a_quantization_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quantdoctor.commands.fix import gradient_candidates
    from quantdoctor.report import Finding, Report

    cause = Finding("quantization.weights_sensitive", 4, "warning", "weights cost accuracy")
    report = Report(config="doctor.yaml", findings=[cause])
    got = gradient_candidates(report)
    assert [c.label for c in got] == ["adaround", "finetune"]
    assert [c.steps for c in got] == [[{"adaround": {}}], [{"finetune": {}}]]
    assert all(c.because == cause.id and c.cost > 2 for c in got)
    info = Finding("quantization.weights_sensitive", 4, "info", "fine")
    assert gradient_candidates(Report(config="doctor.yaml", findings=[info])) == []
    monkeypatch.setitem(sys.modules, "torch", None)
    assert gradient_candidates(report) == []


def test_trained_weights_add_a_bias_the_trained_model_has() -> None:
    from onnx import TensorProto, helper

    from quantdoctor.quant.remedies.trained_weights import with_weights_of

    def conv(bias: bool) -> onnx.ModelProto:
        w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
        inits = [w] + ([numpy_helper.from_array(np.full(2, 0.5, np.float32), "b")] if bias else [])
        node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], name="c")
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        return helper.make_model(graph)

    out, count, _ = with_weights_of(conv(False), conv(True), "recipe[1].trained_weights")
    assert count == 2 and len(out.graph.node[0].input) == 3
    x = np.ones((1, 1, 2, 2), np.float32)
    y = OrtRunner(out, "emulate").run(x)["y"]
    assert np.allclose(y, 1.5)


def test_cli_with_adaround_but_without_torch_exits_2_saying_how_to_install(
    tmp_path: Path,
) -> None:
    import subprocess

    import yaml

    from quantdoctor.demo import prepare_demo

    from .test_cli_errors import assert_clean_error

    config = prepare_demo(tmp_path / "demo", "none")
    raw = yaml.safe_load(config.read_text())
    raw["recipe"].append({"adaround": {}})
    config.write_text(yaml.safe_dump(raw))
    fake = tmp_path / "no_torch" / "torch"  # an installed torch that does not import
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "quantdoctor", "evaluate", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert_clean_error(
        result, "recipe[", "adaround needs PyTorch", "pip install 'quantdoctor[train]'"
    )
