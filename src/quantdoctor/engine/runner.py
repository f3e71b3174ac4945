"""One ONNX Runtime session over one model (Polygraphy-style runner).

>>> runner = OrtRunner(model, optimization="all")          # doctest: +SKIP
>>> runner.run(batch)["logits"].shape                       # doctest: +SKIP
(16, 1000)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from .sessions import make_session


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
