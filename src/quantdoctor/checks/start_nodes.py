"""Suspect 1, the start-node cut: the cut model plus the host preprocessing must reproduce
the full graph (DESIGN §4 step 1, ``pipeline.start_nodes_mismatch``).

With ``start_nodes`` the accelerator's graph begins at the start node, and the host must do
what the cut-off part of the graph did (typically ``(x - mean) / std``). Two measurements:
the tensor the cut model's first node receives (host preprocessing, then the recipe's input
transforms) against the same tensor in the full graph fed by ``native_preprocess``, per
channel and per image; and the outputs and the task metric of the two. The per-channel
statistics and an affine fit between the two tensors name the likely cause (normalization
missing, applied twice, other constants, channel order) and the host's corrected mean/std.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import Engine
from ..graph.transforms import host_input_transform
from ..report import Finding
from ..stats import snr_db
from ..tasks import TaskScores

#: Below this SNR (dB) the host's tensor differs from the full graph's by more than float
#: round-off (the same bound as native vs fp_optimized; host and graph doing the same
#: float32 arithmetic in another order agree to well over 100 dB).
FLOAT_NOISE_DB = 40.0
#: An affine fit per channel at least this good (dB): the two differ only by normalization
#: constants (a scale and an offset per channel), so the corrected constants can be given.
AFFINE_FIT_DB = 30.0
#: Agreement below this (percent) between the full graph and the cut model is an error.
MIN_AGREEMENT = 95.0


@dataclass(frozen=True)
class ChannelStats:
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class InputAgreement:
    """The start tensor in the full graph (``full``) against what the cut model's first node
    receives (``host``), over the same images."""

    tensor: str
    images: int
    full: ChannelStats
    host: ChannelStats
    snr_db: float
    #: the same with the host's channels reversed (RGB fed as BGR)
    swapped_snr_db: float
    per_image_snr_db: np.ndarray
    #: full ≈ fit_scale * host + fit_offset per channel, and how well that fits (dB)
    fit_scale: list[float]
    fit_offset: list[float]
    fit_snr_db: float


@dataclass(frozen=True)
class OutputComparison:
    """The full graph's outputs and metric (native) against the cut model's (fp_optimized),
    as the pipeline check computed them; ``comparable``: the metric means the same for both
    (false when end_nodes cut the outputs and no native_postprocess decodes the full graph)."""

    native_outputs: dict[str, np.ndarray]
    fp_outputs: dict[str, np.ndarray]
    snr_db: dict[str, float]
    native: TaskScores
    fp: TaskScores
    comparison: dict[str, Any]
    comparable: bool = True


@dataclass(frozen=True)
class Verdict:
    severity: str
    #: none | native_preprocess | channel_order | normalization_missing |
    #: normalization_doubled | other_constants | not_affine
    cause: str
    #: the host's mean/std that reproduce the cut-off part (when the difference is affine)
    suggested: dict[str, list[float] | None] | None


# --- measure ---------------------------------------------------------------------------------


def _full_batches(engine: Engine, images: Any) -> Iterator[np.ndarray]:
    """The start tensor as the full graph computes it (native context)."""
    cut = engine.start_cut
    assert cut is not None
    if cut.tensor == engine.native_input.name:  # nothing cut off: the tensor is what is fed
        yield from engine.batches(images, "native")
        return
    for batch in engine.capture("native", [cut.tensor], images):
        yield batch[cut.tensor]


def _host_batches(engine: Engine, images: Any) -> Iterator[np.ndarray]:
    """What the cut model's first node receives: the host preprocessing, then the recipe's
    input transforms that the cut model folds in (applied here in float, as native would)."""
    layout = engine.config.preprocess.layout
    for x in engine.batches(images, "fp_optimized"):
        yield host_input_transform(x, engine.transforms, layout) if engine.transforms else x


def measure_input(engine: Engine, split: str) -> InputAgreement:
    """Per-channel sums over every image, batch by batch (the tensors are not kept)."""
    cut = engine.start_cut
    assert cut is not None
    images = engine.images(split)
    axis = 1 if engine.config.preprocess.layout == "nchw" else 3
    sums: dict[str, np.ndarray] = {}
    per_image: list[np.ndarray] = []
    swapped_noise = 0.0
    for full, host in zip(_full_batches(engine, images), _host_batches(engine, images),
                          strict=True):
        f = np.moveaxis(full.astype(np.float64), axis, 1)
        h = np.moveaxis(host.astype(np.float64), axis, 1)
        per_image.append(snr_db(
            (f**2).reshape(len(f), -1).sum(1), ((f - h) ** 2).reshape(len(f), -1).sum(1)
        ))
        swapped_noise += float(((f - h[:, ::-1]) ** 2).sum())
        fc = np.moveaxis(f, 1, 0).reshape(f.shape[1], -1)
        hc = np.moveaxis(h, 1, 0).reshape(h.shape[1], -1)
        for key, value in (("n", np.full(len(fc), fc.shape[1], np.float64)),
                           ("f", fc.sum(1)), ("h", hc.sum(1)), ("ff", (fc**2).sum(1)),
                           ("hh", (hc**2).sum(1)), ("fh", (fc * hc).sum(1)),
                           ("dd", ((fc - hc) ** 2).sum(1))):
            sums[key] = sums[key] + value if key in sums else value
    n = sums["n"]
    mean_f, mean_h = sums["f"] / n, sums["h"] / n
    var_f = np.maximum(sums["ff"] / n - mean_f**2, 0.0)
    var_h = np.maximum(sums["hh"] / n - mean_h**2, 0.0)
    cov = sums["fh"] / n - mean_f * mean_h
    scale = np.divide(cov, var_h, out=np.zeros_like(cov), where=var_h > 0)
    offset = mean_f - scale * mean_h
    residual = np.maximum(var_f - scale * cov, 0.0)
    return InputAgreement(
        tensor=cut.tensor,
        images=len(images),
        full=ChannelStats(mean_f.tolist(), np.sqrt(var_f).tolist()),
        host=ChannelStats(mean_h.tolist(), np.sqrt(var_h).tolist()),
        snr_db=float(snr_db(float(sums["ff"].sum()), float(sums["dd"].sum()))),
        swapped_snr_db=float(snr_db(float(sums["ff"].sum()), swapped_noise)),
        per_image_snr_db=np.concatenate(per_image),
        fit_scale=scale.tolist(),
        fit_offset=offset.tolist(),
        fit_snr_db=float(snr_db(float(var_f.sum()), float(residual.sum()))),
    )


def per_image_output_snr(outputs: OutputComparison) -> dict[str, dict[str, float]]:
    """Median and worst per-image SNR of each output both models have (same shape)."""
    out: dict[str, dict[str, float]] = {}
    for name, ref in outputs.native_outputs.items():
        got = outputs.fp_outputs.get(name)
        if got is None or got.shape != ref.shape or not len(ref):
            continue
        r = ref.reshape(len(ref), -1).astype(np.float64)
        d = got.reshape(len(got), -1).astype(np.float64) - r
        per = snr_db((r**2).sum(1), (d**2).sum(1))
        out[name] = {"median": float(np.median(per)), "min": float(per.min())}
    return out


# --- judge -----------------------------------------------------------------------------------


def _host_constants(engine: Engine) -> tuple[np.ndarray, np.ndarray]:
    pre = engine.config.preprocess
    mean = np.asarray(pre.mean if pre.mean is not None else [0.0] * 3, np.float64)
    std = np.asarray(pre.std if pre.std is not None else [1.0] * 3, np.float64)
    return mean, std


def suggest_host_normalization(
    engine: Engine, measured: InputAgreement
) -> dict[str, list[float] | None] | None:
    """The host's mean/std that make its tensor the full graph's: the host gives
    ``h = (x·scale - m) / s`` and the graph wants ``f = a·h + b``, so ``f = (x·scale - m') / s'``
    with ``m' = m - b·s/a`` and ``s' = s/a``. None where the recipe's input transforms sit in
    between (their constants would change instead) or a channel's fit is degenerate."""
    a = np.asarray(measured.fit_scale, np.float64)
    b = np.asarray(measured.fit_offset, np.float64)
    if engine.transforms or len(a) != 3 or np.any(a <= 0) or not np.all(np.isfinite(a)):
        return None
    m, s = _host_constants(engine)
    new_mean, new_std = m - b * s / a, s / a
    unit = 255.0 * engine.config.preprocess.scale  # what a white pixel is on the host
    if np.all(np.abs(new_mean) < 1e-3 * unit) and np.all(np.abs(new_std - 1) < 1e-3):
        return {"mean": None, "std": None}  # the host should not normalize at all
    return {"mean": [float(f"{v:.4g}") for v in new_mean],
            "std": [float(f"{v:.4g}") for v in new_std]}


def _looks_normalized(stats: ChannelStats) -> bool:
    # pipeline imports this module: its thresholds (DESIGN §4) are read when judging
    from .pipeline import MEAN_RANGE, STD_RANGE

    mean = float(np.median(np.abs(stats.mean)))
    std = float(np.median(stats.std))
    return mean <= MEAN_RANGE[1] and STD_RANGE[0] <= std <= STD_RANGE[1]


def _host_normalizations(engine: Engine) -> int:
    """How often the host side normalizes: preprocess mean/std, the recipe's normalization."""
    pre = engine.config.preprocess
    host = int(pre.mean is not None or pre.std is not None)
    return host + sum(not isinstance(t, str) for t in engine.transforms)


def likely_cause(
    engine: Engine,
    measured: InputAgreement,
    outputs: OutputComparison,
    suggested: dict[str, list[float] | None] | None,
) -> str:
    """What the numbers point to, most specific first."""
    if measured.snr_db >= FLOAT_NOISE_DB:
        return "none"
    cmp = outputs.comparison
    better = outputs.comparable and cmp["p_value"] < 0.05 and cmp["ci95"][0] > 0
    if better or (_looks_normalized(measured.host) and not _looks_normalized(measured.full)):
        return "native_preprocess"  # the cut model is the sane one: the reference is off
    if measured.swapped_snr_db >= FLOAT_NOISE_DB and measured.swapped_snr_db > measured.snr_db:
        return "channel_order"
    if measured.fit_snr_db < AFFINE_FIT_DB:
        return "not_affine"
    normalizations = _host_normalizations(engine)
    if normalizations == 0:
        return "normalization_missing"
    if normalizations > 1 or (suggested is not None and suggested["mean"] is None):
        return "normalization_doubled"  # the graph after the start node takes it unnormalized
    return "other_constants"


def judge(engine: Engine, measured: InputAgreement, outputs: OutputComparison) -> Verdict:
    suggested = suggest_host_normalization(engine, measured)
    cause = likely_cause(engine, measured, outputs, suggested)
    if cause == "none":
        return Verdict("ok", cause, None)
    cmp = outputs.comparison
    significant = cmp["p_value"] < 0.05 and (cmp["ci95"][0] > 0 or cmp["ci95"][1] < 0)
    beyond = abs(cmp["difference"]) > engine.config.max_drop
    # beyond float noise always; an error when the metric shows it (as the other checks)
    error = outputs.comparable and (
        (significant and beyond) or cmp["agreement"] < MIN_AGREEMENT
    )
    affine = cause in ("normalization_missing", "normalization_doubled", "other_constants")
    return Verdict("error" if error else "warning", cause, suggested if affine else None)


# --- words -----------------------------------------------------------------------------------


def _values(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def evidence(
    engine: Engine, measured: InputAgreement, outputs: OutputComparison, verdict: Verdict
) -> dict[str, Any]:
    cut = engine.start_cut
    assert cut is not None
    cmp = outputs.comparison
    per = measured.per_image_snr_db
    keys = ("color", "scale", "mean", "std", "layout")
    return {
        "start_nodes": list(cut.names),
        "input_tensor": cut.tensor,
        "cut_off_nodes": list(cut.removed),
        "cut_off_ops": list(cut.removed_ops),
        "likely_cause": verdict.cause,
        "input_snr_db": measured.snr_db,
        "input_snr_db_per_image": {"median": float(np.median(per)), "min": float(per.min())},
        "images_beyond_noise": int((per < FLOAT_NOISE_DB).sum()),
        "input_snr_db_channels_swapped": measured.swapped_snr_db,
        "full_channel_mean": measured.full.mean,
        "full_channel_std": measured.full.std,
        "host_channel_mean": measured.host.mean,
        "host_channel_std": measured.host.std,
        "affine_fit": {"scale": measured.fit_scale, "offset": measured.fit_offset,
                       "snr_db": measured.fit_snr_db},
        "suggested_preprocess": verdict.suggested,
        "host_preprocess": engine.config.preprocess.model_dump(mode="json", include=set(keys)),
        "native_preprocess": engine.native_preprocessor.config.model_dump(
            mode="json", include=set(keys)
        ),
        "transforms": [str(t) for t in engine.transforms],
        "output_snr_db": outputs.snr_db,
        "output_snr_db_per_image": per_image_output_snr(outputs),
        "native": outputs.native.value,
        "fp_optimized": outputs.fp.value,
        "difference": cmp["difference"],
        "ci95": cmp["ci95"],
        "p_value": cmp["p_value"],
        "test": cmp["test"],
        cmp["agreement_name"]: cmp["agreement"],
        "metric_comparable": outputs.comparable,
        "max_drop": engine.config.max_drop,
        "n": measured.images,
        "end_nodes": list(engine.config.end_nodes),
    }


_CAUSES = {
    "native_preprocess": "native_preprocess probably does not feed the full graph what it "
    "takes: the cut model's side is the plausible one (a normalized input, or a better metric)",
    "channel_order": "the channels arrive in reversed order",
    "normalization_missing": "the host does not normalize as the cut-off part did",
    "normalization_doubled": "the input is normalized once more than in the full graph",
    "other_constants": "the host normalizes with other constants than the cut-off part",
    "not_affine": "the host's tensor is not a per-channel rescaling of the full graph's",
}


def _recommendation(
    engine: Engine, measured: InputAgreement, verdict: Verdict, ops: str
) -> tuple[str, list[str]]:
    suggested = verdict.suggested
    line = (
        None
        if suggested is None
        else "preprocess: {mean: null, std: null}"
        if suggested["mean"] is None
        else f"preprocess: {{mean: {suggested['mean']}, std: {suggested['std']}}}"
    )
    if verdict.cause == "native_preprocess":
        return (
            "Set native_preprocess to what the full graph takes (its scale, color and layout; "
            "mean/std only where the graph does not normalize itself), so that the comparison "
            "has the right reference.",
            [],
        )
    if verdict.cause == "channel_order":
        other = "bgr" if engine.config.preprocess.color == "rgb" else "rgb"
        return (f"Feed the cut model {other.upper()} (preprocess.color: {other}).",
                [f"preprocess: {{color: {other}}}"])
    if verdict.cause == "not_affine":
        return (
            f"Make the host do everything the cut-off part ({ops}) did, or move start_nodes; "
            "check that native_preprocess describes what the full graph takes.",
            [],
        )
    if line is None or suggested is None:
        return (
            f"Make the host and the recipe's input transforms compute what the cut-off part "
            f"({ops}) did: the full graph's tensor has channel mean "
            f"{_values(measured.full.mean)} and std {_values(measured.full.std)}; or move "
            "start_nodes.",
            [],
        )
    what = (
        "remove the host's mean/std (the cut model still normalizes)"
        if suggested["mean"] is None
        else f"host mean/std as measured from what the cut-off part ({ops}) computes"
    )
    return f"Normalize as the full graph does: {what}; or move start_nodes.", [line]


def finding(
    engine: Engine, measured: InputAgreement, outputs: OutputComparison, verdict: Verdict
) -> Finding:
    cut = engine.start_cut
    assert cut is not None
    ev = evidence(engine, measured, outputs, verdict)
    cmp = outputs.comparison
    metric = outputs.native.metric
    numbers = (
        f"{metric} {outputs.native.value:.1f} (full graph) vs {outputs.fp.value:.1f} (cut model "
        f"+ host), agreement {cmp['agreement']:.1f}%"
        if outputs.comparable
        else "the metric cannot be compared (end_nodes without native_postprocess)"
    )
    if verdict.severity == "ok":
        return Finding(
            "pipeline.start_nodes_mismatch", 1, "ok",
            f"the cut at start_nodes {list(cut.names)} plus the host preprocessing reproduce "
            f"the full graph: input SNR {measured.snr_db:.0f} dB at {cut.tensor!r}; {numbers}",
            ev,
        )
    ops = " → ".join(cut.removed_ops) or "nothing is cut off before it"
    text, recipe = _recommendation(engine, measured, verdict, ops)
    return Finding(
        "pipeline.start_nodes_mismatch", 1, verdict.severity,
        f"the cut model at start_nodes {list(cut.names)} is not fed what the full graph "
        f"computes there ({ops}): {_CAUSES[verdict.cause]} (input SNR {measured.snr_db:.1f} dB "
        f"at {cut.tensor!r}; channel std {_values(measured.host.std)} on the host vs "
        f"{_values(measured.full.std)} in the full graph, mean {_values(measured.host.mean)} vs "
        f"{_values(measured.full.mean)}); {numbers}",
        ev,
        text,
        recipe,
    )


def start_nodes_check(engine: Engine, split: str, outputs: OutputComparison) -> Finding:
    """``pipeline.start_nodes_mismatch``: ok, or a warning/error with the numbers."""
    measured = measure_input(engine, split)
    return finding(engine, measured, outputs, judge(engine, measured, outputs))
