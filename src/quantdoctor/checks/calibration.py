"""Suspect 2: the calibration set (DESIGN §4 step 2).

"Is the calibration set diverse and representative enough of the use case?" Each question is
answered with a measurement on the images the engine decoded once and on the model's own
activations, which the engine computes:

- ``calibration.too_few``: distinct images (exact and near duplicates count once) against 64
  (typical) and 1024 (before fine-tuning remedies such as adaround or finetune);
- ``calibration.duplicates``: exact (hash of the decoded pixels) and near duplicates
  (perceptual hash, confirmed by the cosine similarity of the model's penultimate features);
- ``calibration.constant_images``: single-colour and near-constant images;
- ``calibration.noise_images``: images without the spatial correlation / 1/f² spectrum of
  natural images;
- ``calibration.out_of_domain``: calibration vs evaluation images on the model's penultimate
  activations (energy distance, permutation test) and on input statistics;
- ``calibration.range_coverage``: per quantized tensor, how many evaluation activations fall
  outside the calibrated range and the SNR the clipping costs;
- ``calibration.direct_test``: the quantized metric on held-out evaluation images with ranges
  from the given calibration set vs ranges calibrated on other held-out evaluation images.

>>> result = calibration_checks(Engine(config), make_task(config))   # doctest: +SKIP
>>> [f.id for f in result.findings if f.severity == "error"]          # doctest: +SKIP
['calibration.duplicates', 'calibration.too_few', 'calibration.direct_test']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..data import ImageSet, list_images
from ..engine import Engine
from ..errors import QuantdoctorError
from ..progress import StepTimer
from ..quant.qdq import tensors_to_calibrate
from ..report import Finding, to_json_types
from ..stats import bootstrap_ci
from ..tasks import Task
from . import calibration_stats as cs
from .evaluation import compare, score_context

SUSPECT = 2

#: Calibration-set sizes (distinct images): the usual recommendation for post-training
#: calibration, and what gradient-based remedies (adaround, finetune) need.
TYPICAL_SIZE = 64
FINETUNE_SIZE = 1024
#: Below this many distinct images the ranges rest on a handful of scenes: an error.
MIN_DISTINCT_ERROR = 16
#: Recipe commands that train on the calibration set.
FINETUNE_COMMANDS = ("adaround", "finetune")

#: Near duplicates: a perceptual-hash (imagehash.phash, 64 bits) Hamming distance of at most
#: PHASH_SURE bits, or of at most PHASH_MAX bits confirmed by the model's penultimate features
#: (cosine similarity at least FEATURE_MIN_COSINE and above the 99.99th percentile of the
#: evaluation images' pairwise cosines: the bar adapts to how alike the model finds different
#: images). Measured here: different images are ≥ 12 bits apart
#: on the ImageNet sample and ≥ 8 bits on 3000 CIFAR-10 images; a JPEG re-encode (quality 50),
#: a 15% brightening or a 3% crop of an image is 0-8 bits away with Lite0 feature cosine
#: 0.89-0.997 (different images: ≤ 0.61; on ResNet-20 up to 0.98, hence the percentile).
PHASH_SURE = 4
PHASH_MAX = 8
FEATURE_MIN_COSINE = 0.85

#: Constant images: largest per-channel pixel standard deviation (0..255) below this, or this
#: fraction of the pixels within ±2 levels of the median colour. Real images measured here:
#: std ≥ 11 (CIFAR-10) / ≥ 23 (ImageNet sample); dominant-colour fraction ≤ 0.70.
CONSTANT_MAX_STD = 4.0
CONSTANT_MIN_DOMINANT = 0.95

#: Noise-like images: neighbour correlation below NOISE_MAX_CORRELATION, or below
#: NOISE_WEAK_CORRELATION with a flat spectrum (slope above NOISE_MIN_SLOPE). Real images
#: measured here: correlation ≥ 0.59 (CIFAR-10, ImageNet sample; ≥ 0.29 on 8x8 digits),
#: spectral slope ≤ -0.85 (ImageNet sample); uniform noise: correlation ≤ 0.21, slope ≈ 0.
NOISE_MAX_CORRELATION = 0.25
NOISE_WEAK_CORRELATION = 0.5
NOISE_MIN_SLOPE = -1.0

#: Domain match: energy coefficient (0 = same distribution, 1 = disjoint) and p-values.
#: Random subsets of one data set measured here: |coefficient| ≤ 0.002; CIFAR-10 images
#: against ImageNet evaluation images (Lite0 features): 0.11.
DOMAIN_ERROR_COEFFICIENT = 0.05
DOMAIN_WARNING_COEFFICIENT = 0.02
MAX_FEATURE_IMAGES = 500

#: Range coverage: a tensor counts as clipped when more than this fraction of its evaluation
#: values fall outside the calibrated range; the clipping costs this many dB of SNR for a
#: warning / an error.
COVERAGE_MIN_FRACTION = 1e-4
COVERAGE_WARNING_DB = 6.0
COVERAGE_ERROR_DB = 10.0
#: ... and for an error the clipping also leaves the tensor below this SNR (measured on Lite0:
#: 64 copies of one image clip the pooled features to 20 dB at no top-1 cost; noise or flat
#: images clip the last blocks to 14 dB and cost 53 points).
COVERAGE_ERROR_SNR_DB = 15.0
#: ... and for a warning below this SNR: a tensor still at ≥ 30 dB after clipping keeps more
#: precision than the metric can see (the digits demo CNN: 64 images clip 0.16% of its
#: logits, 6.5 dB lost, 38 dB left, no top-1 cost in the direct test).
COVERAGE_WARNING_SNR_DB = 30.0
#: A calibrated range this many times wider than the evaluation values need wastes
#: 20·log10(ratio) dB of rounding SNR (4x = 12 dB).
COVERAGE_WIDE_RATIO = 4.0

#: Names the direct test registers with the engine.
SCORING_SPLIT = "calibration_check.scoring"
HOLDOUT_RANGES = "calibration_check.holdout"

#: At most this many file names per list in a finding's evidence.
MAX_LISTED = 100


@dataclass
class CalibrationResult:
    """The findings of the calibration step, in checklist order, and the measurements behind
    them as a plain (JSON-serialisable) dict."""

    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)


# --- the model's features --------------------------------------------------------------------

#: Ops between the penultimate features and the model output that only reshape, normalise
#: or add a bias: the search walks through them.
_PASS_THROUGH = frozenset(
    (
        "Add",
        "Cast",
        "Dropout",
        "Flatten",
        "Identity",
        "LogSoftmax",
        "Reshape",
        "Sigmoid",
        "Softmax",
        "Squeeze",
        "Transpose",
        "Unsqueeze",
    )
)
_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean")


def penultimate_tensor(model: onnx.ModelProto) -> str:
    """The tensor that feeds the classifier head, found from the graph: walking back from the
    first output through reshapes, biases and softmax, the data input of the first Gemm/MatMul
    with a constant weight, or the output of a global pooling; otherwise the output of the last
    global pooling, otherwise the model's first output itself."""
    g = model.graph
    consts = {i.name for i in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output
    }
    producer = {o: n for n in g.node for o in n.output}
    queue, seen = [g.output[0].name], set()
    while queue:
        node = producer.get(queue.pop(0))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        data = [i for i in node.input if i and i not in consts]
        if node.op_type in ("Gemm", "MatMul") and len(data) == 1:
            return data[0]
        if node.op_type in _POOLS:
            return node.output[0]
        if node.op_type in _PASS_THROUGH:
            queue.extend(data)
    pools = [n.output[0] for n in g.node if n.op_type in _POOLS]
    return pools[-1] if pools else g.output[0].name


# --- helpers ---------------------------------------------------------------------------------


def _names(paths: list[Any], index: Any) -> list[str]:
    return [str(paths[i]) for i in list(index)[:MAX_LISTED]]


def _round(x: float, digits: int = 4) -> float:
    return float(round(float(x), digits)) if np.isfinite(x) else float(x)


def _register_split(engine: Engine, name: str, images: ImageSet) -> ImageSet:
    """Register a split once; a second call with the same seed finds the same subset."""
    if engine.has_split(name):
        return engine.images(name)
    engine.add_split(name, images)
    return images


# --- image-level checks ----------------------------------------------------------------------


@dataclass
class _ImageFacts:
    exact_groups: list[list[int]]
    near_groups: list[list[int]]
    distinct: int
    usable: int
    constant: np.ndarray
    noise: np.ndarray
    correlation: np.ndarray
    slope: np.ndarray
    std: np.ndarray
    dominant: np.ndarray


def _cosine_bar(f_ev: np.ndarray | None) -> float:
    """The feature cosine a near-duplicate pair must reach: FEATURE_MIN_COSINE, raised to the
    99.99th percentile of pairwise cosines among (mostly distinct) evaluation images."""
    if f_ev is None or len(f_ev) < 10:
        return FEATURE_MIN_COSINE
    cos = cs.cosine_matrix(f_ev)[np.triu_indices(len(f_ev), 1)]
    return max(FEATURE_MIN_COSINE, float(np.quantile(cos, 0.9999)))


def _image_facts(cal: ImageSet, f_cal: np.ndarray | None, cosine_bar: float) -> _ImageFacts:
    px = cal.pixels
    n = len(cal)
    std, dominant = cs.pixel_std(px), cs.dominant_fraction(px)
    constant = (std < CONSTANT_MAX_STD) | (dominant >= CONSTANT_MIN_DOMINANT)
    corr, slope = cs.neighbour_correlation(px), cs.spectral_slope(px)
    with np.errstate(invalid="ignore"):
        noise = ~constant & (
            (corr < NOISE_MAX_CORRELATION)
            | ((corr < NOISE_WEAK_CORRELATION) & (np.nan_to_num(slope, nan=-9.0) > NOISE_MIN_SLOPE))
        )

    hashes = cs.exact_hashes(px)
    first: dict[str, int] = {}
    exact_pairs = []
    for i, h in enumerate(hashes):
        if h in first:
            exact_pairs.append((first[h], i))
        else:
            first[h] = i

    # Near duplicates among one representative per exact group; flat images all share one
    # perceptual hash, so they are left to the constant-image check.
    reps = np.array([i for i in sorted(first.values()) if not constant[i]], dtype=np.int64)
    near_pairs: list[tuple[int, int]] = []
    if len(reps) > 1:
        ham = cs.hamming_matrix(cs.perceptual_hashes(px[reps]))
        close = ham <= PHASH_SURE
        if f_cal is not None and len(f_cal) == n:
            confirmed = cs.cosine_matrix(f_cal[reps]) >= cosine_bar
            close |= (ham <= PHASH_MAX) & confirmed
        a, b = np.nonzero(np.triu(close, 1))
        near_pairs = [(int(reps[i]), int(reps[j])) for i, j in zip(a, b, strict=True)]
    exact_groups = cs.connected_groups(n, exact_pairs)
    all_groups = cs.connected_groups(n, exact_pairs + near_pairs)
    near_groups = [g for g in all_groups if len({hashes[i] for i in g}) > 1]
    distinct = n - sum(len(g) - 1 for g in all_groups)
    grouped = {i for g in all_groups for i in g[1:]}  # all but the first of each group
    usable = sum(1 for i in range(n) if i not in grouped and not (constant[i] or noise[i]))
    return _ImageFacts(
        exact_groups, near_groups, distinct, usable, constant, noise, corr, slope, std, dominant
    )


def _too_few(facts: _ImageFacts, n: int, engine: Engine, available: int | None) -> Finding:
    k = facts.distinct
    commands = {name for _, name, _ in engine.config.remedy_steps}
    finetune = sorted(commands & set(FINETUNE_COMMANDS))
    evidence: dict[str, Any] = {
        "images": n,
        "distinct_images": k,
        "usable_images": facts.usable,  # distinct, neither flat nor noise-like
        "typical_min": TYPICAL_SIZE,
        "finetune_min": FINETUNE_SIZE,
        "configured_size": engine.config.calibration.size,
        "available_files": available,
        "finetune_commands": finetune,
    }
    counted = f"{k} distinct image{'s' if k != 1 else ''}" + (f" (of {n} files)" if k != n else "")
    more = (
        f" The calibration folder has {available} images; raise the recipe's calibration.size "
        "(and data.calibration.limit)."
        if available is not None and available > n
        else " Add more varied images from the deployment domain."
    )
    recipe = [f"calibration: {{size: {max(TYPICAL_SIZE, min(available or 0, FINETUNE_SIZE))}}}"]
    if k < MIN_DISTINCT_ERROR:
        return Finding(
            "calibration.too_few",
            SUSPECT,
            "error",
            f"The calibration set has only {counted}: its ranges describe a handful of scenes",
            evidence,
            f"Calibrate on at least {TYPICAL_SIZE} distinct, representative images." + more,
            recipe,
        )
    if k < TYPICAL_SIZE:
        return Finding(
            "calibration.too_few",
            SUSPECT,
            "warning",
            f"The calibration set has {counted}, fewer than the usual {TYPICAL_SIZE}",
            evidence,
            f"Calibrate on at least {TYPICAL_SIZE} distinct, representative images." + more,
            recipe,
        )
    if k < FINETUNE_SIZE:
        severity = "warning" if finetune else "info"
        uses = f" but the recipe uses {', '.join(finetune)}" if finetune else ""
        return Finding(
            "calibration.too_few",
            SUSPECT,
            severity,
            f"{counted.capitalize()}: enough to calibrate ranges{uses}; fine-tuning remedies "
            f"need ≥ {FINETUNE_SIZE}",
            evidence,
            f"Enough for range calibration. Before gradient-based remedies (adaround, finetune) "
            f"give at least {FINETUNE_SIZE} distinct images.",
        )
    return Finding(
        "calibration.too_few",
        SUSPECT,
        "ok",
        f"{counted.capitalize()}: enough for calibration and fine-tuning remedies",
        evidence,
    )


def _duplicates(facts: _ImageFacts, cal: ImageSet, cosine_bar: float) -> Finding:
    n = len(cal)
    extra = n - facts.distinct
    fraction = extra / n if n else 0.0
    groups = [
        {"kind": "exact", "size": len(g), "files": _names(cal.paths, g)} for g in facts.exact_groups
    ] + [{"kind": "near", "size": len(g), "files": _names(cal.paths, g)} for g in facts.near_groups]
    groups.sort(key=lambda g: -g["size"])
    evidence = {
        "images": n,
        "distinct_images": facts.distinct,
        "redundant_images": extra,
        "redundant_fraction": _round(fraction),
        "exact_groups": len(facts.exact_groups),
        "near_groups": len(facts.near_groups),
        "groups": groups[:20],
        "method": (
            "exact: SHA-1 of the decoded pixels; near: perceptual hash (imagehash.phash) within "
            f"{PHASH_SURE} of 64 bits, or within {PHASH_MAX} bits with a penultimate-feature "
            f"cosine ≥ {cosine_bar:.3f}"
        ),
    }
    if extra == 0:
        return Finding(
            "calibration.duplicates", SUSPECT, "ok", "No duplicate calibration images", evidence
        )
    severity = "error" if fraction >= 0.5 else ("warning" if fraction >= 0.1 else "info")
    top = groups[0]
    example = ", ".join(top["files"][:3])
    title = (
        f"{extra} of {n} calibration images ({fraction:.0%}) duplicate others: "
        f"{len(facts.exact_groups)} exact and {len(facts.near_groups)} near-duplicate group(s); "
        f"the largest has {top['size']} copies ({example}{', …' if top['size'] > 3 else ''})"
    )
    return Finding(
        "calibration.duplicates",
        SUSPECT,
        severity,
        title,
        evidence,
        "Keep one image of each group and replace the copies with different scenes: duplicates "
        "add no information about activation ranges and weigh the copied scene.",
    )


def _constant(facts: _ImageFacts, cal: ImageSet) -> Finding:
    n = len(cal)
    idx = np.flatnonzero(facts.constant)
    fraction = len(idx) / n if n else 0.0
    evidence = {
        "images": n,
        "constant_images": len(idx),
        "fraction": _round(fraction),
        "files": _names(cal.paths, idx),
        "pixel_std": [_round(facts.std[i], 2) for i in idx[:MAX_LISTED]],
        "dominant_colour_fraction": [_round(facts.dominant[i], 3) for i in idx[:MAX_LISTED]],
        "rule": (
            f"largest per-channel pixel std < {CONSTANT_MAX_STD} (0..255), or ≥ "
            f"{CONSTANT_MIN_DOMINANT:.0%} of the pixels within ±2 levels of the median colour"
        ),
    }
    if not len(idx):
        return Finding(
            "calibration.constant_images",
            SUSPECT,
            "ok",
            "No single-colour or near-constant calibration images",
            evidence,
        )
    severity = "error" if fraction >= 0.5 else ("warning" if fraction >= 0.1 else "info")
    return Finding(
        "calibration.constant_images",
        SUSPECT,
        severity,
        f"{len(idx)} of {n} calibration images ({fraction:.0%}) are single-colour or nearly so "
        f"(e.g. {evidence['files'][0]})",
        evidence,
        "Remove blank, single-colour and nearly empty frames: they show the network no "
        "structure, so its activation ranges come out too narrow for real images.",
    )


def _noise(facts: _ImageFacts, cal: ImageSet) -> Finding:
    n = len(cal)
    idx = np.flatnonzero(facts.noise)
    fraction = len(idx) / n if n else 0.0
    evidence = {
        "images": n,
        "noise_images": len(idx),
        "fraction": _round(fraction),
        "files": _names(cal.paths, idx),
        "neighbour_correlation": [_round(facts.correlation[i], 3) for i in idx[:MAX_LISTED]],
        "spectral_slope": [_round(facts.slope[i], 2) for i in idx[:MAX_LISTED]],
        "calibration_median_correlation": _round(float(np.nanmedian(facts.correlation)), 3)
        if np.isfinite(facts.correlation).any()
        else None,
        "calibration_median_slope": _round(float(np.nanmedian(facts.slope)), 2)
        if np.isfinite(facts.slope).any()
        else None,
        "rule": (
            f"neighbour-pixel correlation < {NOISE_MAX_CORRELATION}, or < "
            f"{NOISE_WEAK_CORRELATION} with a power-spectrum slope > {NOISE_MIN_SLOPE} "
            "(natural images: correlation ≥ 0.6 and slope ≈ -2)"
        ),
    }
    if not len(idx):
        return Finding(
            "calibration.noise_images", SUSPECT, "ok", "No noise-like calibration images", evidence
        )
    severity = "error" if fraction >= 0.25 else "warning"
    return Finding(
        "calibration.noise_images",
        SUSPECT,
        severity,
        f"{len(idx)} of {n} calibration images ({fraction:.0%}) look like noise, not like "
        f"photographs (no neighbour correlation / 1/f² spectrum; e.g. {evidence['files'][0]})",
        evidence,
        "Calibrate on real images from the deployment domain: noise drives the activations "
        "into patterns real images do not produce, so the ranges come out too wide in some "
        "layers (coarse steps) and too narrow in others (clipping); see range_coverage.",
    )


# --- domain ----------------------------------------------------------------------------------


def _input_statistics(cal: ImageSet, ev: ImageSet, model_hw: tuple[int, int]) -> dict[str, Any]:
    a, b = cs.image_statistics(cal.pixels), cs.image_statistics(ev.pixels)
    out: dict[str, Any] = {k: cs.compare_samples(a[k], b[k]) for k in a}

    def size(images: ImageSet) -> dict[str, Any]:
        hw = np.array([m.orig_hw for m in images.metas], dtype=np.float64)
        upscaled = np.array([min(m.scale_hw) > 1.0 for m in images.metas])
        return {
            "median_original_hw": [float(np.median(hw[:, 0])), float(np.median(hw[:, 1]))],
            "upscaled_fraction": _round(float(upscaled.mean())),
        }

    out["original_size"] = {"calibration": size(cal), "evaluation": size(ev)}
    out["model_input_hw"] = list(model_hw)
    return out


def _notable_inputs(stats: dict[str, Any]) -> list[str]:
    notes = []
    for key, s in stats.items():
        if (
            isinstance(s, dict)
            and "ks_p_value" in s
            and s["ks_p_value"] < 0.01
            and abs(s["shift_in_std"]) >= 0.5
        ):
            notes.append(
                f"{key}: {s['calibration_median']:.1f} vs {s['evaluation_median']:.1f} "
                f"({s['shift_in_std']:+.1f} std)"
            )
    sizes = stats["original_size"]
    c_up, e_up = sizes["calibration"]["upscaled_fraction"], sizes["evaluation"]["upscaled_fraction"]
    if c_up - e_up >= 0.25:
        hw = sizes["calibration"]["median_original_hw"]
        notes.append(
            f"{c_up:.0%} of the calibration images are upscaled (median {hw[0]:.0f}x{hw[1]:.0f} "
            f"px) vs {e_up:.0%} of the evaluation images"
        )
    return notes


def _domain(
    cal: ImageSet,
    ev: ImageSet,
    f_cal: np.ndarray,
    f_ev: np.ndarray,
    tensor: str,
    model_hw: tuple[int, int],
    permutations: int,
    seed: int,
) -> Finding:
    test = cs.energy_test(f_cal, f_ev, permutations, seed)
    near, within = cs.nearest_distances(f_cal, f_ev)
    limit = float(within.max()) if len(within) else float("inf")
    far = np.flatnonzero(near > limit)
    inputs = _input_statistics(cal, ev, model_hw)
    notes = _notable_inputs(inputs)
    evidence: dict[str, Any] = {
        "feature_tensor": tensor,
        "feature_dim": int(f_cal.shape[1]) if f_cal.ndim == 2 else 0,
        "calibration_images": len(f_cal),
        "evaluation_images": len(f_ev),
        "energy_distance": _round(test.distance, 6),
        "energy_coefficient": _round(test.coefficient, 5),
        "p_value": _round(test.p_value, 5),
        "test": f"permutation test of the energy distance ({test.permutations} permutations)",
        "nearest_neighbour_ratio_median": _round(
            float(np.median(near) / np.median(within)) if len(within) else float("nan"), 3
        ),
        "outlier_files": _names(cal.paths, far),
        "outlier_rule": (
            "farther from every evaluation image than any evaluation image is from its nearest "
            "other evaluation image"
        ),
        "input_statistics": inputs,
        "input_differences": notes,
    }
    h, p = test.coefficient, test.p_value
    numbers = f"energy coefficient {h:.3f}, permutation p = {p:.2g}"
    if not np.isfinite(p):
        return Finding(
            "calibration.out_of_domain",
            SUSPECT,
            "info",
            "Too few images to compare the calibration and evaluation distributions",
            evidence,
        )
    if p < 0.01 and h >= DOMAIN_ERROR_COEFFICIENT:
        severity = "error"
    elif p < 0.05 and h >= DOMAIN_WARNING_COEFFICIENT:
        severity = "warning"
    elif p < 0.05:
        severity = "info"
    else:
        severity = "ok"
    why = f"; inputs differ: {'; '.join(notes[:3])}" if notes and severity != "ok" else ""
    if severity in ("error", "warning"):
        title = (
            f"The calibration images do not represent the evaluation images in the model's "
            f"features ({numbers}){why}"
        )
        rec = (
            "Calibrate on images from the deployment domain (e.g. a random sample of the "
            "evaluation or production images): ranges fitted to other content clip or waste "
            "the range of the real activations."
        )
    elif severity == "info":
        title = f"The calibration and evaluation images differ slightly ({numbers}){why}"
        rec = "A statistically detectable but small difference; usually harmless."
    else:
        title = f"The calibration images match the evaluation images ({numbers})"
        rec = ""
    return Finding("calibration.out_of_domain", SUSPECT, severity, title, evidence, rec)


# --- range coverage --------------------------------------------------------------------------


def _coverage(engine: Engine, images: ImageSet, chunk: int) -> Finding:
    plan = engine.plan()
    by_output = {layer.output: layer for layer in engine.layers}
    inputs = set(tensors_to_calibrate(engine.float_model, [])) - set(by_output)
    ranges = engine.ranges("calibration")
    acc: dict[str, cs.CoverageAccumulator] = {}
    for name in tensors_to_calibrate(engine.float_model, engine.layers):
        layer = by_output.get(name)
        scheme = plan.activation_scheme(layer, name) if (layer or name in inputs) else None
        if scheme is not None and name in ranges:
            lo, hi = ranges[name]
            acc[name] = cs.CoverageAccumulator(float(lo), float(hi), scheme)
    names = list(acc)
    if names:
        # Small chunks bound the memory: every quantized tensor of `chunk` images at once.
        for start in range(0, len(images), chunk):
            part = images.subset(np.arange(start, min(start + chunk, len(images))))
            for batch in engine.capture("fp_optimized", names, part):
                for name in names:
                    acc[name].add(batch[name])
    rows = [{"tensor": n, **acc[n].summary()} for n in names]
    # Percentile calibration clips its tails on purpose: only ten times that is a finding.
    cal = engine.config.calibration
    expected = 2 * (100.0 - cal.percentile) / 100.0 if cal.method == "percentile" else 0.0
    min_fraction = max(COVERAGE_MIN_FRACTION, 10 * expected)
    clipped = [r for r in rows if r["fraction_outside"] > min_fraction]
    clipped.sort(key=lambda r: -r["clipping_cost_db"])
    wide = [r for r in rows if r["range_ratio"] >= COVERAGE_WIDE_RATIO]
    wide.sort(key=lambda r: -r["range_ratio"])
    worst_db = max((r["clipping_cost_db"] for r in clipped), default=0.0)
    total = sum(r["values"] for r in rows) or 1
    outside = sum(r["fraction_outside"] * r["values"] for r in rows) / total

    def brief(r: dict[str, Any]) -> dict[str, Any]:
        return {
            "tensor": r["tensor"],
            "calibrated_range": [_round(v, 5) for v in r["calibrated_range"]],
            "evaluation_range": [_round(v, 5) for v in r["evaluation_range"]],
            "fraction_outside": _round(r["fraction_outside"], 6),
            "snr_db": _round(r["snr_db"], 2),
            "snr_without_clipping_db": _round(r["snr_without_clipping_db"], 2),
            "clipping_cost_db": _round(r["clipping_cost_db"], 2),
            "range_ratio": _round(r["range_ratio"], 3),
        }

    evidence: dict[str, Any] = {
        "evaluation_images": len(images),
        "quantized_tensors": len(rows),
        "calibration_method": cal.method,
        "min_fraction_outside": min_fraction,
        "clipped_tensors": len(clipped),
        "fraction_outside_overall": _round(outside, 7),
        "worst_clipping_cost_db": _round(worst_db, 2),
        "wide_tensors": len(wide),
        "clipped": [brief(r) for r in clipped[:20]],
        "too_wide": [brief(r) for r in wide[:20]],
        "tensors": [brief(r) for r in rows],
        "method": (
            "native activations of evaluation images against the calibrated ranges, quantized "
            "with the target's activation scheme; SNR = signal / (clipping + rounding noise), "
            "clipping cost = SNR without clipping minus SNR; range ratio = calibrated width / "
            "width the evaluation values need"
        ),
    }
    bad = [
        r
        for r in clipped
        if r["clipping_cost_db"] >= COVERAGE_WARNING_DB
        and (r["snr_db"] is None or r["snr_db"] < COVERAGE_WARNING_SNR_DB)
    ]
    severe = [
        r
        for r in bad
        if r["clipping_cost_db"] >= COVERAGE_ERROR_DB and r["snr_db"] < COVERAGE_ERROR_SNR_DB
    ]
    if severe:
        severity = "error"
    elif bad or len(wide) >= max(1, len(rows) // 4):
        severity = "warning"
    elif clipped or wide:
        severity = "info"
    else:
        severity = "ok"
    if clipped:
        w = clipped[0]
        title = (
            f"The calibrated ranges clip evaluation activations in {len(clipped)} of {len(rows)} "
            f"quantized tensors; worst: {w['tensor']} ({w['fraction_outside']:.2%} of values "
            f"outside, {w['clipping_cost_db']:.1f} dB of SNR lost)"
        )
    else:
        title = f"The calibrated ranges cover the evaluation activations of all {len(rows)} tensors"
    if wide:
        title += (
            f"; {len(wide)} range(s) are ≥ {COVERAGE_WIDE_RATIO:.0f}x wider than the evaluation "
            f"values need (worst {wide[0]['range_ratio']:.1f}x: {wide[0]['tensor']})"
        )
    rec = (
        "Calibrate on images that show what the model meets in use: ranges that clip real "
        "activations lose information, ranges far wider than needed coarsen every step."
        if severity in ("error", "warning")
        else ""
    )
    return Finding("calibration.range_coverage", SUSPECT, severity, title, evidence, rec)


# --- the direct test -------------------------------------------------------------------------


def _direct_test(
    engine: Engine,
    task: Task,
    ev: ImageSet,
    candidates: np.ndarray,
    n_cal: int,
    context: str,
    max_drop: float,
    seed: int,
) -> tuple[Finding, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(candidates)
    # The reference ranges come from as many held-out images as the calibration set has (at
    # least the typical 64): what a representative set of that size would give.
    n_ref = min(max(n_cal, TYPICAL_SIZE), len(perm) // 2)
    ref_idx, score_idx = np.sort(perm[:n_ref]), np.sort(perm[n_ref:])
    scoring = _register_split(engine, SCORING_SPLIT, ev.subset(score_idx))
    engine.add_ranges(HOLDOUT_RANGES, engine.calibrate(ev.subset(ref_idx)))

    # The whole evaluation split with the given ranges is what the three-way test runs: run
    # once here, the scoring images' outputs are its rows (Engine.outputs).
    engine.outputs(context, "evaluation")
    given, given_ci = score_context(engine, task, context, seed, SCORING_SPLIT)
    held, held_ci = score_context(engine, task, context, seed, SCORING_SPLIT, ranges=HOLDOUT_RANGES)
    # Float (fp_optimized: the model that is quantized) outputs of the whole evaluation split
    # are cached: the three-way test reuses them.
    native_all = engine.outputs("fp_optimized", "evaluation")
    native = task.score({k: v[score_idx] for k, v in native_all.items()}, scoring)
    native_ci = bootstrap_ci(
        np.arange(native.n), native.values_for, n_boot=native.n_bootstrap, seed=seed
    )
    cmp = compare("holdout_ranges", held, "given_ranges", given, seed)
    cost = -cmp["difference"]
    cost_ci = [-cmp["ci95"][1], -cmp["ci95"][0]]
    n = given.n

    def summary(value: float, ci: tuple[float, float]) -> dict[str, Any]:
        return {"value": value, "ci95": list(ci), "n": n}

    evidence: dict[str, Any] = {
        "context": context,
        "target": engine.target.name,
        "metric": given.metric,
        "scoring_images": n,
        "holdout_calibration_images": int(n_ref),
        "given_ranges": summary(given.value, given_ci.ci95),
        "holdout_ranges": summary(held.value, held_ci.ci95),
        "float": summary(native.value, native_ci),
        "cost_points": cost,
        "cost_ci95": cost_ci,
        "test": cmp["test"],
        "p_value": cmp["p_value"],
        "max_drop": max_drop,
        "evaluation_images_excluded_as_calibration_images": int(len(ev) - len(candidates)),
    }
    for key, name in (
        ("only_reference_correct", "only_holdout_correct"),
        ("only_context_correct", "only_given_correct"),
    ):
        if key in cmp:
            evidence[name] = cmp[key]
    significant = cmp["p_value"] < 0.05 and (cost_ci[0] > 0 or cost_ci[1] < 0)
    test = "McNemar" if str(cmp["test"]).startswith("McNemar") else "bootstrap"
    m = given.metric
    numbers = (
        f"{m} {given.value:.1f} with the calibration set vs {held.value:.1f} with ranges from "
        f"{n_ref} held-out evaluation images: cost {cost:+.2f} points (95% CI {cost_ci[0]:+.2f} "
        f"… {cost_ci[1]:+.2f}"
        + f", {test} p = {cmp['p_value']:.2g}"
        + f", n = {n}, {context}/{engine.target.name})"
    )
    if significant and cost > 0:
        severity = "error" if cost > max_drop else "warning"
        title = f"The calibration set costs accuracy: {numbers}"
        rec = (
            "Replace the calibration set with images like the evaluation images: the same "
            "model, quantized with ranges from held-out evaluation images, does significantly "
            "better."
        )
    elif significant:
        severity = "ok"
        title = f"The calibration set does better than held-out evaluation images: {numbers}"
        rec = ""
    else:
        severity = "ok" if cost_ci[1] <= max_drop else "info"
        title = f"The calibration set costs no significant accuracy: {numbers}"
        rec = (
            ""
            if severity == "ok"
            else f"No significant cost, but up to {cost_ci[1]:.2f} points cannot be excluded; "
            "evaluate on more images to narrow it down."
        )
    return Finding("calibration.direct_test", SUSPECT, severity, title, evidence, rec), evidence


# --- the step --------------------------------------------------------------------------------


def calibration_checks(
    engine: Engine,
    task: Task,
    *,
    max_drop: float | None = None,
    seed: int | None = None,
    context: str = "int8",
    coverage_images: int = 128,
    coverage_chunk: int = 8,
    permutations: int = 1000,
    direct_test: bool = True,
    on_finding: Callable[[Finding], None] | None = None,
) -> CalibrationResult:
    """Run every calibration-set check on ``engine``'s calibration and evaluation splits.

    ``context`` runs the direct test (``int8``: ONNX Runtime's fused integer kernels, the
    fast path; ``quantized``: float emulation). ``coverage_images`` evaluation images are
    compared against the calibrated ranges, ``coverage_chunk`` at a time (memory: every
    quantized tensor of that many images). ``on_finding`` is called after each finding so that
    results can be saved as they come. Deterministic for a given ``seed`` (default:
    ``config.seed``)."""
    seed = engine.config.seed if seed is None else seed
    max_drop = engine.config.max_drop if max_drop is None else max_drop
    result = CalibrationResult()
    timer = StepTimer()

    def add(finding: Finding) -> None:
        finding.evidence = to_json_types(finding.evidence)
        result.findings.append(finding)
        if on_finding:
            on_finding(finding)

    with timer("images"):
        cal = engine.images("calibration")
        ev = engine.images("evaluation")
        # Evaluation images that are also calibration images (e.g. no calibration folder
        # given) stay out of every comparison: they would match by construction.
        cal_hashes = set(cs.exact_hashes(cal.pixels))
        ev_hashes = cs.exact_hashes(ev.pixels)
        held_out = np.array([h not in cal_hashes for h in ev_hashes], dtype=bool)
        candidates = np.flatnonzero(held_out)
        rng = np.random.default_rng(seed)
        feature_idx = np.sort(
            rng.permutation(candidates)[: min(MAX_FEATURE_IMAGES, len(candidates))]
        )

    with timer("features"):
        tensor = penultimate_tensor(engine.float_model)
        f_cal = engine.float_features(tensor, cal)
        f_ev = (
            engine.float_features(tensor, ev.subset(feature_idx)) if len(feature_idx) else None
        )

    with timer("image_checks"):
        cosine_bar = _cosine_bar(f_ev)
        facts = _image_facts(cal, f_cal, cosine_bar)
        src = engine.config.data.calibration
        available = None
        if src is not None:
            try:
                available = len(list_images(src.path))
            except QuantdoctorError:
                available = None
        add(_too_few(facts, len(cal), engine, available))
        add(_duplicates(facts, cal, cosine_bar))
        add(_constant(facts, cal))
        add(_noise(facts, cal))

    if f_ev is not None and len(f_ev) >= 2:
        with timer("domain"):
            hw = cal.hw
            add(
                _domain(
                    cal,
                    ev.subset(feature_idx),
                    f_cal,
                    f_ev,
                    tensor,
                    (int(hw[0]), int(hw[1])),
                    permutations,
                    seed,
                )
            )

    with timer("range_coverage"):
        cov_idx = np.sort(rng.permutation(candidates)[: min(coverage_images, len(candidates))])
        if len(cov_idx):
            add(_coverage(engine, ev.subset(cov_idx), coverage_chunk))

    direct: dict[str, Any] | None = None
    skipped = None
    if not direct_test:
        skipped = "disabled"
    elif ev.labels is None and ev.boxes is None:
        skipped = "the evaluation images have no labels"
    elif len(candidates) < 2 * MIN_DISTINCT_ERROR:
        skipped = f"only {len(candidates)} held-out evaluation images"
    else:
        with timer("direct_test"):
            finding, direct = _direct_test(
                engine, task, ev, candidates, len(cal), context, max_drop, seed
            )
            add(finding)

    result.evidence = to_json_types(
        {
            "calibration_images": len(cal),
            "evaluation_images": len(ev),
            "held_out_evaluation_images": int(len(candidates)),
            "feature_tensor": tensor,
            "findings": {f.id: f.severity for f in result.findings},
            "direct_test": direct if direct is not None else {"skipped": skipped},
            "timings_s": timer.seconds,
        }
    )
    return result


__all__ = ["CalibrationResult", "calibration_checks", "penultimate_tensor"]
