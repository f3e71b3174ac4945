"""Time and memory of ``quantdoctor diagnose``, per step, on a first run and on a second run
after a recipe change, each in a fresh process (as a user runs it).

    python benchmarks/diagnose_profile.py examples/efficientnet_lite0.yaml
    python benchmarks/diagnose_profile.py examples/yolox_nano_coco128.yaml \\
        --change "quantization_param: {layers: ['Conv_41'], precision: a16_w16}"

The first run gets an empty cache folder (QUANTDOCTOR_CACHE), the second the same folder,
with ``--change`` appended to the recipe (default: ``equalization: {}``, the remedy
diagnose names first on EfficientNet-Lite0 for hailo8). Printed: each step's wall time and
peak resident memory (findings.json ``profile``), the process's wall time and peak memory
(``wait4``: everything, imports and the report included), and the second run's share of the
first. State the machine's load when quoting the numbers: the steps share two cores with
whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _config_with(config: Path, change: str | None, folder: Path) -> Path:
    """The config, its paths made absolute, with one recipe line appended."""
    raw = yaml.safe_load(config.read_text())
    base = config.resolve().parent

    def absolute(value: object) -> object:
        return str((base / str(value)).resolve()) if value is not None else None

    raw["model"] = absolute(raw["model"])
    for split in ("calibration", "evaluation"):
        src = (raw.get("data") or {}).get(split)
        if src:
            for key in ("path", "labels", "class_names"):
                if src.get(key) is not None:
                    src[key] = absolute(src[key])
    if change:
        raw["recipe"] = list(raw.get("recipe") or []) + [yaml.safe_load(change)]
    out = folder / ("changed.yaml" if change else "first.yaml")
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def run_diagnose(config: Path, report: Path, cache: Path) -> dict:
    """One ``diagnose`` in a fresh process: its profile, wall time and peak memory."""
    env = {**os.environ, "QUANTDOCTOR_CACHE": str(cache)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantdoctor", "diagnose", str(config), "--report-dir",
         str(report)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"diagnose failed: {proc.stderr.read().decode()[-2000:]}")
    found = json.loads((report / "findings.json").read_text())
    sweep = (found.get("evidence", {}).get("layers") or {}).get("cost") or {}
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "profile": found["profile"],
            "sweep": sweep}


def _print(label: str, run: dict) -> None:
    print(f"\n{label}: {run['wall_s']:.1f} s, peak {run['peak_rss_mb']:.0f} MB (whole process)")
    print(f"  {'step':<12} {'wall s':>8} {'peak MB':>8} {'after MB':>9}")
    for name, s in run["profile"]["steps"].items():
        print(f"  {name:<12} {s['wall_s']:>8.1f} {s['peak_rss_mb']:>8.0f} {s['rss_mb']:>9.0f}")
    engine = run["profile"]["engine"]
    passes = ", ".join(f"{c} {engine['run_images'][c]} images {s:.1f} s"
                       for c, s in engine["run_s"].items())
    print(f"  model passes: {passes or 'none'}")
    print(f"  captures {engine['captured_images']} images {engine['capture_s']:.1f} s; "
          f"decoding {engine['decoded_images']} images {engine['decode_s']:.1f} s; "
          f"{engine['outputs_from_disk']} output set(s) from the cache, "
          f"{engine.get('outputs_from_rows', 0)} from a larger split's outputs")
    sweep = run.get("sweep") or {}
    if sweep:
        print(f"  per-layer sweep: {sweep.get('variants', 0)} variant run(s), "
              f"{sweep.get('variants_from_cache', 0)} from the cache, "
              f"{sweep.get('variant_work_in_model_evaluations', 0)} model evaluations of work")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--change", default="equalization: {}",
                        help="the recipe line the second run adds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qd-bench-") as tmp:
        folder = Path(tmp)
        cache = folder / "cache"
        first = run_diagnose(_config_with(args.config, None, folder), folder / "r1", cache)
        _print("first run (empty cache)", first)
        second = run_diagnose(_config_with(args.config, args.change, folder), folder / "r2",
                              cache)
        _print(f"second run (recipe + {args.change!r}, cache from the first)", second)
        print(f"\nsecond / first: {second['wall_s'] / first['wall_s']:.2f}")


if __name__ == "__main__":
    main()
