"""`quantdoctor demo`: the built-in digits CNN with one injected mistake; diagnose must name
that mistake as the top suspect, and the demo must run with the core install only."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

import quantdoctor
from quantdoctor.cli import app
from quantdoctor.demo import EXPECTED_TOP_SUSPECT, MARKER, prepare_demo
from quantdoctor.errors import QuantdoctorError


def top_suspect(findings_json: Path) -> str | None:
    """The first error or warning of findings.json (DESIGN §5: most important first)."""
    findings = json.loads(findings_json.read_text())["findings"]
    return next((f["id"] for f in findings if f["severity"] in ("error", "warning")), None)


def test_packaged_files_are_small() -> None:
    files = resources.files("quantdoctor.demo")
    assert files.joinpath("digits_cnn.onnx").is_file() and files.joinpath("digits.npz").is_file()
    assert len(files.joinpath("digits_cnn.onnx").read_bytes()) < 200_000
    assert len(files.joinpath("digits.npz").read_bytes()) < 100_000


def test_cli_demo_names_the_double_normalization(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "injected mistake double_normalization" in text
    assert str(folder / "report" / "index.html") in "".join(result.output.split())
    assert top_suspect(folder / "report" / "findings.json") == "pipeline.normalization_duplicated"
    saved = json.loads((folder / "report" / "findings.json").read_text())
    assert saved["reliability"] != "ok"  # the quantized results are marked unreliable
    top = saved["findings"][0]
    assert top["evidence"]["alternative"] > top["evidence"]["declared"] + 50  # ~8% → ~99%


def test_correct_pipeline_has_no_pipeline_error(tmp_path: Path) -> None:
    config = prepare_demo(tmp_path / "demo", "none")
    report = quantdoctor.diagnose(quantdoctor.load_config(config), skip=("layers",), write=False)
    pipeline = [f for f in report.findings if f.suspect == 1]
    assert pipeline and not [f for f in pipeline if f.severity in ("error", "warning")], [
        f.title for f in pipeline
    ]
    assert report.reliability == ""
    # the shipped model reproduces its training accuracy through the declared pipeline
    ref = next(f for f in report.findings if f.id == "pipeline.reference_accuracy")
    assert ref.severity == "ok"
    assert report.contexts["native"].value > 95 and report.contexts["native"].n == 600


def test_single_calibration_image_is_the_top_suspect(tmp_path: Path) -> None:
    config = prepare_demo(tmp_path / "demo", "single_calibration_image")
    assert len(list((tmp_path / "demo" / "calibration").iterdir())) == 64
    report = quantdoctor.diagnose(quantdoctor.load_config(config), skip=("layers",), write=False)
    assert report.top_suspect is not None
    assert report.top_suspect.id in EXPECTED_TOP_SUSPECT["single_calibration_image"]
    few = next(f for f in report.findings if f.id == "calibration.too_few")
    assert few.severity == "error" and few.evidence["distinct_images"] == 1
    # the demo's image is one whose ranges really cost accuracy (measured: 98.3% → 73.0%)
    assert report.contexts["int8"].value < report.contexts["native"].value - 10


def test_folders_are_refreshed_and_foreign_folders_refused(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    prepare_demo(folder, "single_calibration_image")
    config = prepare_demo(folder, "double_normalization")  # a demo folder: refreshed
    assert len(list((folder / "calibration").iterdir())) == 128  # no copies left over
    assert "mean: [127.5, 127.5, 127.5]" in config.read_text()
    assert (folder / MARKER).is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(QuantdoctorError, match="not empty"):
        prepare_demo(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(QuantdoctorError, match="unknown demo mistake"):
        prepare_demo(tmp_path / "other", "bogus")


#: Runs `quantdoctor demo` in a fresh interpreter in which torch and scikit-learn cannot be
#: imported, as after `pip install quantdoctor` without extras.
FRESH_INSTALL = textwrap.dedent(
    """
    import sys

    class NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("torch", "sklearn"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NotInstalled())
    from quantdoctor.cli import main

    sys.argv = ["quantdoctor", "demo", "--dir", sys.argv[1]]
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
    assert not {"torch", "sklearn"} & set(sys.modules)
    """
)


def test_demo_runs_without_torch_and_sklearn(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-c", FRESH_INSTALL, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert top_suspect(folder / "report" / "findings.json") == "pipeline.normalization_duplicated"
