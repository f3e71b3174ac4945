"""Time the calibration-set step (DESIGN §4 step 2) and print what each calibration set costs.

    python benchmarks/calibration_step.py examples/efficientnet_lite0.yaml
    python benchmarks/calibration_step.py examples/efficientnet_lite0.yaml --imagenet-sets

Without options the config's own calibration and evaluation data are used (evaluation limited
to --evaluation-limit images). With --imagenet-sets the ImageNet sample of ../shared/data is
split as in tests/test_calibration_checks.py: 64 random images as the good calibration set, the
other 936 (of which --evaluation-limit are used) for evaluation, plus the bad sets (one image
copied 64 times, 64 noise images, 64 single-colour images, 64 CIFAR-10 images); each set runs
in a fresh engine.

Printed per set: the decode time (shared with every other step, listed apart); the calibration
step's wall and CPU time with its parts (other processes on the machine inflate the wall time,
so the load average is printed with it; the direct test includes the native outputs of the
evaluation images, which the three-way test reuses); each finding's severity; and the direct
test: the quantized metric with the set's ranges vs with ranges from held-out evaluation images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import quantdoctor
from quantdoctor.checks.calibration import calibration_checks
from quantdoctor.config import DataConfig, DoctorConfig, ImageSourceConfig
from quantdoctor.engine import Engine
from quantdoctor.tasks import make_task

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("QUANTDOCTOR_DATA", REPO.parent / "shared" / "data"))


def imagenet_sets(root: Path, seed: int = 0) -> tuple[dict[str, Path], Path]:
    """The good/bad calibration folders and the evaluation labels file (disjoint images)."""
    folder = DATA / "imagenet-sample"
    files = sorted(folder.glob("*.JPEG"))
    rng = np.random.default_rng(seed)
    chosen = sorted(files[i].name for i in rng.choice(len(files), 64, replace=False))
    sets = {name: root / name for name in ("good", "duplicates", "noise", "flat", "cifar")}
    for path in sets.values():
        path.mkdir(parents=True)
    for i, name in enumerate(chosen):
        shutil.copyfile(folder / name, sets["good"] / name)
        shutil.copyfile(folder / chosen[0], sets["duplicates"] / f"{i:03d}_{chosen[0]}")
    lines = (REPO / "examples" / "imagenet_sample_labels.txt").read_text().splitlines()
    labels = root / "eval_labels.txt"
    labels.write_text("\n".join(x for x in lines if x.split()[0] not in set(chosen)) + "\n")
    cifar = sorted((DATA / "cifar10" / "train").rglob("*.jpg"))
    for i in rng.choice(len(cifar), 64, replace=False):
        shutil.copyfile(cifar[i], sets["cifar"] / f"{cifar[i].parent.name}_{cifar[i].name}")
    noise_rng, colour_rng = np.random.default_rng(1), np.random.default_rng(2)
    for i in range(64):
        noise = noise_rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(noise).save(sets["noise"] / f"{i:03d}.png")
        flat = np.full((256, 256, 3), colour_rng.integers(0, 256, 3), dtype=np.uint8)
        Image.fromarray(flat).save(sets["flat"] / f"{i:03d}.png")
    return sets, labels


def run(config: DoctorConfig, label: str, context: str) -> None:
    t0 = time.perf_counter()
    engine = Engine(config)
    task = make_task(config)
    cal, ev = engine.images("calibration"), engine.images("evaluation")
    t1, c1 = time.perf_counter(), time.process_time()
    result = calibration_checks(engine, task, context=context)
    t2, c2 = time.perf_counter(), time.process_time()
    parts = ", ".join(f"{k} {v:.1f}" for k, v in result.evidence["timings_s"].items())
    print(
        f"[{label}] {len(cal)} calibration + {len(ev)} evaluation images: decode {t1 - t0:.1f} s;"
        f" calibration step {t2 - t1:.1f} s wall, {c2 - c1:.1f} s CPU on {os.cpu_count()} cores"
        f" ({parts}; load average {os.getloadavg()[0]:.1f})"
    )
    for f in result.findings:
        print(f"    {f.severity:7s} {f.id}: {f.title}")
    d = result.evidence["direct_test"]
    if "float" in d:

        def show(x: dict[str, Any]) -> str:
            return f"{x['value']:.1f} (95% CI {x['ci95'][0]:.1f} … {x['ci95'][1]:.1f})"

        print(
            f"    direct test, {d['metric']} on {d['scoring_images']} held-out images "
            f"({d['context']}/{d['target']}): float {show(d['float'])}; with this set's ranges "
            f"{show(d['given_ranges'])}; with ranges from {d['holdout_calibration_images']} "
            f"held-out images {show(d['holdout_ranges'])}; cost {d['cost_points']:+.2f} points "
            f"(95% CI {d['cost_ci95'][0]:+.2f} … {d['cost_ci95'][1]:+.2f}, p = {d['p_value']:.2g})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--evaluation-limit", type=int, default=500)
    parser.add_argument("--imagenet-sets", action="store_true")
    parser.add_argument("--context", default="int8", choices=("int8", "quantized"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    config = quantdoctor.load_config(args.config)
    evaluation = config.data.evaluation
    assert evaluation is not None, "the config needs data.evaluation"
    evaluation = evaluation.model_copy(update={"limit": args.evaluation_limit})

    if not args.imagenet_sets:
        data = config.data.model_copy(update={"evaluation": evaluation})
        for _ in range(args.repeat):
            run(config.model_copy(update={"data": data}), "config", args.context)
        return
    with tempfile.TemporaryDirectory() as tmp:
        sets, labels = imagenet_sets(Path(tmp), config.seed)
        evaluation = evaluation.model_copy(
            update={"path": DATA / "imagenet-sample", "labels": labels}
        )
        for name, folder in sets.items():
            data = DataConfig(
                calibration=ImageSourceConfig(path=folder, limit=64), evaluation=evaluation
            )
            for _ in range(args.repeat if name == "good" else 1):
                run(config.model_copy(update={"data": data}), name, args.context)


if __name__ == "__main__":
    main()
