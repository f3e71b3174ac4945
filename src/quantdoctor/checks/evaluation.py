"""Suspect 3: the three-way test (DESIGN §4 step 3).

Each context against ground truth with a 95% CI, the paired difference to ``native`` with a
paired-bootstrap CI and an exact McNemar test, and the float-vs-quantized agreement reported
as what it is: a two-way number that says nothing about accuracy by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import Engine
from ..report import ContextResult, Finding
from ..stats import bootstrap_ci, paired_bootstrap
from ..tasks import Task, TaskScores

#: A metric known only to ± this many points (95% CI half-width) cannot show a typical
#: quantization drop of 1-3 points: too few images.
MAX_CI_HALF_WIDTH = 3.0
#: With fewer images than this no conclusion about a difference is possible at all.
MIN_IMAGES_ERROR = 30
#: What to ask for (a 90% top-1 on 1000 images is known to about ±2 points).
RECOMMENDED_IMAGES = 1000


@dataclass
class EvaluationResult:
    contexts: dict[str, ContextResult] = field(default_factory=dict)
    scores: dict[str, TaskScores] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def score_context(
    engine: Engine, task: Task, context: str, seed: int = 0, split: str = "evaluation", **kw: Any
) -> tuple[TaskScores, ContextResult]:
    """A context's metric on a split with its bootstrap CI. ``kw`` goes to engine.outputs
    (plan, ranges)."""
    images = engine.images(split)
    scores = task.score(engine.outputs(context, split, **kw), images)
    ci = bootstrap_ci(np.arange(scores.n), scores.values_for, n_boot=scores.n_bootstrap, seed=seed)
    return scores, ContextResult(scores.metric, scores.value, ci, scores.n)


def compare(
    a_name: str,
    a: TaskScores,
    b_name: str,
    b: TaskScores,
    seed: int = 0,
    n_boot: int | None = None,
) -> dict[str, Any]:
    """``b`` against ``a`` on the same images: difference (b - a), paired-bootstrap CI, an
    exact paired test where the task has one, and the two-way agreement."""
    n_boot = n_boot or a.n_bootstrap
    diff = paired_bootstrap(
        a.values_for, b.values_for, a.n, b.value - a.value, n_boot=n_boot, seed=seed
    )
    test = a.paired_test(b) or {
        "test": f"paired bootstrap over images ({n_boot} resamples)",
        "p_value": diff.p_value,
    }
    name, agreement, note = a.agreement(b)
    return {
        "reference": a_name,
        "context": b_name,
        "metric": a.metric,
        "difference": diff.difference,
        "ci95": list(diff.ci95),
        "n": diff.n,
        **test,
        "agreement_name": name,
        "agreement": agreement,
        "agreement_note": note,
        name: agreement,
    }


def _verdict(cmp: dict[str, Any], max_drop: float, target: str) -> Finding:
    drop = -cmp["difference"]
    lo_drop, hi_drop = -cmp["ci95"][1], -cmp["ci95"][0]
    metric, ctx, p = cmp["metric"], cmp["context"], cmp["p_value"]
    evidence = {
        "context": ctx,
        "reference": cmp["reference"],
        "target": target,
        "drop_points": drop,
        "drop_ci95": [lo_drop, hi_drop],
        "p_value": p,
        "test": cmp["test"],
        "max_drop": max_drop,
        "n": cmp["n"],
        cmp["agreement_name"]: cmp["agreement"],
    }
    for key in ("only_reference_correct", "only_context_correct"):
        if key in cmp:
            evidence[key] = cmp[key]
    if drop >= 0:
        change = f"drop {drop:.2f} points (95% CI {lo_drop:.2f} … {hi_drop:.2f}"
    else:
        change = f"gain {-drop:.2f} points (95% CI {-hi_drop:.2f} … {-lo_drop:.2f}"
    test = "McNemar" if cmp["test"].startswith("McNemar") else "bootstrap"
    numbers = f"{metric} {change}, {test} p = {p:.2g}, n = {cmp['n']})"
    significant = p < 0.05 and lo_drop > 0
    if significant:
        severity = "error" if drop > max_drop else ("warning" if hi_drop > max_drop else "info")
        title = f"{ctx} ({target}) loses accuracy: {numbers}"
        rec = (
            "The drop is real (not noise). Run `quantdoctor diagnose` to find which part of the "
            "pipeline, calibration set or which layers cause it."
            if severity != "info"
            else "A small but real drop, within the budget (max_drop)."
        )
        return Finding("evaluation.degradation", 3, severity, title, evidence, rec)
    severity = "ok" if hi_drop <= max_drop else "warning"
    title = f"{ctx} ({target}) is within noise of native: {numbers}"
    rec = (
        "No significant difference."
        if severity == "ok"
        else f"No significant difference, but a drop up to {hi_drop:.2f} points (> max_drop "
        f"{max_drop}) cannot be excluded: evaluate on more images."
    )
    return Finding("evaluation.within_noise", 3, severity, title, evidence, rec)


def too_few_images(n: int, ci: tuple[float, float]) -> Finding | None:
    """Judged by what matters, the CI width: a metric known to ±5 points cannot show a 2-point
    drop, whatever the image count."""
    half = (ci[1] - ci[0]) / 2
    if n >= MIN_IMAGES_ERROR and half <= MAX_CI_HALF_WIDTH:
        return None
    severity = "error" if n < MIN_IMAGES_ERROR else "warning"
    what = "one image" if n == 1 else f"{n} images"
    return Finding(
        "evaluation.too_few_images",
        3,
        severity,
        f"The test uses {what}: the metric is only known to ±{half:.1f} points",
        {"n": n, "ci95_half_width": half, "max_ci95_half_width": MAX_CI_HALF_WIDTH},
        f"Evaluate on more labelled images (ideally {RECOMMENDED_IMAGES}+): with few images a "
        "drop from quantization cannot be told apart from chance, and one image judged by eye "
        "proves nothing.",
    )


def default_contexts(engine: Engine) -> list[str]:
    """native, fp_optimized (when the recipe makes it differ from native), quantized, int8,
    and external when the config reads outputs from files."""
    return (
        ["native"] + ([] if engine.fp_is_native else ["fp_optimized"]) + ["quantized", "int8"]
        + (["external"] if engine.config.external is not None else [])
    )


def three_way_test(
    engine: Engine,
    task: Task,
    contexts: Sequence[str] | None = None,
    max_drop: float = 1.0,
    seed: int = 0,
    on_context: Callable[[EvaluationResult], None] | None = None,
    native_task: Task | None = None,
) -> EvaluationResult:
    """Score every context against ground truth; compare the quantized contexts with their
    float counterpart (fp_optimized, which is native when the recipe has no float
    transforms).

    ``native_task`` decodes the full graph's outputs when end_nodes cut the deployed model;
    ``on_context`` is called after each context so that results are saved as they come."""
    from .external import external_tests, score_external  # it imports compare from here

    contexts = list(contexts or default_contexts(engine))
    result = EvaluationResult()
    for ctx in contexts:
        ctx_task = native_task if ctx == "native" and native_task is not None else task
        if ctx == "external":  # on the images that have external outputs
            scores, summary = score_external(engine, task, seed)
        else:
            scores, summary = score_context(engine, ctx_task, ctx, seed)
        result.scores[ctx], result.contexts[ctx] = scores, summary
        if on_context:
            on_context(result)
    reference = "fp_optimized" if "fp_optimized" in result.scores else "native"
    ref = result.scores.get(reference)
    if ref is None:
        return result
    few = too_few_images(ref.n, result.contexts[reference].ci95)
    if few:
        result.findings.append(few)
    if reference == "fp_optimized" and "native" in result.scores:
        # the pipeline check judges this one; here it is only reported
        result.comparisons.append(
            compare("native", result.scores["native"], "fp_optimized", ref, seed)
        )
    for ctx in ("quantized", "int8"):
        if ctx in result.scores:
            cmp = compare(reference, ref, ctx, result.scores[ctx], seed)
            result.comparisons.append(cmp)
            result.findings.append(_verdict(cmp, max_drop, engine.target.name))
    if "quantized" in result.scores and "int8" in result.scores:
        result.comparisons.append(
            compare("quantized", result.scores["quantized"], "int8", result.scores["int8"], seed)
        )
    if "external" in result.scores:
        comparisons, findings = external_tests(
            engine, task, result, reference, max_drop, seed, native_task
        )
        result.comparisons.extend(comparisons)
        result.findings.extend(findings)
    return result
