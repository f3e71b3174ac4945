"""Shared fixtures: a real (tiny) classifier trained on scikit-learn's bundled digits, its
images written as PNG files, and doctor.yaml writers. Tests on ../shared/data use the
``shared_data`` marker and skip when the folder is absent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QUANTDOCTOR_DATA", REPO.parent / "shared" / "data"))
# every test computes what it checks (and CLI subprocesses inherit this); the cache across
# runs has its own tests (tests/test_disk_cache.py)
os.environ["QUANTDOCTOR_CACHE"] = "off"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(
        reason=f"real models/images not found at {SHARED_DATA} (set QUANTDOCTOR_DATA)"
    )
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


def digits_model(coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> onnx.ModelProto:
    """Image [N,3,8,8] → 1x1 Conv (channel mean) → Flatten → Gemm → Relu → Gemm → logits."""
    inits = [
        numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "mix_w"),
        numpy_helper.from_array(np.zeros(1, np.float32), "mix_b"),
        numpy_helper.from_array(coefs[0].T.astype(np.float32), "fc1_w"),
        numpy_helper.from_array(intercepts[0].astype(np.float32), "fc1_b"),
        numpy_helper.from_array(coefs[1].T.astype(np.float32), "fc2_w"),
        numpy_helper.from_array(intercepts[1].astype(np.float32), "fc2_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "mix_w", "mix_b"], ["mix"], name="mix/Conv"),
        helper.make_node("Flatten", ["mix"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["h"], name="fc1/Gemm", transB=1),
        helper.make_node("Relu", ["h"], ["h_relu"], name="fc1/Relu"),
        helper.make_node(
            "Gemm", ["h_relu", "fc2_w", "fc2_b"], ["logits"], name="fc2/Gemm", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digits as 8x8 greyscale PNGs in class folders (train = even rows, test = odd rows) and
    an MLP trained on the train half, as ONNX."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    root = tmp_path_factory.mktemp("digits")
    data = load_digits()
    pixels = np.round(data.images * 255 / 16).astype(np.uint8)
    for split, rows in (("train", range(0, len(pixels), 2)), ("test", range(1, len(pixels), 2))):
        for i in rows:
            folder = root / split / str(data.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], "L").save(folder / f"{i:04d}.png")
    x = pixels[::2].reshape(-1, 64).astype(np.float64) / 255.0
    mlp = MLPClassifier((32,), max_iter=400, random_state=0).fit(x, data.target[::2])
    model_path = root / "digits_mlp.onnx"
    onnx.save(digits_model(mlp.coefs_, mlp.intercepts_), model_path)
    return {"root": root, "train": root / "train", "test": root / "test", "model": model_path}


def write_config(folder: Path, config: dict[str, Any], name: str = "doctor.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def digits_config(digits: dict[str, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    """Returns a writer: ``digits_config(**overrides) -> Path`` of a valid doctor.yaml."""

    def make(**overrides: Any) -> Path:
        return write_config(tmp_path, digits_doctor(digits, tmp_path / "report", **overrides))

    return make


def digits_doctor(digits: dict[str, Path], report_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A valid doctor.yaml (as a dict) for the digits model, with top-level overrides."""
    config: dict[str, Any] = {
        "model": str(digits["model"]),
        "task": "classification",
        "data": {
            "calibration": {"path": str(digits["train"]), "limit": 64},
            "evaluation": {"path": str(digits["test"])},
        },
        "preprocess": {"color": "rgb", "scale": 1 / 255},
        "metric": "top1",
        "target": "hailo8",
        "recipe": [{"calibration": {"method": "minmax", "size": 64}}],
        "report": {"dir": str(report_dir)},
    }
    config.update(overrides)
    return config
