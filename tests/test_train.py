"""The trainable torch copy (quantdoctor.train): ONNX interpretation against ONNX Runtime,
fake quantization against the QDQ model, the round trip back to ONNX, and the message
without torch. Tiny models built here, the shipped demo CNN, and (shared_data)
EfficientNet-Lite0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import quantdoctor
from quantdoctor.errors import QuantdoctorError

from .conftest import REPO
from .test_layers import branchy_net

torch = pytest.importorskip("torch")

from quantdoctor.engine.engine import Engine  # noqa: E402
from quantdoctor.engine.runner import OrtRunner  # noqa: E402
from quantdoctor.quant import PROFILES, QuantPlan  # noqa: E402
from quantdoctor.train import from_torch, to_torch  # noqa: E402
from quantdoctor.train.convert import MIN_FLOAT_SNR_DB, run_module  # noqa: E402
from quantdoctor.train.fake_quant import fake_quantize  # noqa: E402
from quantdoctor.train.interpreter import QuantizedTorchModel  # noqa: E402
from quantdoctor.train.ops import OPS  # noqa: E402


def _snr(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = ((got - ref) ** 2).sum()
    return float("inf") if noise == 0 else float(10 * np.log10((ref**2).sum() / noise))


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.fixture
def demo_engine(tmp_path: Path) -> Engine:
    from quantdoctor.demo import prepare_demo

    return Engine(quantdoctor.load_config(prepare_demo(tmp_path / "demo", "none")))


def _digits_engine(digits_config, tmp_path: Path, model: onnx.ModelProto, **overrides):  # type: ignore[no-untyped-def]
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return Engine(quantdoctor.load_config(digits_config(model=str(path), **overrides)))


# --- without torch ---------------------------------------------------------------------------
def test_core_import_does_not_load_torch_or_train() -> None:
    code = (
        "import sys, quantdoctor, quantdoctor.train; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "assert 'quantdoctor.train.convert' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_without_torch_one_sentence_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import quantdoctor.train as train

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(QuantdoctorError, match=r"pip install 'quantdoctor\[train\]'") as err:
        train.to_torch(None)  # type: ignore[arg-type]
    assert str(err.value).count(". ") == 0  # one sentence
    with pytest.raises(QuantdoctorError, match="quantdoctor"):
        train.from_torch(None)  # type: ignore[arg-type]


# --- fake quantization numerics and gradients --------------------------------------------------
def test_fake_quant_rounds_half_to_even_clamps_and_passes_gradients_straight() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 3.2, 100.0, -100.0], requires_grad=True)
    s = torch.tensor(1.0, requires_grad=True)
    y = fake_quantize(x, s, 0.0, -10, 10)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, 3.0, 10.0, -10.0]
    y.sum().backward()
    assert x.grad.tolist() == [1, 1, 1, 1, 1, 0, 0]  # STE inside, 0 where clamped
    # LSQ: d/ds = round(x/s) - x/s inside, qmax / qmin outside
    expected = (-0.5) + 0.5 + (-0.5) + 0.5 + (-0.2) + 10 + (-10)
    assert s.grad.item() == pytest.approx(expected, abs=1e-6)


# --- the interpreter against ONNX Runtime, op by op ----------------------------------------------
def _ops_model() -> onnx.ModelProto:
    """Many ops in one float graph (opset 17), several outputs."""
    rng = np.random.default_rng(0)
    f = {
        "w": rng.normal(size=(4, 3, 3, 3)),
        "scales": [1.0, 1.0, 2.0, 2.0],
        "lo": 0.1,
        "g_w": rng.normal(size=(11, 10)),
        "t_w": rng.normal(size=(9, 3)),
        "g_c": rng.normal(size=(1, 10)),
        "mm": rng.normal(size=(6, 5)),
        "half": 0.5,
        "two": 2.0,
    }
    i = {
        "zero": [0],
        "minus1": [-1],
        "axis1": [1],
        "sl_s": [1],
        "sl_e": [2**31 - 1],
        "sl_a": [1],
        "sl_st": [2],
        "neg_s": [-1],
        "neg_e": [-(2**31)],
        "neg_a": [3],
        "neg_st": [-1],
        "split": [2, 2],
        "pads": [0, 0, 1, 2, 0, 0, 2, 1],
        "size6": [2, 4, 6, 6],
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "w"], ["c"], name="conv", pads=[0, 0, 1, 1]),
        n(
            "MaxPool",
            ["c"],
            ["mp"],
            name="maxpool",
            kernel_shape=[2, 2],
            strides=[2, 2],
            pads=[0, 0, 1, 1],
        ),
        n("AveragePool", ["mp"], ["ap"], name="avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n(
            "Resize",
            ["ap", "", "scales"],
            ["up"],
            name="resize_nearest",
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        n("Resize", ["up", "", "", "size6"], ["lin"], name="resize_linear", mode="linear"),
        n("Sigmoid", ["lin"], ["sig"], name="sigmoid"),
        n("Tanh", ["lin"], ["tanh"], name="tanh"),
        n("Sub", ["sig", "tanh"], ["sub"], name="sub"),
        n("Div", ["sub", "two"], ["div"], name="div"),
        n("Clip", ["div", "lo", ""], ["clip"], name="clip_min_only"),
        n("Min", ["clip", "sig"], ["min"], name="min"),
        n("Max", ["min", "half", "tanh"], ["max"], name="max"),
        n("Split", ["max", "split"], ["s0", "s1"], name="split", axis=1),
        n("Pad", ["s0", "pads"], ["pad"], name="pad_reflect", mode="reflect"),
        n("Slice", ["pad", "sl_s", "sl_e", "sl_a", "sl_st"], ["sl"], name="slice_step"),
        n("Slice", ["sl", "neg_s", "neg_e", "neg_a", "neg_st"], ["rev"], name="slice_reverse"),
        n("Transpose", ["rev"], ["tr"], name="transpose", perm=[0, 2, 3, 1]),
        n("ReduceMean", ["tr"], ["rm"], name="reducemean", axes=[1], keepdims=0),
        n("Softmax", ["rm"], ["sm"], name="softmax", axis=1),
        n("Shape", ["s1"], ["shp"], name="shape"),
        n("Gather", ["shp", "zero"], ["batch"], name="gather", axis=0),
        n("Concat", ["batch", "minus1"], ["newshape"], name="concat_shape", axis=0),
        n("Reshape", ["sm", "newshape"], ["flat"], name="reshape"),
        n("Unsqueeze", ["flat", "axis1"], ["unsq"], name="unsqueeze"),
        n("Squeeze", ["unsq", "axis1"], ["sq"], name="squeeze"),
        n("GlobalAveragePool", ["s1"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["gapf"], name="flatten"),
        n("Concat", ["sq", "gapf"], ["feat"], name="concat", axis=1),
        n("Gemm", ["feat", "g_w", "g_c"], ["logits"], name="gemm", alpha=0.5, beta=2.0),
        n("Flatten", ["rev"], ["flat0"], name="flatten_axis0", axis=0),
        n("Transpose", ["sq"], ["sqt"], name="transpose2"),
        n("Gemm", ["sqt", "t_w"], ["gt"], name="gemm_transA", transA=1, transB=0),
        n("MatMul", ["lin", "mm"], ["mmout"], name="matmul"),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in f.items()]
    inits += [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in i.items()]
    outs = [("logits", [2, 10]), ("flat0", [1, None]), ("gt", [2, 3]), ("mmout", [2, 4, 6, 5])]
    graph = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_interpreter_matches_onnxruntime_on_many_ops() -> None:
    model = _ops_model()
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(
        zip([o.name for o in ref.get_outputs()], ref.run(None, {"input": x}), strict=True)
    )
    module = QuantizedTorchModel(model, model, QuantPlan(PROFILES["int8"]), {}, [])
    with torch.no_grad():
        got = module(torch.from_numpy(x))
    assert list(got) == ["logits", "flat0", "gt", "mmout"]  # the model's output order
    for name, r in expected.items():
        assert got[name].shape == r.shape, name
        assert _snr(r, got[name].numpy()) > 100, name


def test_unsupported_op_is_named_with_its_node() -> None:
    node = helper.make_node("TopK", ["input", "k"], ["v", "i"], name="my_topk", axis=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.array([2], np.int64), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(QuantdoctorError, match=r"'my_topk'.*TopK"):
        QuantizedTorchModel(model, model, QuantPlan(PROFILES["int8"]), {}, [])


# --- the engine's models: verification, fake quant, round trip -----------------------------------
def test_demo_cnn_converts_matches_quantized_and_round_trips(demo_engine: Engine) -> None:
    module = to_torch(demo_engine)
    report = module.verification
    print(report.summary())
    assert min(report.float_snr_db.values()) >= MIN_FLOAT_SNR_DB
    assert report.quant_snr_db["logits"] > 40
    assert report.quant_agreement["logits"] >= 0.98
    # no training: from_torch rebuilds the quantized context's model exactly
    rebuilt, reference = from_torch(module, demo_engine), demo_engine.model("quantized")
    a, b = _inits(rebuilt), _inits(reference)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert [n.op_type for n in rebuilt.graph.node] == [n.op_type for n in reference.graph.node]
    x = next(demo_engine.batches(demo_engine.images("calibration")))
    assert np.array_equal(
        OrtRunner(rebuilt, "emulate").run(x)["logits"],
        OrtRunner(reference, "emulate").run(x)["logits"],
    )


def _distill(module: QuantizedTorchModel, x: torch.Tensor, steps: int, lr: float) -> None:
    with torch.no_grad():
        teacher = module.float_mode()(x)["logits"]
    module.quant_mode()
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = (module(x)["logits"] - teacher).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("learnable", [False, True])
def test_trained_weights_written_back_match_the_module(
    demo_engine: Engine, learnable: bool
) -> None:
    module = to_torch(demo_engine, learnable_scales=learnable, verify_split=None)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    x = torch.from_numpy(next(demo_engine.batches(demo_engine.images("calibration"))))
    _distill(module, x, steps=3, lr=1e-3)
    changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("weights.") for k in changed)
    assert any(k.startswith("scales.") for k in changed) == learnable
    qdq = from_torch(module, demo_engine)
    with torch.no_grad():
        want = module.quant_mode()(x)["logits"].numpy()
    got = OrtRunner(qdq, "emulate").run(x.numpy())["logits"]
    snr = _snr(want, got)
    print(f"written back vs module (learnable={learnable}): {snr:.1f} dB")
    assert snr > 40
    assert not np.array_equal(
        _inits(qdq)["/13/Gemm__13.weight__quantized"],
        _inits(demo_engine.model("quantized"))["/13/Gemm__13.weight__quantized"],
    )
    if learnable:  # the learned scales are the QDQ model's scales, bit for bit
        inits = _inits(qdq)
        for name, s in module.activation_scales().items():
            if name in inits:
                assert np.array_equal(inits[name], s.detach().numpy()), name


@pytest.mark.parametrize(
    ("target", "precision"),
    [
        ("hailo8", None),
        ("int8", None),
        ("hailo8", ("pw3", "a16_w16")),
        ("int8", ("conv1", "a8_w4")),
    ],
)
def test_branchy_net_fake_quant_follows_the_plan(
    digits_config, tmp_path: Path, target: str, precision: tuple[str, str] | None
) -> None:  # type: ignore[no-untyped-def]
    recipe: list[dict] = [{"calibration": {"method": "minmax", "size": 64}}]
    if precision:
        recipe.append({"quantization_param": {"layers": [precision[0]], "precision": precision[1]}})
    engine = _digits_engine(digits_config, tmp_path, branchy_net(), target=target, recipe=recipe)
    module = to_torch(engine)
    report = module.verification
    print(target, precision, report.summary())
    assert report.float_snr_db["logits"] >= MIN_FLOAT_SNR_DB
    assert report.quant_snr_db["logits"] > 40
    if precision:  # the layer's weights are quantized with the plan's bits
        step = next(s for s in module.weight_steps() if s.layer.name == precision[0])
        assert step.scheme.bits == int(precision[1].split("_w")[1])
    float_out = run_module(module.float_mode(), engine, engine.images("calibration"))
    quant_out = run_module(module.quant_mode(), engine, engine.images("calibration"))
    assert not np.array_equal(float_out["logits"], quant_out["logits"])


def test_a_diverging_conversion_is_refused_naming_the_node(
    digits_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    engine = _digits_engine(digits_config, tmp_path, branchy_net())
    monkeypatch.setitem(OPS, "Add", lambda i, a, o: i[0] - i[1])  # a wrong conversion
    with pytest.raises(QuantdoctorError, match=r"first node that diverges is 'add' \(Add"):
        to_torch(engine)


# --- a real model ----------------------------------------------------------------------------
@pytest.mark.shared_data
def test_efficientnet_lite0_converts(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from .test_real_models import _export

    model = REPO / "examples" / "models" / "efficientnet_lite0.onnx"
    if not model.is_file():  # a clean clone: export it, as the other real-model tests do
        model = _export(tmp_path_factory, "export_efficientnet_lite0")
    cfg = quantdoctor.load_config(REPO / "examples" / "efficientnet_lite0.yaml")
    cfg = cfg.model_copy(update={"model": model})
    data = cfg.data.model_copy(
        update={
            "calibration": cfg.data.calibration.model_copy(update={"limit": 32}),
            "evaluation": cfg.data.evaluation.model_copy(update={"limit": 32}),
        }
    )
    report_dir = cfg.report.model_copy(update={"dir": tmp_path / "report"})
    cfg = cfg.model_copy(update={"data": data, "report": report_dir})
    engine = Engine(cfg)
    module = to_torch(engine)
    report = module.verification
    print(report.summary())
    assert report.float_snr_db["logits"] >= MIN_FLOAT_SNR_DB
    # ONNX Runtime's own two engines (emulation vs integer kernels) agree to about 28 dB
    # here: 1-ulp float differences flip roundings, which hailo8's coarse per-tensor
    # depthwise steps amplify layer by layer; every weight, bias and scale is bit-exact.
    assert report.quant_snr_db["logits"] > 20
    assert report.quant_agreement["logits"] >= 0.95


def test_bias_corrected_recipe_trains_the_model_that_is_quantized(
    digits_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    recipe = [
        {"calibration": {"method": "minmax", "size": 64}},
        {"equalization": {}},
        {"bias_correction": {}},
    ]
    engine = _digits_engine(digits_config, tmp_path, branchy_net(), recipe=recipe)
    module = to_torch(engine)
    source, _ = engine.quantization_source(engine.plan())
    assert source is not engine.float_model  # the biases of the corrected model are trained
    assert module.source_model is source
    assert module.verification.float_snr_db["logits"] >= MIN_FLOAT_SNR_DB
    assert module.verification.quant_snr_db["logits"] > 40
    rebuilt, reference = _inits(from_torch(module, engine)), _inits(engine.model("quantized"))
    assert all(np.array_equal(rebuilt[k], reference[k]) for k in reference)
