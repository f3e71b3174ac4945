"""How faithfully the trainable copy (``quantdoctor.train.to_torch``) reproduces ONNX Runtime,
on one config's evaluation images: float mode against fp_optimized (output SNR; the goal is
60 dB), quant mode against the ``quantized`` context (output SNR, the task's metric of both and
their two-way agreement), ONNX Runtime's own int8 kernels against the same (for scale), and
whether ``from_torch`` of the untrained copy rebuilds the ``quantized`` context's model
(initializers and outputs identical), with the seconds each part took.

    python benchmarks/train_fidelity.py examples/resnet20_cifar10.yaml
    python benchmarks/train_fidelity.py examples/efficientnet_lite0.yaml --limit 500
    python benchmarks/train_fidelity.py examples/yolox_nano_coco128.yaml

Needs ``quantdoctor[train]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from onnx import numpy_helper
from rich.console import Console
from rich.table import Table

import quantdoctor
from quantdoctor.checks.evaluation import compare, score_context
from quantdoctor.config import TargetConfig
from quantdoctor.engine import Engine
from quantdoctor.engine.runner import OrtRunner
from quantdoctor.stats import snr_db
from quantdoctor.tasks import make_task
from quantdoctor.train import from_torch, to_torch
from quantdoctor.train.convert import run_module


def _snr(ref: np.ndarray, got: np.ndarray) -> float:
    r = ref.astype(np.float64)
    return snr_db(float((r * r).sum()), float(((got.astype(np.float64) - r) ** 2).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--target", default=None, help="hailo8 | int8 (default: the config's)")
    parser.add_argument("--limit", type=int, default=None, help="evaluation images")
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
    engine = Engine(config)
    task = make_task(config)
    times: dict[str, float] = {}

    t = time.perf_counter()
    module = to_torch(engine, verify_split="calibration")
    times["to_torch + check on calibration"] = time.perf_counter() - t
    print(module.verification.summary())

    images = engine.images("evaluation")
    t = time.perf_counter()
    module.float_mode()
    float_out = run_module(module, engine, images)
    module.quant_mode()
    quant_out = run_module(module, engine, images)
    times[f"torch float + quant on {len(images)} images"] = time.perf_counter() - t
    fp = engine.outputs("fp_optimized")
    quantized = engine.outputs("quantized")
    int8 = engine.outputs("int8")

    q_scores, q = score_context(engine, task, "quantized", config.seed)
    torch_scores = task.score(quant_out, images)
    i_scores = task.score(int8, images)
    vs_torch = compare("quantized", q_scores, "torch", torch_scores, config.seed)
    vs_int8 = compare("quantized", q_scores, "int8", i_scores, config.seed)

    t = time.perf_counter()
    rebuilt = from_torch(module, engine)
    reference = engine.model("quantized")
    a = {i.name: numpy_helper.to_array(i) for i in rebuilt.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in reference.graph.initializer}
    same_inits = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    x = next(engine.batches(images))
    same_out = all(
        np.array_equal(OrtRunner(rebuilt, "emulate").run(x)[k],
                       OrtRunner(reference, "emulate").run(x)[k])
        for k in quantized
    )
    times["from_torch + check"] = time.perf_counter() - t

    table = Table(title=f"{config.model.name}, {engine.target.name}, {len(images)} images")
    for col in ("comparison", "output SNR dB", f"{q.metric} (a / b)", "Δ", "agreement"):
        table.add_column(col, justify="left" if col == "comparison" else "right")
    for name in fp:
        table.add_row(f"torch float vs fp_optimized [{name}]",
                      f"{_snr(fp[name], float_out[name]):.1f}", "", "", "")
    for label, out, cmp, scores in (
        ("torch quant vs quantized", quant_out, vs_torch, torch_scores),
        ("ORT int8 vs quantized", int8, vs_int8, i_scores),
    ):
        for name in quantized:
            table.add_row(
                f"{label} [{name}]", f"{_snr(quantized[name], out[name]):.1f}",
                f"{q.value:.2f} / {scores.value:.2f}", f"{cmp['difference']:+.2f}",
                f"{cmp['agreement_name']} {cmp['agreement']:.2f}%"
                if cmp["agreement"] is not None else "-",
            )
    Console(width=160).print(table)
    print(f"from_torch of the untrained copy: initializers identical {same_inits}, "
          f"outputs identical {same_out}")
    for k, v in times.items():
        print(f"  {k}: {v:.1f} s")


if __name__ == "__main__":
    main()
