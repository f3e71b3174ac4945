"""``to_torch`` (the trainable copy, verified against ONNX Runtime before use) and
``from_torch`` (trained weights and scales written back into quantdoctor's QDQ graph).

>>> from quantdoctor.engine.engine import Engine
>>> engine = Engine(quantdoctor.load_config("doctor.yaml"))     # doctest: +SKIP
>>> module = to_torch(engine)                                   # verified, in quant mode
>>> print(module.verification.summary())                        # doctest: +SKIP
>>> ...                                                         # train it
>>> qdq = from_torch(module, engine)                            # an onnx.ModelProto
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import QuantdoctorError
from ..quant import QuantPlan, build_qdq
from ..quant.calibration import Ranges
from ..quant.target import QuantScheme
from ..stats import snr_db
from .batchnorm import fold_batchnorm, insert_batchnorm
from .interpreter import SCALE_SUFFIX, QuantizedTorchModel

if TYPE_CHECKING:
    from ..data.imageset import ImageSet
    from ..engine.engine import Engine

#: Float mode must match fp_optimized at least this well (output SNR, dB).
MIN_FLOAT_SNR_DB = 60.0
#: How many images the search for the first diverging node captures tensors on.
DIVERGENCE_IMAGES = 4


@dataclass
class Verification:
    """How closely the torch copy reproduces ONNX Runtime, output by output.

    ``float_snr_db``: float mode vs the fp_optimized context; ``quant_snr_db`` and
    ``quant_agreement`` (argmax agreement of 2-D outputs, a fraction): quant mode vs the
    ``quantized`` context; on ``n_images`` images of ``split``."""

    split: str
    n_images: int
    float_snr_db: dict[str, float] = field(default_factory=dict)
    quant_snr_db: dict[str, float] = field(default_factory=dict)
    quant_agreement: dict[str, float] = field(default_factory=dict)
    #: ONNX Runtime's own two engines compared (int8 kernels vs the quantized emulation):
    #: the floor below which torch-vs-emulation differences are float noise (1-ulp
    #: differences of float sums flip roundings, and deep quantized nets amplify them)
    ort_int8_snr_db: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        def fmt(d: dict[str, float], unit: str) -> str:
            return ", ".join(f"{k}: {v:.1f}{unit}" for k, v in d.items()) or "-"

        agree = {k: 100 * v for k, v in self.quant_agreement.items()}
        return (
            f"torch copy vs ONNX Runtime on {self.n_images} {self.split} images: float "
            f"{fmt(self.float_snr_db, ' dB')}; quantized {fmt(self.quant_snr_db, ' dB')}"
            f"; argmax agreement {fmt(agree, '%')}; for scale, ONNX Runtime int8 vs quantized "
            f"{fmt(self.ort_int8_snr_db, ' dB')}"
        )


def _output_snr(ref: np.ndarray, got: np.ndarray) -> float:
    r = ref.astype(np.float64)
    return snr_db(float((r * r).sum()), float(((got.astype(np.float64) - r) ** 2).sum()))


def _batches(
    module: QuantizedTorchModel, engine: Engine, images: ImageSet
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    with torch.no_grad():
        for x in engine.batches(images, "fp_optimized"):
            yield x, module(torch.from_numpy(np.ascontiguousarray(x)))


def run_module(
    module: QuantizedTorchModel, engine: Engine, images: ImageSet
) -> dict[str, np.ndarray]:
    """The module's outputs over an image set, fed exactly as the engine feeds fp_optimized."""
    parts: dict[str, list[np.ndarray]] = {}
    for _, out in _batches(module, engine, images):
        for name, t in out.items():
            parts.setdefault(name, []).append(t.detach().numpy())
    return {name: np.concatenate(p) for name, p in parts.items()}


def _compare(
    ref: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> tuple[dict[str, float], dict[str, float]]:
    snrs, agreement = {}, {}
    for name, r in ref.items():
        if name not in got:
            raise QuantdoctorError(f"the torch copy has no output '{name}'")
        g = got[name]
        if g.shape != r.shape:
            raise QuantdoctorError(
                f"output '{name}': the torch copy gives shape {tuple(g.shape)}, ONNX Runtime "
                f"{tuple(r.shape)}"
            )
        snrs[name] = _output_snr(r, g)
        if r.ndim == 2 and r.shape[1] > 1:
            agreement[name] = float((r.argmax(1) == g.argmax(1)).mean())
    return snrs, agreement


def first_divergence(
    module: QuantizedTorchModel, engine: Engine, images: ImageSet
) -> tuple[str, str, str, float] | None:
    """In float mode, the first node (graph order) whose output differs from ONNX Runtime's
    fp_optimized tensor by more than :data:`MIN_FLOAT_SNR_DB`: (node, op, tensor, SNR)."""
    fp = engine.model("fp_optimized")
    names = [o for n in fp.graph.node for o in n.output if o]
    subset = images.subset(range(min(DIVERGENCE_IMAGES, len(images))))
    module.float_mode()
    captured = engine.capture("fp_optimized", names, subset)
    with torch.no_grad():
        for x, ref in zip(engine.batches(subset, "fp_optimized"), captured, strict=False):
            got = module.run({module.input_names[0]: torch.from_numpy(x)}, keep=names)
            for node in fp.graph.node:
                for out in node.output:
                    r = ref.get(out)
                    if r is None or out not in got or np.asarray(r).dtype.kind != "f":
                        continue
                    g = got[out].detach().numpy()
                    snr = _output_snr(r, g) if g.shape == r.shape else -np.inf
                    if snr < MIN_FLOAT_SNR_DB:
                        return node.name, node.op_type, out, float(snr)
    return None


def verify_float(
    module: QuantizedTorchModel, engine: Engine, split: str = "calibration"
) -> Verification:
    """Float mode against the fp_optimized context on a split; below
    :data:`MIN_FLOAT_SNR_DB` on any output: :class:`QuantdoctorError` naming the first node
    that diverges."""
    images = engine.images(split)
    report = Verification(split, len(images))
    module.float_mode()
    report.float_snr_db, _ = _compare(
        engine.outputs("fp_optimized", split), run_module(module, engine, images)
    )
    worst = min(report.float_snr_db, key=report.float_snr_db.__getitem__)
    if report.float_snr_db[worst] < MIN_FLOAT_SNR_DB:
        raise QuantdoctorError(_divergence_message(module, engine, images, worst, report))
    module.quant_mode()
    return report


def verify_quantized(
    module: QuantizedTorchModel,
    engine: Engine,
    plan: QuantPlan | None = None,
    split: str = "calibration",
    report: Verification | None = None,
    baseline: bool = True,
) -> Verification:
    """Quant mode against the ``quantized`` context (output SNR, argmax agreement); with
    ``baseline``, also ONNX Runtime's int8 context against the same (for scale)."""
    images = engine.images(split)
    report = report or Verification(split, len(images))
    module.quant_mode()
    reference = engine.outputs("quantized", split, plan=plan)
    report.quant_snr_db, report.quant_agreement = _compare(
        reference, run_module(module, engine, images)
    )
    if baseline:
        report.ort_int8_snr_db, _ = _compare(reference, engine.outputs("int8", split, plan=plan))
    return report


def verify(
    module: QuantizedTorchModel,
    engine: Engine,
    plan: QuantPlan | None = None,
    split: str = "calibration",
) -> Verification:
    """:func:`verify_float` then :func:`verify_quantized`; leaves the module in quant mode.
    Meant for a module whose weights are the fp_optimized model's (before training)."""
    return verify_quantized(module, engine, plan, split, verify_float(module, engine, split))


def _divergence_message(
    module: QuantizedTorchModel,
    engine: Engine,
    images: ImageSet,
    output: str,
    report: Verification,
) -> str:
    found = first_divergence(module, engine, images)
    where = (
        f"the first node that diverges is '{found[0]}' ({found[1]}, tensor '{found[2]}': "
        f"{found[3]:.1f} dB)"
        if found
        else "no single node diverges on the first images"
    )
    return (
        f"the torch copy does not reproduce the fp_optimized model: output '{output}' at "
        f"{report.float_snr_db[output]:.1f} dB SNR (needs >= {MIN_FLOAT_SNR_DB:.0f} dB); "
        f"{where}; it cannot be trained safely, please report the model"
    )


def _check_weight_scales(module: QuantizedTorchModel) -> None:
    """The weight scales the module computes must be the QDQ model's (exact by construction;
    a difference is a bug, not a tolerance)."""
    with torch.no_grad():
        for step in module.weight_steps():
            got = module.weight_scale(step).numpy().reshape(step.stored_scale.shape)
            if not np.array_equal(got, step.stored_scale):
                raise QuantdoctorError(
                    f"layer '{step.layer.name}': the torch copy's weight scale differs from the "
                    "QDQ model's; please report the model"
                )


def trainable_copy(
    engine: Engine,
    source: onnx.ModelProto,
    plan: QuantPlan,
    ranges: Ranges,
    *,
    qdq: onnx.ModelProto | None = None,
    learnable_scales: bool = False,
    verify_split: str | None = "calibration",
    batchnorm: Sequence[str] | None = None,
) -> QuantizedTorchModel:
    """The torch copy of ``source`` quantized with ``plan`` and ``ranges`` (the QDQ model
    ``qdq`` when given, else built here), checked in float against fp_optimized on
    ``verify_split`` (None: not checked) and returned in quant mode; ``verification`` holds
    the float half of the check. What the gradient remedies train (the QDQ model is built
    from their own state, not through ``engine.model``). ``batchnorm``: as in
    :func:`to_torch`."""
    if qdq is None:
        qdq = build_qdq(source, plan, ranges, engine.layers)
    module = QuantizedTorchModel(qdq, source, plan, ranges, engine.layers, learnable_scales)
    _check_weight_scales(module)
    report = None
    if verify_split is not None:
        if source is not engine.float_model:
            module.load_weights(engine.float_model)  # the conversion is checked in float
        report = verify_float(module, engine, verify_split)
        if source is not engine.float_model:
            module.load_weights(source)
    module.verification = report  # type: ignore[assignment]
    if batchnorm:
        insert_batchnorm(module, engine, batchnorm)
    return module.quant_mode()


def to_torch(
    engine: Engine,
    plan: QuantPlan | None = None,
    *,
    learnable_scales: bool = False,
    verify_split: str | None = "calibration",
    batchnorm: Sequence[str] | None = None,
) -> QuantizedTorchModel:
    """The trainable torch copy of the engine's quantized model (plan: the recipe's).

    Built from the QDQ model of the ``quantized`` context, its float weights from the float
    model that QDQ model is built from (bias-corrected where the recipe corrects biases).
    Verified on ``verify_split`` (None: not verified) before it is returned: float mode
    against fp_optimized (>= 60 dB output SNR, else :class:`QuantdoctorError` naming the
    first diverging node), quant mode against the ``quantized`` context (reported in
    ``module.verification``). Returned in quant mode.

    ``batchnorm``: convolutions (layer names or fnmatch patterns; e.g.
    :func:`~quantdoctor.train.batchnorm.bn_missing_layers`) to retrain with a BatchNorm after
    them, inserted after the verification, function-preserving, and folded back into them by
    :func:`from_torch` (:mod:`quantdoctor.train.batchnorm`); the module is then returned in
    eval mode (``module.train()`` normalises with batch statistics).

    >>> module = to_torch(engine)                     # doctest: +SKIP
    >>> module.verification.quant_snr_db              # doctest: +SKIP
    {'logits': 71.3}
    """
    plan = plan or engine.plan()
    source, _ = engine.quantization_source(plan)  # bias-corrected where the recipe says
    module = trainable_copy(
        engine,
        source,
        plan,
        engine.ranges(),
        qdq=engine.model("quantized", plan),
        learnable_scales=learnable_scales,
        verify_split=verify_split,
    )
    if verify_split is not None:
        module.verification = verify_quantized(  # type: ignore[assignment]
            module, engine, plan, verify_split, module.verification
        )
    if batchnorm:
        insert_batchnorm(module, engine, batchnorm)
    return module.quant_mode()


def save_trained_weights(module: QuantizedTorchModel, path: str | Path) -> Path:
    """Write the float model with the module's trained weights to ``path`` (ONNX), for the
    recipe line ``trained_weights: {model: <path>}``: quantdoctor then evaluates, analyzes
    and diagnoses the trained weights quantized with the recipe (exactly the module's
    quantization when its scales were not learned), against the original float model.

    >>> save_trained_weights(module, "resnet20.qat.onnx")    # doctest: +SKIP
    """
    path = Path(path)
    onnx.save(float_model_of(module), str(path))
    return path


# --- back to ONNX ------------------------------------------------------------------------
def _range_of(scale: float, zero_point: float, scheme: QuantScheme) -> tuple[float, float]:
    """A range whose :func:`~quantdoctor.quant.encodings.activation_params` are
    (``scale``, ``zero_point``): the inverse of the QDQ builder's rule."""
    if not scheme.symmetric:
        return (scheme.qmin - zero_point) * scale, (scheme.qmax - zero_point) * scale
    amax = scale * (scheme.qmax if scheme.signed else (scheme.qmax - scheme.qmin) / 2)
    return -amax, amax


def learned_ranges(module: QuantizedTorchModel) -> Ranges:
    """The module's ranges, with the learned activation scales where scales are learnable."""
    ranges = dict(module.ranges)
    if not module.learnable_scales:
        return ranges
    producer = {layer.output: layer for layer in module.layers}
    for step in module.activation_steps():
        tensor = next(n for n, k in module.scale_keys.items() if k == step.scale)
        tensor = tensor[: -len(SCALE_SUFFIX)]
        if tensor not in ranges:
            continue  # a tensor that shares another one's range (a Relu before its Min)
        scheme = module.plan.activation_scheme(producer.get(tensor), tensor)
        if scheme is None:
            continue
        scale = float(module.scales[step.scale].detach().clamp_min(1e-12).reshape(-1)[0])
        ranges[tensor] = _range_of(scale, float(np.asarray(step.zero_point).reshape(-1)[0]), scheme)
    return ranges


def learned_plan(module: QuantizedTorchModel) -> QuantPlan:
    """The module's plan, with learned weight scales as clipped weight ranges."""
    if not module.learnable_scales:
        return module.plan
    clips = {}
    for step in module.weight_steps():
        p = module.weight_scales[step.extra["scale_key"]].detach().double().reshape(-1)
        clips[step.layer.name] = tuple(float(v) * step.scheme.qmax for v in p)
    return module.plan.clip_weights(clips)


def float_model_of(module: QuantizedTorchModel) -> onnx.ModelProto:
    """The float model with the module's (trained) weights and biases (BatchNorms folded)."""
    model = onnx.ModelProto()
    model.CopyFrom(module.source_model)
    params = module.onnx_parameters()
    for init in model.graph.initializer:
        if init.name in params:
            array = params[init.name].detach().cpu().numpy().astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    fold_batchnorm(module, model)  # inserted BatchNorms, folded into their convolutions
    return model


def from_torch(module: QuantizedTorchModel, engine: Engine | None = None) -> onnx.ModelProto:
    """quantdoctor's QDQ model rebuilt with the module's trained weights (and learned
    scales): the same graph structure as ``engine.model("quantized")``, built by
    :func:`quantdoctor.quant.build_qdq` (no torch export). ``engine``: optional; its layers
    are used when given (they are the module's otherwise).

    >>> qdq = from_torch(module, engine)              # doctest: +SKIP
    >>> onnx.save(qdq, "trained.qdq.onnx")            # doctest: +SKIP
    """
    layers = engine.layers if engine is not None else module.layers
    return build_qdq(float_model_of(module), learned_plan(module), learned_ranges(module), layers)
