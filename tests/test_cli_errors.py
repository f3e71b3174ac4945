"""Bad input: one clear message (what, where, how to fix), exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_config


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantdoctor", *args], capture_output=True, text=True, timeout=300
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    # progress lines (plain, without a terminal) may come before the error
    text = result.stderr
    assert "Traceback" not in text + result.stdout
    text = text[text.lower().find("error:"):] if "error:" in text.lower() else text
    assert text.lower().startswith("error:"), result.stderr
    for needle in needles:
        assert needle in " ".join(text.split()), text


def test_missing_config_file(tmp_path: Path) -> None:
    assert_clean_error(run_cli("evaluate", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")


def test_missing_model_file(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(model=str(tmp_path / "missing.onnx"))
    assert_clean_error(run_cli("evaluate", str(path)), "missing.onnx", "not found", "model:")


def test_unknown_config_field(digits_config) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(metrik="top1")
    assert_clean_error(run_cli("evaluate", str(path)), "unknown field 'metrik'")


def test_unknown_nested_field_names_its_path(digits_config) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(preprocess={"scale": 1 / 255, "normalise": True})
    assert_clean_error(run_cli("evaluate", str(path)), "preprocess.normalise")


def test_wrong_value_type(digits_config) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(preprocess={"scale": "a lot"})
    assert_clean_error(
        run_cli("evaluate", str(path)), "preprocess.scale", "'a lot'", "valid number"
    )


def test_wrong_enum_value_lists_what_is_allowed(digits_config) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(recipe=[{"calibration": {"method": "magic"}}])
    assert_clean_error(
        run_cli("evaluate", str(path)), "recipe[0].calibration.method", "'magic'", "'minmax'"
    )


def test_asymmetric_weights_are_refused_in_one_sentence(digits_config) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(target={"profile": "int8", "weights": {"symmetric": False}})
    assert_clean_error(run_cli("evaluate", str(path)), "target.weights", "symmetric: false")


def test_dash_h_is_help() -> None:
    for args in (["-h"], ["evaluate", "-h"], ["fix", "-h"]):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout


def test_input_size_the_model_cannot_take(digits_config) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(preprocess={"scale": 1 / 255, "resize": {"size": [16, 16]}})
    assert_clean_error(run_cli("evaluate", str(path)), "takes 8x8", "16x16", "[8, 8]")


def test_images_that_do_not_fit_the_model(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    folder = tmp_path / "big" / "0"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 20)).save(folder / f"{i}.png")
    path = digits_config(data={"evaluation": {"path": str(tmp_path / "big")}})
    assert_clean_error(run_cli("evaluate", str(path)), "takes 8x8", "20x20", "resize.size")


def test_empty_data_folder(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    path = digits_config(data={"evaluation": {"path": str(empty)}})
    assert_clean_error(run_cli("evaluate", str(path)), "no images found", str(empty))


def test_missing_data_folder(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(data={"evaluation": {"path": str(tmp_path / "nowhere")}})
    assert_clean_error(run_cli("evaluate", str(path)), "does not exist", "nowhere")


def test_corrupt_image_among_the_data_is_listed_and_skipped(
    digits, digits_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    test_copy = tmp_path / "test"
    shutil.copytree(digits["test"], test_copy)
    broken = test_copy / "3" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    path = digits_config(
        data={
            "calibration": {"path": str(digits["train"]), "limit": 64},
            "evaluation": {"path": str(test_copy)},
        }
    )
    result = run_cli("evaluate", str(path))
    assert result.returncode == 0, result.stderr
    assert "setup.unreadable_images" in result.stdout
    report = json.loads((tmp_path / "report" / "findings.json").read_text())
    finding = next(f for f in report["findings"] if f["id"] == "setup.unreadable_images")
    assert finding["evidence"]["files"][0][0] == str(broken)
    assert report["contexts"]["native"]["n"] == 898  # the readable ones, all used


def test_mostly_corrupt_data_stops_with_a_clear_error(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "bad" / "0"
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"{i}.jpg").write_bytes(b"garbage")
    path = digits_config(data={"evaluation": {"path": str(tmp_path / "bad")}})
    assert_clean_error(run_cli("evaluate", str(path)), "5 of 5", "could not be read", "0.jpg")


def test_not_an_onnx_file(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"definitely not protobuf")
    assert_clean_error(run_cli("evaluate", str(digits_config(model=str(fake)))), "fake.onnx")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_config(tmp_path, {})
    path.write_text("model: [unclosed\n")
    assert_clean_error(run_cli("evaluate", str(path)), "not valid YAML", "line")


@pytest.mark.parametrize("flag", ["--debug"])
def test_debug_shows_the_traceback(tmp_path: Path, flag: str) -> None:
    result = run_cli("evaluate", str(tmp_path / "nope.yaml"), flag)
    assert result.returncode != 0
    assert "Traceback" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-drop", "-1"], "--max-drop must be >= 0"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--fail-on", "sometimes"], "--fail-on 'sometimes' is unknown"),
    ],
)
def test_command_line_values_are_checked_first(digits_config, args: list[str], needle: str) -> None:  # type: ignore[no-untyped-def]
    assert_clean_error(run_cli("evaluate", str(digits_config()), *args), needle)


def test_limit_and_fail_on_gate_a_ci_pipeline(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from quantdoctor.demo import prepare_demo

    ok = run_cli("evaluate", str(digits_config()), "--limit", "40", "--fail-on", "degradation")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = json.loads((tmp_path / "report" / "findings.json").read_text())
    assert data["contexts"]["native"]["n"] == 40
    # one calibration image: the quantized model loses far more than max_drop
    broken = prepare_demo(tmp_path / "demo", "single_calibration_image")
    gate = run_cli("evaluate", str(broken), "--fail-on", "degradation")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "--fail-on degradation: evaluation.degradation" in gate.stderr
    assert "Traceback" not in gate.stderr
    assert (tmp_path / "demo" / "report" / "findings.json").is_file()  # the report is written
