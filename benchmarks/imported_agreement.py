"""A QDQ model made elsewhere (``quantized_model:``) against quantdoctor's reading of it, side
by side on the same images: ONNX Runtime runs the file itself (its default session: fused
integer kernels, and with graph optimizations off: float emulation), and the engine's
`int8` and `quantized` contexts rebuild it from the imported plan. The table gives each
one's metric, top-1 (or detection) agreement and output SNR against the file.

    python benchmarks/imported_agreement.py lite0_ort.yaml [--limit 500]

where ``lite0_ort.yaml`` is a config with ``quantized_model: lite0.ort.qdq.onnx`` (see
``examples/quantize_with_ort.py``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

import quantdoctor
from quantdoctor.engine import Engine
from quantdoctor.stats import snr_db_between
from quantdoctor.tasks import make_task


def _session(path: Path, optimized: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimized:  # Q/DQ stay nodes: float arithmetic on the grid values
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--limit", type=int, default=None, help="evaluation images")
    args = parser.parse_args()
    config = quantdoctor.load_config(args.config)
    if config.quantized_model is None:
        parser.error(f"{args.config} has no quantized_model")
    if args.limit:
        raw = config.model_dump(mode="json", exclude={"source"})
        raw["data"]["evaluation"]["limit"] = args.limit
        path = Path(tempfile.mkdtemp()) / "doctor.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        config = quantdoctor.load_config(path)
    t0 = time.perf_counter()
    engine = Engine(config)
    print(f"imported {config.quantized_model.name} in {time.perf_counter() - t0:.1f} s: "
          f"{engine.recipe_log[0].summary['conventions']}")
    task = make_task(config)
    images = engine.images("evaluation")
    batches = list(engine.batches(images, "int8"))
    rows: list[tuple[str, dict[str, np.ndarray]]] = []
    for label, optimized in (("the file, ORT integer kernels", True),
                             ("the file, ORT float emulation", False)):
        session = _session(config.quantized_model, optimized)
        names = [o.name for o in session.get_outputs()]
        parts = [dict(zip(names, session.run(names, {engine.input.name: x}), strict=True))
                 for x in batches]
        rows.append((label, {n: np.concatenate([p[n] for p in parts]) for n in names}))
    rows += [("int8 context (imported plan)", engine.outputs("int8")),
             ("quantized context (imported plan)", engine.outputs("quantized"))]
    refs = [(rows[0][1], task.score(rows[0][1], images)),
            (rows[1][1], task.score(rows[1][1], images))]
    print(f"{len(images)} images; agreement (%) and output SNR (dB) against the file run by "
          "ONNX Runtime with integer kernels | with float emulation")
    print(f"{'run':36s} {config.metric:>8s} {'agree':>7s} {'SNR':>6s} | {'agree':>7s} {'SNR':>6s}")
    for label, outs in rows:
        scores = task.score(outs, images)
        cells = []
        for ref, ref_scores in refs:
            _, agree, _ = ref_scores.agreement(scores)
            snr = min(snr_db_between(ref[n], outs[n]) for n in ref)
            cells.append(f"{agree:7.2f} {snr:6.1f}")
        print(f"{label:36s} {scores.value:8.2f} {' | '.join(cells)}")


if __name__ == "__main__":
    main()
