"""Time the per-layer sensitivity sweep (every quantized layer alone, plus the input) against
one float evaluation of the same images by bare ONNX Runtime, in one process.

    python benchmarks/layer_sweep.py                                   # EfficientNet-Lite0
    python benchmarks/layer_sweep.py examples/efficientnet_lite0.yaml --images 64 --repeat 2

The budget (issue 6) is (quantized layers + 2) float evaluations. The bare side is one
session (all optimizations, all cores) running the already preprocessed batches; its session
creation is left out, which makes the ratio conservative. The sweep's time runs from the
engine (model cleaned, ranges calibrated) to the last variant's output noise: the float
capture, chunk models, QDQ builds, sessions and runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnxruntime as ort

import quantdoctor
from quantdoctor.checks.layers import sweep_images
from quantdoctor.engine import Engine
from quantdoctor.engine.subgraph import LayerSweep, Variant

REPO = Path(__file__).resolve().parents[1]


def bare_float(model: bytes, batches: list, input_name: str) -> float:
    """Seconds for bare ONNX Runtime to run every batch once (session already created)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    session.run(None, {input_name: batches[0]})  # warm-up
    start = time.perf_counter()
    for x in batches:
        session.run(None, {input_name: x})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(REPO / "examples/efficientnet_lite0.yaml"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--layers-per-chunk", type=int, default=None)
    args = parser.parse_args()

    config = quantdoctor.load_config(args.config)
    for _ in range(args.repeat):
        engine = Engine(config)
        engine.ranges()  # calibration is not part of the sweep
        images = sweep_images(engine, args.images, config.seed)
        batches = list(engine.batches(images))
        model = engine.float_model.SerializeToString()
        float_s = bare_float(model, batches, engine.input.name)

        variants = [Variant.input_alone(engine)] + [
            Variant.alone(engine, layer) for layer in engine.layers
        ]
        start = time.perf_counter()
        sweep = LayerSweep(engine, images, layers_per_chunk=args.layers_per_chunk)
        sweep.run(variants)
        sweep_s = time.perf_counter() - start
        float_s = min(float_s, bare_float(model, batches, engine.input.name))  # load noise

        c = sweep.cost
        n = len(engine.layers)
        print(
            f"{config.model.name}: {len(images)} images, {n} quantized layers + input, "
            f"{len(sweep.chunked.chunks)} chunks of {sweep.chunked.layers_per_chunk} layers\n"
            f"  one float evaluation (bare ONNX Runtime): {float_s:.3f} s\n"
            f"  sweep: {sweep_s:.2f} s = {sweep_s / float_s:.1f} float evaluations "
            f"(budget: {n} + 2 = {n + 2})\n"
            f"    capture {c.capture_s:.2f} s, chunk models + QDQ {c.build_s:.2f} s, sessions "
            f"{c.sessions_s:.2f} s, runs {c.run_s:.2f} s ({c.chunk_runs} chunk runs); "
            f"variant work by node count: {c.model_evaluations:.1f} model evaluations"
        )


if __name__ == "__main__":
    main()
