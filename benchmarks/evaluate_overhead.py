"""Time quantdoctor's three-way test against bare ONNX Runtime running the same models on
the same preprocessed images, side by side in one process.

    python benchmarks/evaluate_overhead.py examples/efficientnet_lite0.yaml [--repeat 2]
    python benchmarks/evaluate_overhead.py examples/yolox_nano_coco128.yaml \
        --contexts native,quantized,int8

The bare side gets for free what quantdoctor must do itself: images already decoded and
preprocessed into batches, the models already built (float, and the same QDQ model). Its time
is session creation + inference. quantdoctor's time runs from the config file to the verdict:
model cleaning, image decoding, calibration, QDQ build, sessions, inference, decoding of the
outputs, metric, bootstrap CIs and paired tests.
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


def bare_ort(models: list[tuple[bytes, bool]], batches: list[np.ndarray], input_name: str) -> float:
    """Bare ONNX Runtime: one session per model (all optimizations, all cores; QDQ fusion off
    for the emulated context), every batch run once."""
    t0 = time.perf_counter()
    for model, emulate in models:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if emulate:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        for x in batches:
            session.run(None, {input_name: x})
    return time.perf_counter() - t0


def quantdoctor_three_way(config: quantdoctor.config.DoctorConfig, contexts: list[str]) -> float:
    """quantdoctor's three-way test over ``contexts``, from the config onwards."""
    t0 = time.perf_counter()
    engine = Engine(config)
    three_way_test(engine, make_task(config), contexts=contexts)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--contexts", default="native,int8")
    args = parser.parse_args()
    config = quantdoctor.load_config(args.config)
    contexts = args.contexts.split(",")

    # Prepare the bare side's inputs with quantdoctor itself (identical models and pixels).
    prep = Engine(config)
    images = prep.images("evaluation")
    batches = list(prep.batches(images))
    models = [(prep.model(c).SerializeToString(), c == "quantized") for c in contexts]
    input_name = prep.input.name
    del prep

    for _ in range(args.repeat):
        t_bare = bare_ort(models, batches, input_name)
        t_qd = quantdoctor_three_way(config, contexts)
        print(
            f"{len(images)} images, contexts {','.join(contexts)}: bare ONNX Runtime "
            f"{t_bare:.2f} s, quantdoctor {t_qd:.2f} s, ratio {t_qd / t_bare:.2f}x"
        )


if __name__ == "__main__":
    main()
