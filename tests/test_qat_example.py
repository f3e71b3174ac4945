"""The QAT example (examples/qat_resnet20.py) end to end on a few CIFAR-10 images: to_torch →
one epoch → save_trained_weights → ``trained_weights`` recipe → evaluate, and from_torch
reproducing the evaluated model (marked shared_data; skipped without torch)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.shared_data

pytest.importorskip("torch")


def _example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "qat_resnet20", REPO / "examples" / "qat_resnet20.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["qat_resnet20"] = module
    spec.loader.exec_module(module)
    return module


def test_qat_example_smoke(tmp_path: Path) -> None:
    example = _example()
    model = example.MODEL if example.MODEL.is_file() else tmp_path / "resnet20.onnx"
    out = tmp_path / "out"
    result = example.main(
        ["--limit", "10", "--epochs", "1", "--out", str(out), "--model", str(model)]
    )
    before, after, check = result["before"], result["after"], result["check"]
    assert before["native"].n == after["native"].n == 10
    # native is the original float model both times; only the quantized weights changed
    assert after["native"].value == before["native"].value
    assert (out / "resnet20_qat.onnx").is_file() and (out / "resnet20_qat.qdq.onnx").is_file()
    assert "trained_weights" in (out / "after.yaml").read_text()
    # from_torch gives exactly the model that `quantdoctor evaluate after.yaml` quantizes,
    # and ONNX Runtime on it reproduces the module's predictions
    assert check["same_as_evaluated"]
    assert check["agreement"] >= 0.9
    assert abs(check["top1"] - after["quantized"].value) <= 10.0  # one image of 10 at most
    assert set(result["times"]) >= {"evaluate before", "to_torch", "train", "evaluate after"}
