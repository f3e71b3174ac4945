from __future__ import annotations

from pathlib import Path

import pytest

from quantdoctor.config import load_config, parse_config
from quantdoctor.errors import ConfigError
from quantdoctor.quant import resolve_target

from .conftest import write_config


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "cfg",
        {"model": "m.onnx", "data": {"evaluation": {"path": "../val", "labels": "labels.txt"}}},
    )
    cfg = load_config(path)
    assert cfg.model == (tmp_path / "cfg" / "m.onnx").resolve()
    assert cfg.data.evaluation.path == (tmp_path / "val").resolve()
    assert cfg.data.evaluation.labels == (tmp_path / "cfg" / "labels.txt").resolve()
    assert cfg.report.dir == (tmp_path / "cfg" / "report").resolve()


def test_defaults_and_recipe_commands() -> None:
    cfg = parse_config(
        {
            "model": "m.onnx",
            "preprocess": {"center_crop": 224, "mean": 127, "std": [128, 128, 128]},
            "recipe": [
                {"calibration": {"method": "percentile", "size": 32, "percentile": 99.9}},
                {"quantization_param": {"layers": ["/head/*"], "precision": "a16_w16"}},
            ],
        }
    )
    assert cfg.preprocess.center_crop == (224, 224)
    assert cfg.preprocess.mean == [127.0, 127.0, 127.0]
    assert cfg.calibration.method == "percentile" and cfg.calibration.size == 32
    assert cfg.precisions[0].layers == ["/head/*"]
    assert cfg.target.profile == "hailo8"


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        ({"model": "m.onnx", "metrik": "top1"}, ["unknown field 'metrik'"]),
        ({"model": "m.onnx", "preprocess": {"mean": [1, 2]}}, ["preprocess.mean", "3 values"]),
        ({"model": "m.onnx", "preprocess": {"std": [1, 0, 1]}}, ["preprocess.std", "0"]),
        ({"model": "m.onnx", "preprocess": {"resize": {}}}, ["preprocess.resize", "exactly one"]),
        ({"model": "m.onnx", "target": "tpu"}, ["target.profile", "'tpu'", "'hailo8'"]),
        ({"model": "m.onnx", "recipe": [{"calibraton": {}}]}, ["recipe[0]", "one command"]),
        (
            {
                "model": "m.onnx",
                "recipe": [{"quantization_param": {"layers": ["a"], "precision": "a2"}}],
            },
            ["recipe[0].quantization_param.precision", "'a16_w16'"],
        ),
        ({"model": "m.onnx", "target": {"activations": {"bits": 4}}}, ["target.activations.bits"]),
        ({"metric": "top1"}, ["model", "required"]),
        (["model"], ["mapping"]),
    ],
)
def test_errors_name_the_field_value_and_what_is_allowed(raw: object, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    text = str(info.value)
    for needle in needles:
        assert needle in text, text


def test_target_overrides() -> None:
    cfg = parse_config(
        {"model": "m.onnx", "target": {"profile": "hailo8", "weights": {"per_channel": True}}}
    )
    target = resolve_target(cfg.target)
    assert target.weights.per_channel and target.weights.bits == 8 and target.weights.symmetric
    assert not target.activations.per_channel
    int8 = resolve_target(parse_config({"model": "m.onnx", "target": "int8"}).target)
    assert int8.weights.per_channel


def test_unknown_recipe_command_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"recipe\[0\].*adaround.*finetune.*trained_weights"):
        parse_config({"model": "m.onnx", "recipe": [{"adaroundd": {}}]})

