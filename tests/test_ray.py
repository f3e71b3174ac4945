"""The Ray executor (issue #17): a local two-CPU Ray cluster on 127.0.0.1, shared by the
module; evaluate and analyze there give the local run's findings.json apart from timings, a
worker killed mid-run is retried with the same numbers, and without Ray one sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from quantdoctor.cli import app
from quantdoctor.engine.executors import CRASH_MARKER_ENV

from .conftest import digits_doctor, write_config

ray = pytest.importorskip("ray", reason="the Ray executor needs pip install 'quantdoctor[ray]'")

TIMING_KEYS = {"seconds"}


def _untimed(value: Any) -> Any:
    """findings.json without timings (``seconds`` and ``*_s`` fields)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items()
                if k not in TIMING_KEYS and not k.endswith("_s")}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One local Ray cluster (2 CPUs, 127.0.0.1) for the module; workers inherit the crash
    marker's variable (the marker file itself exists only during the fault test)."""
    marker = tmp_path_factory.mktemp("ray") / "crash-once"
    os.environ[CRASH_MARKER_ENV] = str(marker)
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False)
    try:
        yield marker
    finally:
        ray.shutdown()
        os.environ.pop(CRASH_MARKER_ENV, None)


def _run(command: str, config: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [command, str(config), *args])
    assert result.exit_code == 0, result.output
    cfg = json.loads(json.dumps(__import__("yaml").safe_load(config.read_text())))
    return json.loads((Path(cfg["report"]["dir"]) / "findings.json").read_text())


def _config(digits: dict[str, Path], folder: Path, **overrides: Any) -> Path:
    return write_config(folder, digits_doctor(digits, folder / "report", **overrides))


@pytest.fixture
def ray_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the engine handed work to the Ray executor (outputs, sweep)."""
    from quantdoctor.engine.executors import RayExecutor

    calls = {"outputs": 0, "sweep": 0}
    for name in calls:
        original = getattr(RayExecutor, name)

        def counted(self: Any, *args: Any, _name: str = name, _f: Any = original,
                    **kwargs: Any) -> Any:
            calls[_name] += 1
            return _f(self, *args, **kwargs)

        monkeypatch.setattr(RayExecutor, name, counted)
    return calls


@pytest.mark.parametrize("command", ["evaluate", "analyze"])
def test_ray_gives_the_local_findings(cluster: Any, digits: dict[str, Path], tmp_path: Path,
                                      command: str, ray_calls: dict[str, int]) -> None:
    local = _run(command, _config(digits, tmp_path / "local"))
    assert ray_calls == {"outputs": 0, "sweep": 0}  # local: Ray is not asked
    remote = _run(command, _config(digits, tmp_path / "ray"), "--executor", "ray")
    assert ray_calls["outputs"] > 0
    if command == "evaluate":
        assert local["contexts"]["native"]["n"] > 800
    else:
        assert ray_calls["sweep"] > 0
        assert any(f["id"].startswith("layers.") for f in local["findings"])
    assert _untimed(remote)["findings"]
    for key in ("contexts", "findings", "comparisons", "evidence", "steps", "reliability"):
        assert _untimed(remote).get(key) == _untimed(local).get(key), key


def test_config_key_runs_on_ray(cluster: Any, digits: dict[str, Path], tmp_path: Path) -> None:
    """executor: {type: ray} in the config does what --executor ray does; the engine ships
    to the workers (its outputs come from Ray tasks: the executor holds object refs)."""
    import quantdoctor
    from quantdoctor.engine import Engine

    cfg = quantdoctor.load_config(_config(digits, tmp_path, executor={"type": "ray"}))
    engine = Engine(cfg)
    assert engine.executor is not None
    engine.outputs("native")
    assert any(k.startswith("model:") for k in engine.executor._shipped)
    assert any(k.startswith("pixels:") for k in engine.executor._shipped)


def test_killed_worker_is_retried(cluster: Any, digits: dict[str, Path], tmp_path: Path) -> None:
    """A task kills its worker once (os._exit): Ray retries it; the numbers are the same."""
    local = _run("evaluate", _config(digits, tmp_path / "local"))
    cluster.write_text("crash once")
    remote = _run("evaluate", _config(digits, tmp_path / "ray"), "--executor", "ray")
    assert not cluster.exists(), "no task crashed: the fault was not injected"
    assert _untimed(remote)["contexts"] == _untimed(local)["contexts"]
    assert _untimed(remote)["findings"] == _untimed(local)["findings"]


def test_bad_executor_is_one_sentence(digits: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(_config(digits, tmp_path)),
                                      "--executor", "spark"])
    assert result.exit_code == 2
    assert "--executor 'spark' is unknown" in result.output
    result = CliRunner().invoke(app, ["evaluate", str(_config(
        digits, tmp_path, executor={"type": "ray", "address": "not an address"}))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "executor.address" in result.output


def test_without_ray_one_sentence(digits: dict[str, Path], tmp_path: Path) -> None:
    """Ray hidden from the import system: exit 2 and how to install it, no traceback."""
    config = _config(digits, tmp_path)
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from quantdoctor.cli import main\n"
        f"sys.argv = ['quantdoctor', 'evaluate', {str(config)!r}, '--executor', 'ray']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'quantdoctor[ray]'" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
