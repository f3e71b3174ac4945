"""``quantdoctor fix``: the search accepts only measured gains, the result is confirmed on
held-out images, the pipeline is not tuned away, bad input is one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import quantdoctor
from quantdoctor.commands.fix import fix

from .conftest import digits_model
from .test_cli_errors import assert_clean_error, run_cli


def _dominated_mlp(digits: dict[str, Path], path: Path) -> Path:
    """The digits MLP with one hidden unit of fc1 held at +5000 (a constant bias) that fc2
    ignores: the float model is unchanged, but fc1's per-tensor 8-bit output grid becomes
    ~20 wide for units that live in 0..20 — this one layer dominates the quantization loss."""
    model = onnx.load(digits["model"])
    for init in model.graph.initializer:
        value = onnx.numpy_helper.to_array(init).copy()
        if init.name == "fc1_b":
            value[0] = 5000.0
        elif init.name == "fc2_w":
            value[:, 0] = 0.0
        else:
            continue
        init.CopyFrom(onnx.numpy_helper.from_array(value, init.name))
    onnx.save(model, path)
    return path


def test_fix_finds_the_dominating_layer_and_stops(digits, digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _dominated_mlp(digits, tmp_path / "dominated.onnx")
    cfg = quantdoctor.load_config(digits_config(model=str(model)))
    out = tmp_path / "fixed.yaml"
    result, report = fix(cfg, max_drop=1.0, output=out)
    accepted = [s for s in result.steps if s.accepted]
    assert len(accepted) == 1, [(s.remedy, s.reason) for s in result.steps]
    assert "fc1" in " ".join(accepted[0].recipe)  # that layer, 16 bits or its range clipped
    # nothing after it changed the recipe (later tries, for margin, were rejected)
    assert all(not s.accepted for s in result.steps if s.index > accepted[0].index)
    assert result.status == "met" and result.confirmed["drop"] <= 1.0
    assert result.confirmed["n"] == result.confirm_images
    assert result.search_images + result.confirm_images == len(
        list((digits["test"]).rglob("*.png")))
    # the fixed config runs as is and carries the step
    fixed = quantdoctor.load_config(out)
    assert len(fixed.recipe) == len(cfg.recipe) + len(accepted[0].recipe)
    assert f"# step {accepted[0].index} {accepted[0].remedy}" in out.read_text()
    again = quantdoctor.evaluate(fixed, write=False)
    assert again.contexts["native"].value - again.contexts["int8"].value <= 2.0
    data = json.loads((cfg.report.dir / "findings.json").read_text())
    assert data["fix"]["status"] == "met" and data["fix"]["steps"]
    assert "Fix" in (cfg.report.dir / "index.html").read_text()


def test_fix_without_a_working_remedy_exits_1(tmp_path: Path) -> None:
    from quantdoctor.demo import prepare_demo

    config = prepare_demo(tmp_path / "demo", "single_calibration_image")
    out = tmp_path / "fixed.yaml"
    result = run_cli("fix", str(config), "--max-drop", "0.5", "-o", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOT met" in result.stdout and "calibration" in result.stdout
    assert out.is_file()  # the best recipe is still written
    data = json.loads((config.parent / "report" / "findings.json").read_text())
    assert data["fix"]["status"] == "not_met"
    assert all(not s["accepted"] for s in data["fix"]["steps"])


def test_fix_does_not_tune_a_wrong_pipeline(tmp_path: Path) -> None:
    from quantdoctor.demo import prepare_demo

    config = prepare_demo(tmp_path / "demo", "double_normalization")
    result = run_cli("fix", str(config))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "pipeline.normalization_duplicated" in result.stdout
    assert "preprocess: {mean: null, std: null}" in result.stdout
    assert not (tmp_path / "demo" / "doctor.fixed.yaml").exists()
    data = json.loads((config.parent / "report" / "findings.json").read_text())
    assert data["fix"]["status"] == "pipeline" and not data["fix"]["steps"]


def test_nothing_to_fix(tmp_path: Path) -> None:
    from quantdoctor.demo import prepare_demo

    config = prepare_demo(tmp_path / "demo", "none")
    result = run_cli("fix", str(config), "--max-drop", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to fix" in result.stdout
    fixed = yaml.safe_load((tmp_path / "demo" / "doctor.fixed.yaml").read_text())
    assert fixed["recipe"] == yaml.safe_load(config.read_text())["recipe"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--max-drop", "-1"], "unreachable"),
        (["--max-16bit-macs", "1.5"], "outside [0, 1]"),
        (["--max-evaluations", "0"], "at least 1"),
    ],
)
def test_fix_bad_budget(digits_config, args: list[str], needle: str) -> None:  # type: ignore[no-untyped-def]
    assert_clean_error(run_cli("fix", str(digits_config()), *args), needle)


def test_fix_config_whose_recipe_fails(digits_config) -> None:  # type: ignore[no-untyped-def]
    cfg = digits_config(recipe=[{"activation_clipping": {"layers": ["nope"], "mode": "mse"}}])
    assert_clean_error(run_cli("fix", str(cfg)), "matches no layer")


def test_fix_output_path_is_checked_first(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert_clean_error(run_cli("fix", str(digits_config()), "-o", str(folder)), str(folder))


def test_digits_model_helper_is_unchanged() -> None:
    # _dominated_mlp edits the conftest model by initializer names: they must exist
    names = {i.name for i in digits_model(
        [np.zeros((64, 32)), np.zeros((32, 10))], [np.zeros(32), np.zeros(10)]
    ).graph.initializer}
    assert {"fc1_b", "fc2_w"} <= names
