"""Retraining with BatchNorm (quantdoctor.train.batchnorm): inserting a BatchNorm after the
convolutions that layers.bn_missing names preserves the function before training, and
folding it back on from_torch reproduces the module's eval-mode outputs (float and
quantized, against ONNX Runtime) before and after training. Tiny models built here, on the
digits images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import quantdoctor
from quantdoctor.errors import QuantdoctorError

torch = pytest.importorskip("torch")

from quantdoctor.engine.engine import Engine  # noqa: E402
from quantdoctor.engine.runner import OrtRunner  # noqa: E402
from quantdoctor.train import bn_missing_layers, from_torch, to_torch  # noqa: E402
from quantdoctor.train.batchnorm import BatchNormTorchModel, insert_batchnorm  # noqa: E402
from quantdoctor.train.convert import float_model_of, trainable_copy  # noqa: E402

CONVS = ["/features.0/Conv", "/features.2/Conv", "/features.4/Conv"]


def bn_less_cnn(seed: int = 0) -> onnx.ModelProto:
    """Three convolutions without BatchNorm (PyTorch-style names, so the graph evidence is
    'none'): 3x3 + Relu with a bias, 3x3 + Relu without a bias, 1x1 without activation;
    then global average pool and a Gemm. Weights scaled up: unnormalized pre-activations."""
    rng = np.random.default_rng(seed)
    inits = {
        "features.0.weight": rng.normal(size=(8, 3, 3, 3)) * 4.0,
        "features.0.bias": rng.normal(size=8) * 2.0,
        "features.2.weight": rng.normal(size=(8, 8, 3, 3)) * 0.3,
        "features.4.weight": rng.normal(size=(8, 8, 1, 1)) * 0.5,
        "features.4.bias": rng.normal(size=8),
        "fc.weight": rng.normal(size=(10, 8)) * 0.3,
        "fc.bias": np.zeros(10),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "features.0.weight", "features.0.bias"], ["c0"], name=CONVS[0],
          pads=[1] * 4),
        n("Relu", ["c0"], ["r0"], name="/features.1/Relu"),
        n("Conv", ["r0", "features.2.weight"], ["c1"], name=CONVS[1], pads=[1] * 4),
        n("Relu", ["c1"], ["r1"], name="/features.3/Relu"),
        n("Conv", ["r1", "features.4.weight", "features.4.bias"], ["c2"], name=CONVS[2]),
        n("GlobalAveragePool", ["c2"], ["p"], name="/gap"),
        n("Flatten", ["p"], ["f"], name="/flatten"),
        n("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="/fc", transB=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "bn_less_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _engine(digits_config, tmp_path: Path, target: str = "hailo8") -> Engine:  # type: ignore[no-untyped-def]
    path = tmp_path / "bn_less_cnn.onnx"
    onnx.save(bn_less_cnn(), path)
    return Engine(quantdoctor.load_config(digits_config(model=str(path), target=target)))


def _snr(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = ((got.astype(np.float64) - ref) ** 2).sum()
    return float("inf") if noise == 0 else float(10 * np.log10((ref**2).sum() / noise))


def _calibration_batch(engine: Engine) -> torch.Tensor:
    """Every calibration image in one batch: its statistics are the BatchNorms' initial ones."""
    batches = list(engine.batches(engine.images("calibration")))
    return torch.from_numpy(np.concatenate(batches))


def _logits(module, x: torch.Tensor) -> np.ndarray:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return module(x)["logits"].numpy()


@pytest.fixture
def engine(digits_config, tmp_path: Path) -> Engine:  # type: ignore[no-untyped-def]
    return _engine(digits_config, tmp_path)


def test_bn_missing_layers_names_the_bn_less_convolutions(engine: Engine) -> None:
    assert bn_missing_layers(engine) == CONVS  # none is a prediction layer: the Gemm follows
    unnormalized = bn_missing_layers(engine, unnormalized_only=True)
    assert unnormalized and set(unnormalized) <= set(CONVS)


@pytest.mark.parametrize("target", ["hailo8", "int8"])  # per-tensor, per-channel weights
def test_insertion_preserves_the_function(digits_config, tmp_path: Path, target: str) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(digits_config, tmp_path, target)
    plain = to_torch(engine, verify_split=None)
    module = to_torch(engine, verify_split=None, batchnorm=["/features.*"])
    assert isinstance(module, BatchNormTorchModel) and list(module.inserted) == CONVS
    assert not module.training  # eval mode: the running statistics, the deployed function
    x = _calibration_batch(engine)
    # eval mode: the BatchNorm is the identity, bit for bit (its fold factor is exactly 1)
    for mode in ("quant_mode", "float_mode"):
        want = _logits(getattr(plain, mode)(), x)
        assert np.array_equal(_logits(getattr(module, mode)(), x), want), mode
    for name in CONVS:
        w, b, s = module.folded(name)
        assert torch.equal(s, torch.ones_like(s))
    # train mode, on the images the statistics come from: the identity up to rounding
    module.train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    float_snr = _snr(_logits(plain.float_mode(), x), _logits(module.float_mode(), x))
    quant_snr = _snr(_logits(plain.quant_mode(), x), _logits(module.quant_mode(), x))
    print(
        f"{target}: train mode vs the copy without BatchNorm: float {float_snr:.1f} dB, "
        f"quantized {quant_snr:.1f} dB"
    )
    assert float_snr > 80
    assert quant_snr > 25  # batch statistics of quantized inputs, running ones of float
    module.load_state_dict(state)  # (train-mode runs updated the running statistics)
    # from_torch before training: the QDQ model of the quantized context, but for the bias
    # that the bias-less convolution gains (zero)
    rebuilt, reference = from_torch(module.eval(), engine), engine.model("quantized")
    got = {i.name: numpy_helper.to_array(i) for i in rebuilt.graph.initializer}
    for init in reference.graph.initializer:
        assert np.array_equal(got[init.name], numpy_helper.to_array(init)), init.name
    added = set(got) - {i.name for i in reference.graph.initializer}
    assert added and all("features.2.weight__batchnorm_bias" in k for k in added)
    assert not any(got[k].any() for k in added if k.endswith("__quantized"))
    xs = x.numpy()
    assert np.array_equal(
        OrtRunner(rebuilt, "emulate").run(xs)["logits"],
        OrtRunner(reference, "emulate").run(xs)["logits"],
    )


def _train(module, engine: Engine, steps: int, lr: float = 3e-2) -> None:  # type: ignore[no-untyped-def]
    """A few steps of label training in train mode (batch statistics), so that the weights,
    the BatchNorm parameters and its running statistics all move."""
    images = engine.images("evaluation").subset(range(128))  # labelled
    labels = torch.from_numpy(np.asarray(images.labels, np.int64))
    batches, start = [], 0
    for b in engine.batches(images):
        batches.append((torch.from_numpy(b), labels[start : start + len(b)]))
        start += len(b)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    module.train()
    for k in range(steps):
        x, y = batches[k % len(batches)]
        loss = torch.nn.functional.cross_entropy(module(x)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()


@pytest.mark.parametrize(
    ("target", "learnable"), [("hailo8", False), ("int8", False), ("int8", True)]
)
def test_folding_reproduces_the_trained_module(
    digits_config, tmp_path: Path, target: str, learnable: bool
) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(digits_config, tmp_path, target)
    module = to_torch(engine, verify_split=None, learnable_scales=learnable, batchnorm=CONVS)
    initial = {n: module.batchnorm(n).running_var.clone() for n in CONVS}
    gamma = {n: module.batchnorm(n).weight.detach().clone() for n in CONVS}
    _train(module.quant_mode(), engine, steps=6)
    for n in CONVS:  # non-trivial BatchNorms to fold: statistics and parameters moved
        bn = module.batchnorm(n)
        assert not torch.allclose(bn.running_var, initial[n], rtol=1e-3)
        assert not torch.allclose(bn.weight, gamma[n], rtol=1e-3)
        s = module.folded(n)[2]
        assert (s - 1).abs().max() > 1e-3
    x = _calibration_batch(engine)
    # float: the module in eval mode against ONNX Runtime on the folded float model
    folded = float_model_of(module)
    assert [n.op_type for n in folded.graph.node] == [
        n.op_type for n in engine.float_model.graph.node
    ]
    want = _logits(module.float_mode(), x)
    float_snr = _snr(want, OrtRunner(folded, "emulate").run(x.numpy())["logits"])
    # quantized: the module in eval mode against ONNX Runtime on from_torch's QDQ model
    qdq = from_torch(module, engine)
    assert "BatchNormalization" not in {n.op_type for n in qdq.graph.node}
    want = _logits(module.quant_mode(), x)
    quant_snr = _snr(want, OrtRunner(qdq, "emulate").run(x.numpy())["logits"])
    print(
        f"{target} learnable={learnable}: folded vs module: float {float_snr:.1f} dB, "
        f"quantized {quant_snr:.1f} dB"
    )
    assert float_snr > 90
    assert quant_snr > 40
    agreement = OrtRunner(qdq, "emulate").run(x.numpy())["logits"].argmax(1) == want.argmax(1)
    assert agreement.mean() >= 0.98


def test_frozen_batchnorm_trains_the_deployed_function(engine: Engine) -> None:
    """With the BatchNorms in eval mode while training (frozen statistics), the forward pass
    is exactly the folded, quantized convolution: gradients reach the BatchNorm parameters.
    (The gradient remedies' entry point, trainable_copy, takes the option too.)"""
    module = trainable_copy(
        engine,
        engine.float_model,
        engine.plan(),
        engine.ranges(),
        verify_split=None,
        batchnorm=CONVS[:1],
    )
    assert isinstance(module, BatchNormTorchModel) and list(module.inserted) == CONVS[:1]
    x = _calibration_batch(engine)
    loss = module.quant_mode()(x)["logits"].square().mean()
    loss.backward()
    bn = module.batchnorm(CONVS[0])
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    assert bn.bias.grad is not None and bn.bias.grad.abs().sum() > 0
    assert int(bn.num_batches_tracked) == 0  # eval mode: the statistics did not move


def test_unknown_or_wrong_layer_names_are_refused(engine: Engine) -> None:
    module = to_torch(engine, verify_split=None)
    with pytest.raises(
        QuantdoctorError,
        match=r"no convolution named '/features\.9/Conv'.*"
        r"closest: /features\.\d/Conv",
    ):
        insert_batchnorm(module, engine, ["/features.9/Conv"])
    with pytest.raises(QuantdoctorError, match=r"'/fc' names no convolution.*Gemm"):
        insert_batchnorm(module, engine, ["/fc"])
    with pytest.raises(QuantdoctorError, match=r"no convolution named 'conv\*'"):
        to_torch(engine, verify_split=None, batchnorm=["conv*"])
    assert type(module).__name__ == "QuantizedTorchModel"  # untouched by the refusals
