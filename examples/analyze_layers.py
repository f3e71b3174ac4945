"""Run the per-layer analysis (suspect 4) on a doctor.yaml and print its findings: the
checks of ``quantdoctor analyze`` until the command is wired to them.

    python examples/analyze_layers.py examples/efficientnet_lite0.yaml
    python examples/analyze_layers.py examples/efficientnet_lite0.yaml \\
        --only weight_range_imbalance --model /tmp/efficientnet_lite0.onnx
    python examples/analyze_layers.py examples/yolox_nano_coco128.yaml --target int8 \\
        --only concat_output --images 16 --json /tmp/yolox_layers.json

``--only`` runs some checks alone (low_snr, whole_model, wide_range,
weight_range_imbalance, bn_missing, concat_output, activation_function); without it every
check runs, as :func:`quantdoctor.checks.layers.layer_checks` does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import quantdoctor
from quantdoctor.checks.layers import LayerAnalysis, layer_checks
from quantdoctor.config import TargetConfig
from quantdoctor.engine import Engine
from quantdoctor.report import Finding
from quantdoctor.tasks import make_task

CHECKS = (
    "low_snr",
    "whole_model",
    "wide_range",
    "weight_range_imbalance",
    "bn_missing",
    "concat_output",
    "activation_function",
)


def show(finding: Finding, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.1f} s] {finding.severity:7s} {finding.id}")
    print(f"    {finding.title}")
    if finding.recommendation:
        print(f"    → {finding.recommendation}")
    for line in finding.recipe:
        print(f"    recipe: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--model", type=Path, help="replace the config's model")
    parser.add_argument("--target", choices=("hailo8", "int8"), help="replace the target")
    parser.add_argument("--limit", type=int, help="evaluation images for the metrics")
    parser.add_argument("--images", type=int, default=64, help="images for the sweep/statistics")
    parser.add_argument("--context", default="int8", choices=("int8", "quantized"))
    parser.add_argument("--only", help="comma-separated checks: " + ", ".join(CHECKS))
    parser.add_argument("--no-metrics", action="store_true", help="SNR only, no metric runs")
    parser.add_argument("--json", type=Path, help="write findings and evidence here")
    args = parser.parse_args()

    config = quantdoctor.load_config(args.config)
    update: dict[str, object] = {}
    if args.model:
        update["model"] = args.model.resolve()
    if args.target:
        update["target"] = TargetConfig(profile=args.target)
    if args.limit and config.data.evaluation is not None:
        ev = config.data.evaluation.model_copy(update={"limit": args.limit})
        update["data"] = config.data.model_copy(update={"evaluation": ev})
    config = config.model_copy(update=update)

    start = time.perf_counter()
    engine = Engine(config)
    task = make_task(config)
    if args.only:
        a = LayerAnalysis(
            engine, task, args.images, context=args.context, metrics=not args.no_metrics
        )
        findings: list[Finding] = []
        for name in args.only.split(","):
            if name == "low_snr":
                a.run_sweep()
            got = getattr(a, name)()
            for f in got if isinstance(got, list) else [got]:
                findings.append(f)
                show(f, start)
        evidence = {"timings_s": a.timer.seconds, "cost": a.cost()}
    else:
        result = layer_checks(
            engine,
            task,
            images=args.images,
            context=args.context,
            metrics=not args.no_metrics,
            on_finding=lambda f: show(f, start),
        )
        findings, evidence = result.findings, result.evidence
        print(json.dumps(evidence["cost"], indent=1))
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"findings": [f.__dict__ for f in findings], "evidence": evidence},
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
