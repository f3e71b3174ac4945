"""Integration tests on the real models and images of ../shared/data (marked shared_data;
skipped when that folder, torch or the model packages are absent)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import quantdoctor
from quantdoctor.config import DoctorConfig, TargetConfig

from .conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.shared_data

EXAMPLES = REPO / "examples"


def _export(tmp_path_factory: pytest.TempPathFactory, script: str, **kwargs: object) -> Path:
    missing = [
        m for m in ("torch", "efficientnet_lite_pytorch") if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[examples]'")
    spec = importlib.util.spec_from_file_location(script, EXAMPLES / f"{script}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[script] = module
    spec.loader.exec_module(module)
    return module.export(tmp_path_factory.mktemp("models") / f"{script}.onnx", **kwargs)


def _config(example: str, model: Path, tmp_path: Path, **update: object) -> DoctorConfig:
    cfg = quantdoctor.load_config(EXAMPLES / example)
    report = cfg.report.model_copy(update={"dir": tmp_path / "report"})
    return cfg.model_copy(update={"model": model, "report": report, **update})


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory, "export_efficientnet_lite0")


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = SHARED_DATA / "cifar10" / "resnet20-12fca82f.th"
    return _export(tmp_path_factory, "export_resnet20", weights=weights)


def test_efficientnet_lite0_hailo8(lite0: Path, tmp_path: Path) -> None:
    report = quantdoctor.evaluate(_config("efficientnet_lite0.yaml", lite0, tmp_path))
    native, quant, int8 = (report.contexts[c] for c in ("native", "quantized", "int8"))
    assert native.n == 1000
    assert abs(native.value - 88.8) <= 0.5  # the published figure on these images
    # per-tensor weights on depthwise layers: a real, significant drop (the classic failure)
    assert quant.value < native.value - 2
    drop = next(f for f in report.findings if f.evidence.get("context") == "quantized")
    assert drop.id == "evaluation.degradation" and drop.evidence["p_value"] < 0.01
    # the two integer engines agree
    agree = next(c for c in report.comparisons if c["reference"] == "quantized")
    assert agree["agreement"] > 97.0
    assert abs(quant.value - int8.value) < 1.5
    assert (tmp_path / "report" / "findings.json").is_file()


def test_efficientnet_lite0_int8_per_channel_beats_hailo8_per_tensor(
    lite0: Path, tmp_path: Path
) -> None:
    cfg = _config("efficientnet_lite0.yaml", lite0, tmp_path, target=TargetConfig(profile="int8"))
    report = quantdoctor.evaluate(cfg, write=False)
    quant = report.contexts["quantized"].value
    assert report.contexts["native"].value - quant < 4.0
    agree = next(c for c in report.comparisons if c["reference"] == "quantized")
    assert agree["agreement"] > 97.0


def test_resnet20_cifar10(resnet20: Path, tmp_path: Path) -> None:
    report = quantdoctor.evaluate(_config("resnet20_cifar10.yaml", resnet20, tmp_path), write=False)
    native, quant = report.contexts["native"], report.contexts["quantized"]
    assert native.n == 2000
    assert 80.0 < native.value < 82.5  # README: 81.0% on the 10k JPEG test set
    assert abs(native.value - quant.value) < 1.5


def test_yolox_nano_coco128(tmp_path: Path) -> None:
    model = SHARED_DATA / "models" / "yolox_nano.onnx"
    cfg = quantdoctor.load_config(EXAMPLES / "yolox_nano_coco128.yaml")
    cfg = cfg.model_copy(update={"model": model, "target": TargetConfig(profile="int8")})
    report = quantdoctor.evaluate(cfg, write=False)
    native, quant, int8 = (report.contexts[c] for c in ("native", "quantized", "int8"))
    assert native.n == 128 and native.metric == "map"
    assert 32.0 < native.value < 36.0  # README: ≈ 0.34 with a simpler evaluator
    assert native.ci95[0] < native.value < native.ci95[1]
    # per-channel int8 loses much of YOLOX-Nano's accuracy (three early layers: issue 6)
    drop = next(c for c in report.comparisons if c["context"] == "quantized")
    assert drop["ci95"][1] < 0 and drop["p_value"] < 0.05
    assert abs(quant.value - int8.value) < 2.0


def test_yolox_nano_map50(tmp_path: Path) -> None:
    cfg = quantdoctor.load_config(EXAMPLES / "yolox_nano_coco128.yaml")
    cfg = cfg.model_copy(update={"metric": "map50"})
    from quantdoctor.checks.evaluation import score_context
    from quantdoctor.engine import Engine
    from quantdoctor.tasks import make_task

    _, native = score_context(Engine(cfg), make_task(cfg), "native")
    assert 47.0 < native.value < 52.0  # README: ≈ 0.50


def test_efficientnet_lite0_hailo8_equalization_and_bias_correction(
    lite0: Path, tmp_path: Path
) -> None:
    """Per-tensor weights (hailo8), 500 images: equalization keeps the float function and
    recovers most of the drop; bias correction on top of it does not lose it again."""
    from quantdoctor.checks.evaluation import compare, score_context
    from quantdoctor.engine import Engine
    from quantdoctor.tasks import make_task

    cfg = _config("efficientnet_lite0.yaml", lite0, tmp_path)
    ev = cfg.data.evaluation.model_copy(update={"limit": 500})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"evaluation": ev})})
    task = make_task(cfg)
    base = Engine(cfg)
    eq = base.with_recipe([{"equalization": {}}])
    native = eq.outputs("native")["logits"].astype("float64")
    fp = eq.outputs("fp_optimized")["logits"]
    snr = 10 * np.log10((native**2).sum() / ((fp - native) ** 2).sum())
    assert snr > 60 and (native.argmax(1) == fp.argmax(1)).all()
    before, _ = score_context(base, task, "int8")
    after, _ = score_context(eq, task, "int8")
    gain = compare("minmax", before, "equalization", after)
    assert gain["difference"] > 3 and gain["p_value"] < 0.01
    both, _ = score_context(eq.with_recipe([{"bias_correction": {}}]), task, "int8")
    assert both.value >= after.value - 1.0
