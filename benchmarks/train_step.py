"""Time of one training step of the trainable copy with the fused fixed-scale fake quantizer
against the unfused formula, side by side in one process (alternating, three rounds).

    python benchmarks/train_step.py examples/resnet20_cifar10.yaml --precision a8_w4

Needs ``quantdoctor[train]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import quantdoctor
import quantdoctor.train.fake_quant as fq
from quantdoctor.engine import Engine
from quantdoctor.train import to_torch


def _unfused(x: torch.Tensor, s: torch.Tensor, z: float, qmin: int, qmax: int) -> torch.Tensor:
    q = torch.clamp(fq.round_ste(x / s) + z, qmin, qmax)
    return (q - z) * s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--precision", default=None, help="e.g. a8_w4 for every layer")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    engine = Engine(quantdoctor.load_config(args.config))
    if args.precision:
        engine = engine.with_recipe(
            [{"quantization_param": {"layers": ["*"], "precision": args.precision}}])
    module = to_torch(engine, verify_split=None)
    x = torch.from_numpy(np.concatenate(list(engine.batches(engine.images("calibration")))))
    x = x[: args.batch]
    opt = torch.optim.Adam(module.weights.parameters(), lr=1e-6)

    def step_ms(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            loss = next(iter(module(x).values())).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return 1000 * (time.perf_counter() - t) / n

    fused = fq._FakeQuantFixedScale.apply
    step_ms(2)
    times: dict[str, list[float]] = {"fused": [], "unfused": []}
    for _ in range(3):
        for name, fn in (("fused", fused), ("unfused", _unfused)):
            fq._FakeQuantFixedScale.apply = fn  # type: ignore[method-assign]
            times[name].append(step_ms(args.steps))
    fq._FakeQuantFixedScale.apply = fused  # type: ignore[method-assign]
    best = {k: min(v) for k, v in times.items()}
    print(f"{config_name(args.config)}: ms per training step (batch {len(x)}), best of 3: "
          f"fused {best['fused']:.0f}, unfused {best['unfused']:.0f} "
          f"({best['unfused'] / best['fused']:.2f}x)")


def config_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


if __name__ == "__main__":
    main()
