"""Time `quantdoctor evaluate` (native + int8 contexts) against bare ONNX Runtime running the
same two models on the same preprocessed images, side by side in one process.

    python benchmarks/evaluate_overhead.py examples/efficientnet_lite0.yaml [--repeat 1]

The bare side gets everything for free that evaluate must do itself: images already decoded
and preprocessed into one array, models already built (float and the same QDQ model), sessions
already created. evaluate's time includes all of that, plus calibration, metrics and CIs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

import quantdoctor
from quantdoctor.checks.evaluation import three_way_test
from quantdoctor.engine import Engine
from quantdoctor.tasks import make_task


def bare_ort(
    float_bytes: bytes, qdq_bytes: bytes, batches: list[np.ndarray], input_name: str
) -> float:
    """Bare ONNX Runtime: two sessions (all optimizations, all cores), run every batch."""
    t0 = time.perf_counter()
    for model in (float_bytes, qdq_bytes):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        for x in batches:
            session.run(None, {input_name: x})
    return time.perf_counter() - t0


def quantdoctor_evaluate(config: quantdoctor.config.DoctorConfig) -> float:
    """The evaluate step with the native and int8 contexts, from the config file onwards."""
    t0 = time.perf_counter()
    engine = Engine(config)
    three_way_test(engine, make_task(config), contexts=("native", "int8"))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    config = quantdoctor.load_config(args.config)

    # Prepare the bare side's inputs with quantdoctor itself (identical models and pixels).
    prep = Engine(config)
    images = prep.images("evaluation")
    batches = list(prep.batches(images))
    float_bytes = prep.model("native").SerializeToString()
    qdq_bytes = prep.model("int8").SerializeToString()
    input_name = prep.input.name
    del prep

    rows = []
    for _ in range(args.repeat):
        t_bare = bare_ort(float_bytes, qdq_bytes, batches, input_name)
        t_qd = quantdoctor_evaluate(config)
        rows.append((t_bare, t_qd))
    for t_bare, t_qd in rows:
        print(
            f"images {len(images)}  bare ONNX Runtime (float + int8) {t_bare:.2f} s  "
            f"quantdoctor evaluate (native + int8) {t_qd:.2f} s  ratio {t_qd / t_bare:.2f}x"
        )


if __name__ == "__main__":
    main()
