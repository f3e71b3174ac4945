"""Each remedy's effect and cost on one config, side by side on the same images: the metric
with its 95% CI, the paired difference to native (CI and paired test), the seconds each
recipe command took to apply, and the wall time of the variant.

    python benchmarks/remedies.py examples/efficientnet_lite0.yaml
    python benchmarks/remedies.py examples/efficientnet_lite0.yaml --variants minmax,mse \\
        --context quantized --limit 200
    python benchmarks/remedies.py lite0_256.yaml --variants equalization+bias_correction \\
        --step '[{equalization: {}}, {bias_correction: {}}, {finetune: {}}]' --exclude-calibration
    python benchmarks/remedies.py examples/yolox_nano_coco128.yaml --target int8 \\
        --variants minmax,percentile,mse,entropy \\
        --step '{quantization_param: {layers: [a], precision: a16_w16}}'

Every variant appends its recipe lines to the config's recipe (a later ``calibration``
replaces the earlier one) and runs in a sibling engine that shares the decoded images and
the float outputs, so only what the remedy changes is recomputed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

import quantdoctor
from quantdoctor.checks.evaluation import compare, score_context
from quantdoctor.config import TargetConfig
from quantdoctor.engine import Engine
from quantdoctor.stats import snr_db
from quantdoctor.tasks import make_native_task, make_task

VARIANTS: dict[str, list[dict]] = {
    "minmax": [{"calibration": {"method": "minmax"}}],
    "percentile": [{"calibration": {"method": "percentile", "percentile": 99.99}}],
    "mse": [{"calibration": {"method": "mse"}}],
    "entropy": [{"calibration": {"method": "entropy"}}],
    "equalization": [{"equalization": {}}],
    "equalization+bias_correction": [{"equalization": {}}, {"bias_correction": {}}],
    "bias_correction": [{"bias_correction": {}}],
    "mse+equalization+bias_correction": [
        {"calibration": {"method": "mse"}}, {"equalization": {}}, {"bias_correction": {}}
    ],
    "weights_clipping_mse": [{"weights_clipping": {"layers": ["*"], "mode": "mse"}}],
    "activation_clipping_mse": [{"activation_clipping": {"layers": ["*"], "mode": "mse"}}],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--step", action="append", default=[],
                        help="a custom variant: recipe line(s) as YAML (repeatable)")
    parser.add_argument("--context", default="int8", choices=["int8", "quantized"])
    parser.add_argument("--target", default=None, help="hailo8 | int8 (default: the config's)")
    parser.add_argument("--limit", type=int, default=None, help="evaluation images")
    parser.add_argument("--exclude-calibration", action="store_true",
                        help="evaluate only on evaluation images that are not calibration "
                             "images (for remedies that learn from them: adaround, finetune)")
    args = parser.parse_args()

    config = quantdoctor.load_config(args.config)
    updates = {}
    if args.target:
        updates["target"] = TargetConfig(profile=args.target)
    if args.limit:
        ev = config.data.evaluation
        updates["data"] = config.data.model_copy(
            update={"evaluation": ev.model_copy(update={"limit": args.limit})})
    config = config.model_copy(update=updates)
    task = make_task(config)
    native_task = make_native_task(config) or task
    t0 = time.perf_counter()
    base = Engine(config)
    split = "evaluation"
    if args.exclude_calibration:
        split = "holdout"
        calibration = {str(p) for p in base.images("calibration").paths}
        evaluation = base.images("evaluation")
        keep = [i for i, p in enumerate(evaluation.paths) if str(p) not in calibration]
        base.add_split(split, evaluation.subset(keep))
        print(f"evaluating on {len(keep)} of {len(evaluation)} evaluation images (the other "
              f"{len(evaluation) - len(keep)} are calibration images)")
    native_scores, native = score_context(base, native_task, "native", config.seed, split)
    setup_s = time.perf_counter() - t0
    unknown = [n for n in args.variants.split(",") if n and n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    variants = {name: VARIANTS[name] for name in args.variants.split(",") if name}
    for k, text in enumerate(args.step):
        parsed = yaml.safe_load(text)
        variants[f"custom{k}"] = parsed if isinstance(parsed, list) else [parsed]

    table = Table(title=f"{config.model.name}, {base.target.name}, {args.context}, "
                        f"{native.n} images (native {native.value:.2f}; setup {setup_s:.1f} s)")
    for col in ("variant", config.metric, "95% CI", "Δ vs native", "Δ 95% CI", "p",
                "remedy s", "wall s"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for name, steps in variants.items():
        t1 = time.perf_counter()
        engine = base.with_recipe(steps)
        if args.exclude_calibration and engine.config.calibration.size != config.calibration.size:
            parser.error(f"variant {name} changes calibration.size; with --exclude-calibration "
                         "set it in the config instead")
        scores, summary = score_context(engine, task, args.context, config.seed, split)
        wall = time.perf_counter() - t1
        cmp = compare("native", native_scores, name, scores, config.seed)
        applied = sum(r.seconds for r in engine.recipe_log
                      if r.index >= len(config.recipe))  # the appended commands
        table.add_row(
            name, f"{summary.value:.2f}", f"{summary.ci95[0]:.2f} … {summary.ci95[1]:.2f}",
            f"{cmp['difference']:+.2f}", f"{cmp['ci95'][0]:+.2f} … {cmp['ci95'][1]:+.2f}",
            f"{cmp['p_value']:.2g}", f"{applied:.1f}", f"{wall:.1f}",
        )
        if not engine.fp_is_native:  # a float edit: fp_optimized must still match native
            ref, got = engine.outputs("native"), engine.outputs("fp_optimized")
            for out, r in ref.items():
                r64 = r.astype(np.float64)
                snr = snr_db(float((r64**2).sum()), float(((got[out] - r64) ** 2).sum()))
                line = f"  {name}: fp_optimized vs native, output {out}: SNR {snr:.1f} dB"
                if config.task == "classification" and r.ndim == 2:
                    agree = 100 * np.mean(r.argmax(1) == got[out].argmax(1))
                    line += f", top-1 agreement {agree:.2f}% on {len(r)} images"
                print(line)
        for r in engine.recipe_log:
            if r.index >= len(config.recipe):
                print(f"  {name}: {r.command} ({r.stage}) {r.seconds:.2f} s "
                      f"{ {k: v for k, v in r.summary.items() if k != 'examples'} }"[:300])
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
