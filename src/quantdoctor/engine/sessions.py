"""The one ONNX Runtime session factory of the engine: every session (whole models, captures,
chunks of the per-layer sweep, the bias-correction walk) is built here, with the same
options, so that the same model gives the same numbers whichever path runs it.

>>> session = make_session(model, emulate=True)            # doctest: +SKIP
"""

from __future__ import annotations

import os

import onnx
import onnxruntime as ort

from ..errors import ModelError

ort.set_default_logger_severity(3)  # ORT's initializer-cleanup warnings are noise here

#: ONNX Runtime optimizers that are never applied. WeightBiasQuantization would quietly
#: quantize float weights that sit between quantized activations (a layer left in float):
#: measured 8.1 dB instead of 25 dB on Lite0 with activations-only quantization.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]
#: ONNX Runtime's session option (onnxruntime_session_options_config_keys.h) for the
#: compute precision of MatMulNBits built from QDQ: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8.
QDQ_MATMULNBITS_ACCURACY_LEVEL = "session.qdq_matmulnbits_accuracy_level"


_SHARED_ARENA: list[bool] = []


def _use_shared_arena(opts: ort.SessionOptions) -> None:
    """Sessions with an arena share one, registered once per process, that grows by what is
    asked (not by doubling): each session's own arena would keep its peak for the session's
    life, and a per-layer sweep keeps a dozen chunk sessions (Lite0: 3.6 GB peak with their
    own arenas, 2.8 GB with one shared; the same outputs)."""
    if not _SHARED_ARENA:
        try:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _SHARED_ARENA.append(True)
        except Exception:  # an ONNX Runtime without it: every session keeps its own arena
            _SHARED_ARENA.append(False)
    if _SHARED_ARENA[0]:
        opts.add_session_config_entry("session.use_env_allocators", "1")


def cpu_threads() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_session(
    model: onnx.ModelProto,
    *,
    emulate: bool = False,
    arena: bool = True,
    spinning: bool = True,
    threads: int | None = None,
    what: str = "the model",
) -> ort.InferenceSession:
    """A CPU session over ``model`` with all cores.

    ``emulate`` keeps QDQ nodes as they are (float emulation of quantization) while still
    using every other optimization (about 1.7x faster than ORT_ENABLE_BASIC on
    EfficientNet-Lite0; same math up to float summation order); without it ONNX Runtime
    fuses QDQ into integer kernels. ``arena=False`` for sessions whose large outputs leave
    the session (captures): an arena sized for them would stay reserved for the session's
    life. ``spinning=False`` for many small sessions taking turns (idle threads must not
    spin)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if emulate:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    # The fused path turns DequantizeLinear(weight) + MatMul/Gemm with a float input into
    # MatMulNBits, whose default accuracy level (4) quantizes that input to int8 on the fly:
    # noise no plan asked for (weights-only plans, 16-bit activations; measured 300 steps of
    # a 16-bit output, tests/test_numerics.py). Level 1 keeps the input float32.
    opts.add_session_config_entry(QDQ_MATMULNBITS_ACCURACY_LEVEL, "1")
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = arena
    if arena:
        _use_shared_arena(opts)
    try:
        return ort.InferenceSession(
            model.SerializeToString(),
            opts,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=DISABLED_OPTIMIZERS,
        )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"ONNX Runtime cannot load {what}: {first}") from None
