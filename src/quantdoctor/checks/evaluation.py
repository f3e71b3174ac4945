"""Suspect 3: the three-way test (DESIGN §4 step 3).

Each context against ground truth with a 95% CI, the paired difference to ``native`` with a
paired-bootstrap CI and an exact McNemar test, and the float-vs-quantized agreement reported
as what it is: a two-way number that says nothing about accuracy by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine import Engine
from ..report import ContextResult, Finding
from ..stats import bootstrap_ci, mcnemar_exact, paired_bootstrap
from ..tasks import TaskScores
from ..tasks.classification import ClassificationTask

#: Below this many evaluation images a 95% CI of an accuracy is wider than ±7 points.
MIN_IMAGES = 200
#: With fewer images than this no conclusion about a difference is possible at all.
MIN_IMAGES_ERROR = 30


@dataclass
class EvaluationResult:
    contexts: dict[str, ContextResult] = field(default_factory=dict)
    scores: dict[str, TaskScores] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def score_context(
    engine: Engine, task: ClassificationTask, context: str, seed: int = 0
) -> tuple[TaskScores, ContextResult]:
    images = engine.images("evaluation")
    scores = task.score(engine.outputs(context), images.labels, images.metas, images.paths)
    ci = bootstrap_ci(scores.per_image, scores.values_for, seed=seed)
    return scores, ContextResult(scores.metric, scores.value, ci, len(scores.per_image))


def compare(
    a_name: str, a: TaskScores, b_name: str, b: TaskScores, seed: int = 0
) -> dict[str, Any]:
    """``b`` against ``a`` on the same images: difference (b - a), CI, McNemar, agreement."""
    diff = paired_bootstrap(
        a.values_for, b.values_for, len(a.per_image), b.value - a.value, seed=seed
    )
    test = mcnemar_exact(a.per_image, b.per_image)
    return {
        "reference": a_name,
        "context": b_name,
        "metric": a.metric,
        "difference": diff.difference,
        "ci95": list(diff.ci95),
        "n": diff.n,
        "test": "McNemar exact (paired, per image)",
        "p_value": test.p_value,
        "only_reference_correct": test.only_a,
        "only_context_correct": test.only_b,
        "top1_agreement": float((a.prediction == b.prediction).mean() * 100.0),
        "top1_agreement_note": (
            "two-way: how often both predict the same class; it says nothing about accuracy "
            "against ground truth"
        ),
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
        "only_reference_correct": cmp["only_reference_correct"],
        "only_context_correct": cmp["only_context_correct"],
        "top1_agreement": cmp["top1_agreement"],
    }
    if drop >= 0:
        change = f"drop {drop:.2f} points (95% CI {lo_drop:.2f} … {hi_drop:.2f}"
    else:
        change = f"gain {-drop:.2f} points (95% CI {-hi_drop:.2f} … {-lo_drop:.2f}"
    numbers = f"{metric} {change}, McNemar p = {p:.2g}, n = {cmp['n']})"
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
    if n >= MIN_IMAGES:
        return None
    half = (ci[1] - ci[0]) / 2
    severity = "error" if n < MIN_IMAGES_ERROR else "warning"
    what = "one image" if n == 1 else f"{n} images"
    return Finding(
        "evaluation.too_few_images",
        3,
        severity,
        f"The test uses {what}: accuracy is only known to ±{half:.1f} points",
        {"n": n, "ci95_half_width": half, "recommended_min": MIN_IMAGES},
        f"Evaluate on at least {MIN_IMAGES} labelled images (ideally 1000+): with few images a "
        "drop from quantization cannot be told apart from chance, and one image judged by eye "
        "proves nothing.",
    )


def three_way_test(
    engine: Engine,
    task: ClassificationTask,
    contexts: Sequence[str] = ("native", "quantized", "int8"),
    max_drop: float = 1.0,
    seed: int = 0,
    on_context: Callable[[EvaluationResult], None] | None = None,
) -> EvaluationResult:
    """Score every context against ground truth and compare the quantized ones to native.

    ``on_context`` is called after each context so that results are saved as they come."""
    result = EvaluationResult()
    for ctx in contexts:
        scores, summary = score_context(engine, task, ctx, seed)
        result.scores[ctx], result.contexts[ctx] = scores, summary
        if on_context:
            on_context(result)
    native = result.scores.get("native")
    if native is None:
        return result
    few = too_few_images(len(native.per_image), result.contexts["native"].ci95)
    if few:
        result.findings.append(few)
    for ctx in contexts:
        if ctx == "native":
            continue
        cmp = compare("native", native, ctx, result.scores[ctx], seed)
        result.comparisons.append(cmp)
        result.findings.append(_verdict(cmp, max_drop, engine.target.name))
    if "quantized" in result.scores and "int8" in result.scores:
        result.comparisons.append(
            compare("quantized", result.scores["quantized"], "int8", result.scores["int8"], seed)
        )
    return result
