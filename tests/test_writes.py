"""Nothing written can crash: a read-only folder, a file or folder in the way, a full disk, a
disk that fills up during the run. Every command that writes (evaluate, analyze, diagnose,
fix, init, demo, export) answers with one sentence and exit 2, checked before the work; a
result computed before a write failed is printed, not lost (README "The report")."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import quantdoctor.files
from quantdoctor.cli import app

from .test_cli_errors import assert_clean_error, run_cli

REPORTING = ("evaluate", "analyze", "diagnose", "fix")


def _mount_tmpfs(path: Path, options: str) -> bool:
    """A real small or read-only file system (needs root; the tests that need it skip
    otherwise)."""
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write into: chmod 555, or for root (whom modes do not stop) a
    read-only tmpfs."""
    folder = tmp_path / "read_only"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not _mount_tmpfs(folder, "ro,size=1m"):
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    yield folder
    _umount(folder)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system with no space left (a 256 KiB tmpfs, filled)."""
    folder = tmp_path / "full"
    if not _mount_tmpfs(folder, "size=256k"):
        pytest.skip("needs root and permission to mount a tmpfs to fill a real disk")
    try:
        with open(folder / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError as err:
        assert err.errno == errno.ENOSPC
    yield folder
    _umount(folder)


def _commands(config: Path, place: Path) -> dict[str, list[str]]:
    """Each writing command, writing into ``place``."""
    return {
        **{c: [c, str(config), "--report-dir", str(place / "report")] for c in REPORTING},
        "init": ["init", *_init_args(config), "-o", str(place / "doctor.yaml")],
        "export": ["export", str(config), "-o", str(place / "model.qdq.onnx")],
        "demo": ["demo", "--dir", str(place / "demo")],
    }


def _check_all(config: Path, place: Path, *needles: str) -> None:
    for name, args in _commands(config, place).items():
        result = run_cli(*args)
        assert_clean_error(result, *needles)
        assert "decoding" not in result.stderr, (name, result.stderr)  # before the work


def _init_args(config: Path) -> list[str]:
    import yaml

    cfg = yaml.safe_load(config.read_text())
    return [cfg["model"], "--images", cfg["data"]["evaluation"]["path"], "--no-measure"]


def test_read_only_folder_every_command(digits_config, read_only: Path) -> None:  # type: ignore[no-untyped-def]
    _check_all(digits_config(), read_only, str(read_only), "not writable")


def test_full_disk_every_command(digits_config, full_disk: Path) -> None:  # type: ignore[no-untyped-def]
    _check_all(digits_config(), full_disk, "No space left on device")


def test_init_output_is_a_folder_with_or_without_force(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "a_folder"
    folder.mkdir()
    args = _init_args(digits_config())
    for force in ([], ["--force"]):
        result = run_cli("init", *args, "-o", str(folder), *force)
        assert_clean_error(result, f"{folder} is a folder", "file name")
    assert folder.is_dir() and not any(folder.iterdir())


def test_init_output_that_is_not_a_regular_file(digits_config) -> None:  # type: ignore[no-untyped-def]
    # /dev/null must never be replaced by a config file, even with --force
    result = run_cli("init", *_init_args(digits_config()), "-o", "/dev/null", "--force")
    assert_clean_error(result, "/dev/null is not a regular file")
    assert Path("/dev/null").is_char_device()


def test_demo_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a_file"
    path.write_text("x")
    assert_clean_error(run_cli("demo", "--dir", str(path)), "is not a folder")


def _disk_fills_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every report and config write fails as on a full disk, after the checks passed."""

    def full(path: Path, data: str | bytes) -> Path:
        raise quantdoctor.files.WriteError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    for module in ("quantdoctor.files", "quantdoctor.report.findings", "quantdoctor.report.html",
                   "quantdoctor.scaffold"):
        monkeypatch.setattr(f"{module}.write_atomic", full)


def test_disk_full_during_evaluate_prints_the_results(  # type: ignore[no-untyped-def]
    digits_config, tmp_path: Path, monkeypatch
) -> None:
    config = digits_config()
    good = CliRunner().invoke(app, ["evaluate", str(config)])
    assert good.exit_code == 0, good.output
    before = (tmp_path / "report" / "findings.json").read_text()
    _disk_fills_up(monkeypatch)
    result = CliRunner().invoke(app, ["evaluate", str(config)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    assert "native" in text and "quantized" in text  # the three-way table is printed
    assert "the results could not be saved" in text and "No space left on device" in text
    assert "Traceback" not in text
    # the earlier report is whole: kept as findings.prev.json, never half-written
    assert json.loads((tmp_path / "report" / "findings.prev.json").read_text()) == json.loads(
        before
    )


def test_disk_full_when_init_writes_prints_the_config(  # type: ignore[no-untyped-def]
    digits_config, tmp_path: Path, monkeypatch
) -> None:
    _disk_fills_up(monkeypatch)
    out = tmp_path / "new" / "doctor.yaml"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["init", *_init_args(digits_config()), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "model:" in result.stdout, result.output
    assert "No space left on device" in result.output
    assert not out.exists()


def test_disk_full_after_fix_prints_the_recipe(digits_config, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _disk_fills_up(monkeypatch)
    result = CliRunner().invoke(app, ["fix", str(digits_config()), "--max-evaluations", "1"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "confirmed on" in text or "nothing to fix" in text  # the fix result is printed
    assert "the results could not be saved" in text and "No space left on device" in text
