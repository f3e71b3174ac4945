"""The same inputs give the same numbers (DESIGN §8): two runs of ``diagnose`` write the same
findings.json, byte for byte, apart from the fields that are timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def _is_timing(key: str) -> bool:
    # The report's timing fields: "seconds" (recipe steps), "*_s" (capture_s, build_s,
    # sessions_s, run_s, and the timings_s tables), and "profile" (wall time and memory per
    # step, measured, not computed).
    return key in ("seconds", "profile") or key.endswith("_s")


def _without_timings(value: Any, dropped: list[str]) -> Any:
    if isinstance(value, dict):
        kept = {}
        for k, v in value.items():
            if _is_timing(k):
                dropped.append(k)
            else:
                kept[k] = _without_timings(v, dropped)
        return kept
    if isinstance(value, list):
        return [_without_timings(v, dropped) for v in value]
    return value


def _diagnose(config: Path, report: Path, hash_seed: str) -> str:
    """``quantdoctor diagnose`` in a fresh process; returns findings.json as text."""
    # Another hash seed per run: set and dict-of-set iteration orders differ between them,
    # as they do between a user's two runs.
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-m", "quantdoctor", "diagnose", str(config), "--report-dir",
         str(report)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return (report / "findings.json").read_text(encoding="utf-8")


def test_diagnose_twice_gives_the_same_findings_json(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = digits_config()
    first = _diagnose(config, tmp_path / "first", "1")
    second = _diagnose(config, tmp_path / "second", "2")
    dropped: list[str] = []
    a = _without_timings(json.loads(first), dropped)
    b = _without_timings(json.loads(second), [])
    # the timings were there
    assert {"capture_s", "seconds", "timings_s", "profile"} <= set(dropped)
    # the whole checklist ran: a comparison of nothing would prove nothing
    assert set(a["steps"]) >= {"setup", "pipeline", "calibration", "evaluation", "layers"}
    assert all(state == "done" for state in a["steps"].values())
    assert len(a["findings"]) > 5 and a["contexts"]["native"]["n"] == 898
    # key order counts too (a byte-identical file), so compare the dumps, not the dicts
    assert json.dumps(a, indent=1) == json.dumps(b, indent=1)
