"""The report folder: checked writable before any work, locked against a second run, and
never losing an earlier report (README "The report")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import quantdoctor
from quantdoctor.errors import QuantdoctorError
from quantdoctor.report.folder import LOCK

from .test_cli_errors import assert_clean_error, run_cli


def test_report_dir_that_is_a_file_is_refused_first(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "a_file"
    target.write_text("x")
    for command in ("evaluate", "analyze", "diagnose", "fix"):
        result = run_cli(command, str(digits_config()), "--report-dir", str(target))
        assert_clean_error(result, "is a file, not a folder")
        assert "decoding" not in result.stderr  # refused before the images


def test_a_failed_setup_keeps_the_earlier_report(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = run_cli("evaluate", str(digits_config()))
    assert good.returncode == 0, good.stderr
    report = tmp_path / "report"
    before = (report / "findings.json").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = digits_config(data={"evaluation": {"path": str(empty)}})
    result = run_cli("evaluate", str(bad))
    assert_clean_error(result)
    assert "steps finished so far" not in result.stderr
    assert (report / "findings.json").read_text() == before
    assert not (report / "findings.prev.json").exists()


def test_a_failed_setup_without_an_earlier_report_is_not_no_problem_found(
    digits_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("evaluate", str(digits_config(data={"evaluation": {"path": str(empty)}})))
    assert_clean_error(result)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "No problem found" not in page and "Incomplete: step setup failed" in page


def test_evaluate_after_diagnose_keeps_the_fuller_report(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = quantdoctor.load_config(digits_config())
    quantdoctor.diagnose(cfg, skip=("layers", "calibration"))
    report = tmp_path / "report"
    assert "pipeline" in json.loads((report / "findings.json").read_text())["steps"]
    quantdoctor.evaluate(cfg)
    assert "pipeline" not in json.loads((report / "findings.json").read_text())["steps"]
    assert "pipeline" in json.loads((report / "findings.prev.json").read_text())["steps"]
    assert (report / "index.prev.html").is_file()
    assert not (report / LOCK).exists()  # released


def test_a_second_run_into_the_same_folder_is_refused(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = quantdoctor.load_config(digits_config())
    report = tmp_path / "report"
    report.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (report / LOCK).write_text(str(other.pid))
        held = rf"another quantdoctor run \(process {other.pid}\)"
        with pytest.raises(QuantdoctorError, match=held):
            quantdoctor.evaluate(cfg)
        assert_clean_error(run_cli("evaluate", str(digits_config())), "is writing the report")
    finally:
        other.kill()
        other.wait()
    # the holder is gone: its lock is stale and taken over
    quantdoctor.evaluate(cfg)
    assert not (report / LOCK).exists()
