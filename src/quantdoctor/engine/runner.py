"""One ONNX Runtime session over one model (Polygraphy-style runner).

>>> runner = OrtRunner(model, optimization="all")          # doctest: +SKIP
>>> runner.run(batch)["logits"].shape                       # doctest: +SKIP
(16, 1000)
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import onnx

from .sessions import cpu_threads, make_session

T = TypeVar("T")

#: Small batches (model input of at most :data:`SMALL_BATCH_BYTES`) run this many at once,
#: each on ``cpu_threads() // BATCHES_AT_ONCE`` threads: ONNX Runtime's threads speed up one
#: small batch only a little (YOLOX-Nano, batch 1, 2 cores: 48 images in emulation 2.70 s on
#: two threads, 1.49 s as two one-thread runs; int8 0.99 → 0.65 s; the per-layer sweep 1.5x
#: faster), and each image's numbers are the same (checked bit for bit). Larger batches run
#: one at a time: EfficientNet-Lite0's batch of 16 (9.6 MB) gained 4-12% for 400 MB more.
BATCHES_AT_ONCE = 2
SMALL_BATCH_BYTES = 4 << 20


def batches_at_once(batch_bytes: int | None = None) -> int:
    """How many batches of ``batch_bytes`` (model input) run at once: :data:`BATCHES_AT_ONCE`
    for small ones, else 1; ``$QUANTDOCTOR_BATCHES_AT_ONCE`` decides for every size (1: one
    batch at a time on every core). At most one per core."""
    small = batch_bytes is not None and batch_bytes <= SMALL_BATCH_BYTES
    wanted = BATCHES_AT_ONCE if small else 1
    with contextlib.suppress(ValueError):
        wanted = int(os.environ.get("QUANTDOCTOR_BATCHES_AT_ONCE", wanted))
    return max(1, min(wanted, cpu_threads()))


def session_threads(at_once: int) -> int:
    """The threads of each session when ``at_once`` batches share the cores."""
    return max(1, cpu_threads() // max(1, at_once))


def run_in_order(
    run: Callable[[np.ndarray], T], batches: Iterable[np.ndarray], at_once: int | None = None
) -> Iterator[tuple[T, int]]:
    """``(run(x), len(x))`` for each batch, in order, with at most ``at_once`` batches
    running (threads; ONNX Runtime releases the GIL) while the next one is prepared here."""
    at_once = 1 if at_once is None else at_once
    if at_once <= 1:
        for x in batches:
            yield run(x), len(x)
        return
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        pending: deque[tuple[Future[T], int]] = deque()
        try:
            for x in batches:
                pending.append((pool.submit(run, x), len(x)))
                del x
                if len(pending) >= at_once:
                    future, n = pending.popleft()
                    yield future.result(), n
            while pending:
                future, n = pending.popleft()
                yield future.result(), n
        finally:
            for future, _ in pending:
                future.cancel()


class OrtRunner:
    """Runs a model on the CPU with all cores.

    ``optimization="emulate"`` keeps QDQ nodes as they are (float emulation of quantization)
    while still using ONNX Runtime's fast float kernels; ``"all"`` lets ONNX Runtime fuse QDQ
    into integer kernels. Sessions come from :func:`~.sessions.make_session`."""

    def __init__(
        self,
        model: onnx.ModelProto,
        optimization: str = "all",
        extra_outputs: Sequence[str] = (),
        threads: int | None = None,
        reduced_outputs: Sequence[str] = (),
    ) -> None:
        if extra_outputs or reduced_outputs:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            known = {o.name for o in copy.graph.output}
            copy.graph.output.extend(
                onnx.helper.make_empty_tensor_value_info(n) for n in extra_outputs if n not in known
            )
            # min/max computed inside the graph: a scalar leaves the session, not the tensor
            # (3x faster calibration on EfficientNet-Lite0 than copying every activation out).
            for name in reduced_outputs:
                for op in ("ReduceMin", "ReduceMax"):
                    out = f"{name}__{op[6:].lower()}"
                    copy.graph.node.append(
                        onnx.helper.make_node(op, [name], [out], keepdims=0, name=out)
                    )
                    copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
            model = copy
        self.session = make_session(
            model,
            emulate=optimization == "emulate",
            # no arena where tensors leave the session, nor for in-graph min/max: ONNX
            # Runtime's arena then grows to every activation of the batch at once and keeps
            # it for the session's life (measured on Lite0, batch 16: 1.29 GB against 0.41)
            arena=not (extra_outputs or reduced_outputs),
            threads=threads,
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        batch = inp.shape[0] if inp.shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Outputs for one batch. A model with a fixed batch size gets it (padded, then cut)."""
        names = list(outputs) if outputs is not None else self.output_names
        fixed = self.fixed_batch
        if fixed is None or fixed == len(x):
            return dict(zip(names, self.session.run(names, {self.input_name: x}), strict=False))
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(x), fixed):
            chunk = x[start : start + fixed]
            n = len(chunk)
            if n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
            outs = self.session.run(names, {self.input_name: chunk})
            parts.append([o[:n] if o.ndim else o[None] for o in outs])
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}
