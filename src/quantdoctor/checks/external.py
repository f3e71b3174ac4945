"""The external context in the three-way test (DESIGN §4 step 3): outputs produced elsewhere
(e.g. on the device) scored like any context, and the test that matters most for them, whether
they do what the emulation (``quantized``) does (``evaluation.external_mismatch``).

Images without an external output are left out of external's metric and of every paired test
that involves it: the other context is re-scored on the same images (from its cached
outputs; no model runs again). The count and the first names are in the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import Engine
from ..engine.external import ExternalOutputs
from ..report import ContextResult, Finding
from ..stats import bootstrap_ci, snr_db_between
from ..tasks import Task, TaskScores
from .evaluation import _verdict, compare

if TYPE_CHECKING:
    from .evaluation import EvaluationResult

CONTEXT = "external"
#: Within this many dB the external outputs are as close to int8 as to quantized.
CLOSER_MARGIN_DB = 1.0
#: Below this output SNR to both, the outputs are not those of this model and pipeline with
#: some other arithmetic: rounding alone (8 bits) leaves 20-40 dB.
FAR_SNR_DB = 15.0


def subset_note(ext: ExternalOutputs) -> str:
    """How the paired tests of the external context choose their images (evidence, console)."""
    n, missing = int(ext.present.sum()), len(ext.missing)
    if not missing:
        return f"all {n} images have external outputs"
    # the last two path parts: class folders often repeat file names
    shown = ", ".join("/".join(p.parts[-2:]) for p in ext.missing[:3])
    return (
        f"on the {n} images with external outputs; {missing} without ({shown}"
        f"{', …' if missing > 3 else ''}) are left out"
    )


def score_external(
    engine: Engine, task: Task, seed: int = 0, split: str = "evaluation"
) -> tuple[TaskScores, ContextResult]:
    """External's metric with its bootstrap CI, on the images that have external outputs."""
    ext = engine.external(split)
    index = ext.index
    images = engine.images(split).subset(index)
    scores = task.score({k: v[index] for k, v in ext.outputs.items()}, images)
    ci = bootstrap_ci(np.arange(scores.n), scores.values_for, n_boot=scores.n_bootstrap, seed=seed)
    return scores, ContextResult(scores.metric, scores.value, ci, scores.n)


def on_subset(
    engine: Engine, task: Task, context: str, full: TaskScores, index: np.ndarray,
    split: str = "evaluation",
) -> TaskScores:
    """A context's scores on the images ``index`` of a split (re-scored from its cached
    outputs; ``full`` itself when the subset is every image)."""
    if len(index) == full.n:
        return full
    outputs = engine.outputs(context, split)
    return task.score({k: v[index] for k, v in outputs.items()}, engine.images(split).subset(index))


def output_snr(
    engine: Engine, context: str, ext: ExternalOutputs, split: str = "evaluation"
) -> dict[str, float]:
    """Per output, the SNR of the external outputs against a context's, on the images that
    have external outputs."""
    ref, index = engine.outputs(context, split), ext.index
    return {
        name: snr_db_between(ref[name][index], ext.outputs[name][index])
        for name in ext.outputs
    }


# --- measure ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """What the external outputs are measured against: the emulation (quantized) on the task
    metric (paired), and both quantized contexts by output SNR."""

    vs_quantized: dict[str, Any]
    vs_int8: dict[str, Any] | None
    snr_quantized: dict[str, float]
    snr_int8: dict[str, float] | None
    subset: str
    missing: int
    missing_files: list[str]

    @property
    def closer_to(self) -> str:
        """``int8``, ``quantized`` or ``both`` (by the worst output's SNR)."""
        if self.snr_int8 is None:
            return "quantized"
        q, i = min(self.snr_quantized.values()), min(self.snr_int8.values())
        if abs(i - q) <= CLOSER_MARGIN_DB:
            return "both"
        return "int8" if i > q else "quantized"

    @property
    def far_from_both(self) -> bool:
        worst = [min(self.snr_quantized.values())]
        if self.snr_int8 is not None:
            worst.append(min(self.snr_int8.values()))
        return max(worst) < FAR_SNR_DB


def measure(
    engine: Engine, task: Task, result: EvaluationResult, seed: int
) -> tuple[Mismatch | None, list[dict[str, Any]]]:
    """The paired comparisons of external with quantized and int8 on the images that have
    external outputs (also returned, for findings.json's comparisons)."""
    ext, ext_scores = engine.external(), result.scores[CONTEXT]
    index, note = ext.index, subset_note(ext)
    cmps: dict[str, dict[str, Any]] = {}
    snrs: dict[str, dict[str, float]] = {}
    for ctx in ("quantized", "int8"):
        if ctx in result.scores:
            ref = on_subset(engine, task, ctx, result.scores[ctx], index)
            cmps[ctx] = {**compare(ctx, ref, CONTEXT, ext_scores, seed), "images": note}
            snrs[ctx] = output_snr(engine, ctx, ext)
    if "quantized" not in cmps:
        return None, list(cmps.values())
    mismatch = Mismatch(
        cmps["quantized"], cmps.get("int8"), snrs["quantized"], snrs.get("int8"), note,
        len(ext.missing), [str(p) for p in ext.missing[:10]],
    )
    return mismatch, list(cmps.values())


# --- judge and word --------------------------------------------------------------------------


def _severity(diff: float, lo: float, hi: float, p: float, max_drop: float) -> str:
    """A significant difference in either direction: the emulation does not describe the
    device (error beyond max_drop); within noise: ok, or info when the CI still allows a
    difference beyond max_drop."""
    if p < 0.05 and (lo > 0 or hi < 0):
        return "error" if abs(diff) > max_drop else "warning"
    return "ok" if max(abs(lo), abs(hi)) <= max_drop else "info"


def _snr_text(m: Mismatch) -> str:
    q = f"{min(m.snr_quantized.values()):.1f} dB to quantized"
    if m.snr_int8 is None:
        return f"output SNR {q}"
    return f"output SNR {min(m.snr_int8.values()):.1f} dB to int8, {q}"


def _closer_text(m: Mismatch) -> str:
    if m.far_from_both:
        return (
            "Its outputs are far from both quantized contexts: a different pipeline on the "
            "device (input preprocessing, channel order, input or output scaling) or another "
            "model is likelier than different arithmetic."
        )
    if m.closer_to == "int8":
        return (
            "Its outputs are closer to ONNX Runtime's integer kernels (int8) than to the float "
            "emulation: integer arithmetic (rounding, requantization) explains at least part "
            "of it, so trust the int8 context's numbers over quantized's."
        )
    if m.closer_to == "quantized":
        return (
            "Its outputs are closer to the float emulation than to the integer kernels, yet "
            "differ on the task: look for a step the device adds or leaves out."
        )
    return "Its outputs are as close to int8 as to quantized."


def mismatch_finding(m: Mismatch, max_drop: float) -> Finding:
    """``evaluation.external_mismatch``: does the device do what the emulation does?"""
    c = m.vs_quantized
    diff, (lo, hi), p = c["difference"], c["ci95"], c["p_value"]
    severity = _severity(diff, lo, hi, p, max_drop)
    test = "McNemar" if c["test"].startswith("McNemar") else "bootstrap"
    numbers = (
        f"{c['metric']} {diff:+.2f} points (95% CI {lo:+.2f} … {hi:+.2f}, {test} p = {p:.2g}, "
        f"n = {c['n']}), {c['agreement']:.2f}% {c['agreement_name'].replace('_', ' ')}, "
        f"{_snr_text(m)}"
    )
    evidence: dict[str, Any] = {
        "context": CONTEXT,
        "reference": "quantized",
        "metric": c["metric"],
        "difference": diff,
        "ci95": [lo, hi],
        "p_value": p,
        "test": c["test"],
        "n": c["n"],
        "max_drop": max_drop,
        c["agreement_name"]: c["agreement"],
        "output_snr_db": {"quantized": m.snr_quantized, "int8": m.snr_int8},
        "closer_to": m.closer_to,
        "images": m.subset,
        "missing": m.missing,
        "missing_files": m.missing_files,
    }
    for key in ("only_reference_correct", "only_context_correct"):
        if key in c:
            evidence[key] = c[key]
    if m.vs_int8 is not None:
        i = m.vs_int8
        evidence["vs_int8"] = {
            "difference": i["difference"], "ci95": i["ci95"], "p_value": i["p_value"],
            i["agreement_name"]: i["agreement"],
        }
    fid = "evaluation.external_mismatch"
    if severity in ("error", "warning"):
        return Finding(
            fid, 3, severity,
            f"external differs from the emulation (quantized): {numbers}",
            evidence,
            "The device (or its compiler) does not do what the emulation does, so the emulated "
            "diagnosis (layers, calibration, remedies) does not explain the device's accuracy. "
            + _closer_text(m)
            + " Check the device side first: what it is fed (preprocessing, channel order), "
            "how its outputs are dequantized (external.scale, zero_point), and whether it runs "
            "the exported quantization parameters (`quantdoctor export`); compare one image's "
            "outputs by hand.",
        )
    if severity == "info":
        bound = max(abs(lo), abs(hi))
        return Finding(
            fid, 3, severity,
            f"external is within noise of the emulation (quantized): {numbers}",
            evidence,
            f"No significant difference, but one up to {bound:.2f} points (> max_drop "
            f"{max_drop}) cannot be excluded: evaluate on more images.",
        )
    return Finding(
        fid, 3, severity,
        f"external matches the emulation (quantized) within noise: {numbers}",
        evidence,
        "The emulated diagnosis applies to the device.",
    )


def missing_outputs(ext: ExternalOutputs, split: str = "evaluation") -> Finding | None:
    """``setup.external_missing``: images without an external output, listed (they are left
    out of external's metric and paired tests; more than half missing is refused when the
    dumps are read)."""
    missing = ext.missing
    if not missing:
        return None
    n = len(ext.paths)
    return Finding(
        "setup.external_missing", 0, "info",
        f"{len(missing)} of {n} {split} images have no external output in {ext.source}: "
        "left out of the external context's metric and paired tests",
        {"split": split, "source": str(ext.source), "images": n, "missing": len(missing),
         "files": [str(p) for p in missing]},
        "Write the missing dumps (named after their image files) to compare on every image.",
    )


def external_tests(
    engine: Engine, task: Task, result: EvaluationResult, reference: str, max_drop: float,
    seed: int, native_task: Task | None = None,
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """External against the float reference (a verdict, like every quantized context), then
    against quantized and int8 (the mismatch finding), all on the images with outputs."""
    ext = engine.external()
    ref_task = native_task if reference == "native" and native_task is not None else task
    ref = on_subset(engine, ref_task, reference, result.scores[reference], ext.index)
    first = {**compare(reference, ref, CONTEXT, result.scores[CONTEXT], seed),
             "images": subset_note(ext)}
    verdict = _verdict(first, max_drop, engine.target.name)
    verdict.evidence["images"] = first["images"]
    mismatch, cmps = measure(engine, task, result, seed)
    if mismatch is None:
        return [first, *cmps], [verdict]
    found = mismatch_finding(mismatch, max_drop)
    if verdict.id == "evaluation.degradation" and found.severity in ("error", "warning"):
        # the emulated model's diagnosis does not explain this drop: say where to look
        verdict.evidence["explained_by"] = found.id
        verdict.recommendation = (
            "The device's drop is real, and the device does not do what the emulation does "
            f"({found.id}): find that difference first; the diagnosis of the emulated model "
            "explains only the emulated drop."
        )
    return [first, *cmps], [verdict, found]
