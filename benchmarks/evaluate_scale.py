"""Does ``quantdoctor evaluate`` scale? The same config on its evaluation images and on
``--copies`` times as many (the same files under other names, as symbolic links, with their
labels), each in a fresh process without the cache across runs: time per image and peak
resident memory of both, and their ratios.

    python benchmarks/evaluate_scale.py examples/efficientnet_lite0.yaml --copies 10

Needs a config whose evaluation images have a labels file (``filename label`` lines) or class
folders. Printed: wall time of the whole process and of the evaluation step (findings.json
``profile``), per image, and the peak (``wait4``). State the machine's load when quoting.
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

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _absolute(config: Path, value: object) -> str | None:
    return None if value is None else str((config.resolve().parent / str(value)).resolve())


def _copies(source: Path, labels: Path | None, copies: int, folder: Path) -> Path | None:
    """``copies`` links to every image of ``source`` (names prefixed ``c00_`` …) and, with a
    labels file, its lines for every link; returns the new labels file."""
    folder.mkdir(parents=True)
    images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for k in range(copies):
        for p in images:
            rel = p.relative_to(source)
            link = folder / rel.parent / f"c{k:02d}_{rel.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p)
    if labels is None:
        return None
    out = folder.parent / f"labels_{copies}.txt"
    lines = [ln for ln in labels.read_text().splitlines() if ln.strip()]
    with out.open("w") as fh:
        for k in range(copies):
            for ln in lines:
                fh.write(f"c{k:02d}_{ln}\n")
    return out


def _config(config: Path, copies: int, folder: Path) -> Path:
    raw = yaml.safe_load(config.read_text())
    raw["model"] = _absolute(config, raw["model"])
    cal = (raw.get("data") or {}).get("calibration")
    if cal:
        cal["path"] = _absolute(config, cal["path"])
    ev = raw["data"]["evaluation"]
    labels = _absolute(config, ev.get("labels"))
    if ev.get("class_names"):
        ev["class_names"] = _absolute(config, ev["class_names"])
    images = folder / f"images_{copies}"
    new_labels = _copies(Path(_absolute(config, ev["path"]) or ""), labels and Path(labels),
                         copies, images)
    ev["path"] = str(images)
    ev.pop("limit", None)
    if new_labels is not None:
        ev["labels"] = str(new_labels)
    out = folder / f"doctor_{copies}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def run_evaluate(config: Path, report: Path) -> dict:
    env = {**os.environ, "QUANTDOCTOR_CACHE": "off"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantdoctor", "evaluate", str(config), "--report-dir",
         str(report), "--profile"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"evaluate failed: {proc.stderr.read().decode()[-2000:]}")
    found = json.loads((report / "findings.json").read_text())
    n = found["contexts"]["native"]["n"]
    steps = found["profile"]["steps"]
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "images": n,
            "evaluation_s": steps["evaluation"]["wall_s"], "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qd-scale-") as tmp:
        folder = Path(tmp)
        runs = {}
        for copies in (1, args.copies):
            runs[copies] = run_evaluate(_config(args.config, copies, folder),
                                        folder / f"r{copies}")
            r = runs[copies]
            print(f"{r['images']:>6} images: {r['wall_s']:.1f} s in all "
                  f"({1000 * r['wall_s'] / r['images']:.2f} ms/image), evaluation step "
                  f"{r['evaluation_s']:.1f} s ({1000 * r['evaluation_s'] / r['images']:.2f} "
                  f"ms/image), peak {r['peak_rss_mb']:.0f} MB", flush=True)
            for name, s in r["steps"].items():
                print(f"         {name:<12} {s['wall_s']:>7.1f} s  "
                      f"peak {s['peak_rss_mb']:>6.0f} MB")
        small, big = runs[1], runs[args.copies]
        per = (big["wall_s"] / big["images"]) / (small["wall_s"] / small["images"])
        per_step = (big["evaluation_s"] / big["images"]) / (small["evaluation_s"] /
                                                             small["images"])
        print(f"\ntime per image, {big['images']} vs {small['images']} images: {per:.2f} "
              f"(whole process), {per_step:.2f} (evaluation step); peak "
              f"{big['peak_rss_mb']:.0f} vs {small['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
