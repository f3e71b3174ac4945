"""Time the calibration observers of quantdoctor.quant.calibration on activation-like tensors.

    python benchmarks/calibration_methods.py
    python benchmarks/calibration_methods.py --batches 64 --onnxruntime

Random tensors of realistic sizes (one image per batch): a ReLU6 output of an early layer
(32x112x112), a long-tailed ReLU output (96x56x56: a Student-t tail with rare large values),
a signed residual sum (64x56x56) and a late-layer ReLU (1280x7x7). A few distinct batches per
tensor are generated once and cycled, scaled a little per batch, so that the source costs
almost nothing; its own time (one pass that only reads the batches) is printed apart and is
included in every method's time.

Printed: seconds per method (minmax, percentile, mse, entropy) per tensor and for all tensors
in one calibrate() call, the passes each made over the source, and the ranges found. With
--onnxruntime, the time of ONNX Runtime's entropy threshold (HistogramCollector with 2048
bins, the algorithm quantdoctor does not reuse) on the same tensors, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections.abc import Iterator

import numpy as np

from quantdoctor.quant.calibration import calibrate
from quantdoctor.quant.target import QuantScheme

METHODS = ("minmax", "percentile", "mse", "entropy")
DISTINCT = 8  # distinct random batches per tensor, cycled


def make_tensors(seed: int) -> dict[str, list[np.ndarray]]:
    """A few distinct batches of each activation-like tensor."""
    rng = np.random.default_rng(seed)

    def batch(kind: str) -> np.ndarray:
        if kind == "relu6_32x112x112":
            return np.clip(rng.normal(1.0, 2.0, (1, 32, 112, 112)), 0, 6)
        if kind == "longtail_96x56x56":
            return np.maximum(rng.standard_t(3, (1, 96, 56, 56)), 0) * 0.5
        if kind == "signed_64x56x56":
            return rng.laplace(0.0, 1.0, (1, 64, 56, 56))
        return np.maximum(rng.normal(0.0, 1.0, (1, 1280, 7, 7)), 0)

    kinds = ("relu6_32x112x112", "longtail_96x56x56", "signed_64x56x56", "relu_1280x7x7")
    return {k: [batch(k).astype(np.float32) for _ in range(DISTINCT)] for k in kinds}


class Source:
    """``batches`` batches of every tensor per call, counting the calls (passes)."""

    def __init__(self, tensors: dict[str, list[np.ndarray]], batches: int) -> None:
        self.tensors, self.batches, self.passes = tensors, batches, 0

    def __call__(self) -> Iterator[dict[str, np.ndarray]]:
        self.passes += 1
        for i in range(self.batches):
            scale = np.float32(1.0 + 0.002 * i)
            yield {k: v[i % len(v)] * scale for k, v in self.tensors.items()}


def timed(source: Source, names: list[str], method: str, scheme: QuantScheme) -> tuple:
    source.passes = 0
    start = time.perf_counter()
    ranges = calibrate(source, names, method, 99.99, scheme=scheme)
    return time.perf_counter() - start, source.passes, ranges


def onnxruntime_entropy(source: Source, name: str) -> float:
    """Seconds of ONNX Runtime's entropy calibration of one tensor (collect + threshold)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
        collector = HistogramCollector("entropy", False, 2048, 128, 99.99, None)
        for batch in source():
            collector.collect({name: batch[name]})
        collector.compute_collection_result()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=64, help="batches (images) per pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bits", type=int, default=8, help="activation bits (uint8 asym.)")
    parser.add_argument(
        "--onnxruntime", action="store_true", help="also time ONNX Runtime's entropy method"
    )
    args = parser.parse_args()
    scheme = QuantScheme(bits=args.bits)
    tensors = make_tensors(args.seed)
    source = Source(tensors, args.batches)
    names = list(tensors)

    start = time.perf_counter()
    for _ in source():
        pass
    print(f"source alone (one pass of {args.batches} batches): {time.perf_counter() - start:.3f} s")
    sizes = {k: v[0].size * args.batches for k, v in tensors.items()}
    warm = Source({k: [v[0][:, :1]] for k, v in tensors.items()}, 2)
    for method in METHODS:  # first calls (imports, allocations) are not timed
        timed(warm, names, method, scheme)

    header = f"{'tensor':20s} {'values':>10s} " + " ".join(f"{m:>11s}" for m in METHODS)
    print("\nseconds per method (passes over the source in brackets)")
    print(header)
    found: dict[str, dict[str, tuple[float, float]]] = {}
    for name in names:
        cells = []
        for method in METHODS:
            seconds, passes, ranges = timed(source, [name], method, scheme)
            found.setdefault(name, {})[method] = ranges[name]
            cells.append(f"{seconds:7.3f} [{passes}]")
        print(f"{name:20s} {sizes[name]:>10d} " + " ".join(f"{c:>11s}" for c in cells))
    cells = []
    for method in METHODS:
        seconds, passes, _ = timed(source, names, method, scheme)
        cells.append(f"{seconds:7.3f} [{passes}]")
    total = sum(sizes.values())
    print(f"{'all, one call':20s} {total:>10d} " + " ".join(f"{c:>11s}" for c in cells))

    print("\nranges")
    for name in names:
        row = "  ".join(f"{m} ({lo:.3g}, {hi:.3g})" for m, (lo, hi) in found[name].items())
        print(f"{name:20s} {row}")

    if args.onnxruntime:
        print("\nONNX Runtime entropy (HistogramCollector, 2048 bins), seconds")
        for name in names:
            print(f"{name:20s} {onnxruntime_entropy(source, name):7.3f}")


if __name__ == "__main__":
    main()
