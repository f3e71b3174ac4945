"""Suspect 1: is the float pipeline right? (DESIGN §4 step 1)

If the model is not accurate in float emulation of the deployed pipeline, the loss is not a
quantization problem. Every check here measures on real labelled images; a suspected
mistake becomes an error only when the corrected pipeline is *significantly* better on the
same images (paired test), so a model that really wants 0–255 input raises no false alarm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import NormalizationCommand, PreprocessConfig
from ..engine import Engine, InputVariant
from ..graph.inspect import output_activations
from ..report import Finding
from ..stats import bootstrap_ci, holm, snr_db_between
from ..tasks import Task, make_task
from .evaluation import compare
from .start_nodes import OutputComparison, start_nodes_check

#: Labelled images used for the hypothesis tests (a seeded sample of the evaluation set).
HYPOTHESIS_IMAGES = 200
#: Bootstrap resamples for a hypothesis (a screening test: broken pipelines differ by tens of
#: points; the exact McNemar test is used for classification anyway).
HYPOTHESIS_BOOTSTRAP = 300
#: Images used for the input statistics.
STATS_IMAGES = 64
#: DESIGN §4: a normalized input has mean within about (-2, 5) and std within (0.1, 5).
MEAN_RANGE = (-2.0, 5.0)
STD_RANGE = (0.1, 5.0)
#: A typical deployed detection confidence threshold (for evidence, not for the metric).
DEPLOY_THRESHOLD = 0.3
#: native vs fp_optimized: below this output SNR the float transforms changed the model.
MIN_FP_SNR_DB = 40.0
_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class PipelineResult:
    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def has_error(self) -> bool:
        return any(f.severity == "error" for f in self.findings)


def _subset(engine: Engine, size: int, seed: int) -> str:
    """Register a seeded sample of the evaluation images as split ``pipeline``."""
    name = "pipeline"
    if name not in engine._splits:
        images = engine.images("evaluation")
        n = min(size, len(images))
        rng = np.random.default_rng(seed)
        engine.add_split(name, images.subset(np.sort(rng.choice(len(images), n, replace=False))))
    return name


# --- input statistics ----------------------------------------------------------------------------


def first_compute_input(engine: Engine) -> str | None:
    """The tensor entering the native model's first Conv/Gemm/MatMul."""
    return next(
        (n.input[0] for n in engine.native_model.graph.node if n.op_type in _COMPUTE_OPS), None
    )


def input_statistics(engine: Engine, split: str) -> dict[str, Any] | None:
    name = first_compute_input(engine)
    if name is None:
        return None
    images = engine.images(split).subset(range(min(STATS_IMAGES, len(engine.images(split)))))
    total = total_sq = None
    count = 0
    for batch in engine.capture("native", [name], images):
        x = batch[name].astype(np.float64)
        axis = 1 if x.ndim == 4 else x.ndim - 1
        x = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        total = x.sum(1) if total is None else total + x.sum(1)
        total_sq = (x**2).sum(1) if total_sq is None else total_sq + (x**2).sum(1)
        count += x.shape[1]
    assert total is not None and total_sq is not None
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    looks = "normalized"
    if np.median(std) > STD_RANGE[1] or np.median(np.abs(mean)) > MEAN_RANGE[1]:
        looks = "not normalized"
    elif np.median(std) < STD_RANGE[0]:
        looks = "normalized twice"
    return {
        "tensor": name,
        "channel_mean": mean.tolist(),
        "channel_std": std.tolist(),
        "expected_mean": list(MEAN_RANGE),
        "expected_std": list(STD_RANGE),
        "looks": looks,
        "images": len(images),
    }


# --- hypotheses about the preprocessing -----------------------------------------------------------


@dataclass(frozen=True)
class Hypothesis:
    variant: InputVariant
    finding: str  # the finding ID it proves when significantly better
    description: str


def _native_pre(engine: Engine) -> PreprocessConfig:
    """What the host feeds the native context, which the hypotheses vary: ``preprocess``, or
    with start_nodes ``native_preprocess`` (the full graph's input; the cut model's is the
    start-node check's)."""
    return engine.native_preprocessor.config


def _pre_key(engine: Engine) -> str:
    return "native_preprocess" if engine.start_cut is not None else "preprocess"


def _norms(engine: Engine) -> tuple[int, int]:
    pre = _native_pre(engine)
    host = int(pre.mean is not None or pre.std is not None)
    recipe = sum(isinstance(t, NormalizationCommand) for t in engine.native_transforms)
    return host, recipe


def _candidate_normalizations(engine: Engine) -> list[tuple[str, NormalizationCommand]]:
    """Common normalizations, in the units the host produces and the fed channel order."""
    pre = _native_pre(engine)
    unit = 255.0 * pre.scale  # what a white pixel becomes on the host
    imagenet_mean = np.array([0.485, 0.456, 0.406]) * unit
    imagenet_std = np.array([0.229, 0.224, 0.225]) * unit
    if pre.color == "bgr":
        imagenet_mean, imagenet_std = imagenet_mean[::-1], imagenet_std[::-1]
    half = unit / 2
    return [
        ("(x - 127.5) / 127.5 (TF style)", NormalizationCommand(mean=[half] * 3, std=[half] * 3)),
        (
            "ImageNet mean/std (torchvision style)",
            NormalizationCommand(mean=imagenet_mean.tolist(), std=imagenet_std.tolist()),
        ),
        ("x / 255", NormalizationCommand(mean=[0.0] * 3, std=[unit] * 3)),
    ]


def hypotheses(engine: Engine) -> list[Hypothesis]:
    """Alternatives to the declared pipeline worth testing on labelled images."""
    host, recipe = _norms(engine)
    transforms = tuple(engine.native_transforms)
    without_recipe_norm = tuple(t for t in transforms if not isinstance(t, NormalizationCommand))
    out: list[Hypothesis] = []
    if host + recipe >= 2:
        if host:
            out.append(
                Hypothesis(
                    InputVariant("without the host mean/std", host_normalization=False),
                    "pipeline.normalization_duplicated",
                    "the host's mean/std removed: the model (recipe) normalizes already",
                )
            )
        if recipe:
            out.append(
                Hypothesis(
                    InputVariant(
                        "without the recipe normalization", transforms=without_recipe_norm
                    ),
                    "pipeline.normalization_duplicated",
                    "the recipe's normalization removed: the host normalizes already",
                )
            )
    elif host + recipe == 1:
        out.append(
            Hypothesis(
                InputVariant(
                    "no normalization", host_normalization=False, transforms=without_recipe_norm
                ),
                "pipeline.normalization_duplicated",
                "the declared normalization removed: the model normalizes inside already",
            )
        )
        pre = _native_pre(engine)
        again = (
            next(t for t in transforms if isinstance(t, NormalizationCommand))
            if recipe
            else NormalizationCommand(mean=pre.mean or [0.0] * 3, std=pre.std or [1.0] * 3)
        )
        out.append(
            Hypothesis(
                InputVariant("normalization applied twice", transforms=(*transforms, again)),
                "pipeline.normalization_missing",
                "the declared normalization applied a second time",
            )
        )
    else:
        for label, cmd in _candidate_normalizations(engine):
            out.append(
                Hypothesis(
                    InputVariant(f"with {label}", transforms=(*transforms, cmd)),
                    "pipeline.normalization_missing",
                    f"{label} added: the model expects normalized input",
                )
            )
    color = _native_pre(engine).color
    swapped = "rgb" if color == "bgr" else "bgr"
    out.append(
        Hypothesis(
            InputVariant(f"channel order {swapped.upper()}", color=swapped),
            "pipeline.channel_order",
            f"the channels fed in {swapped.upper()} order instead of "
            f"{color.upper()}",
        )
    )
    return out


def _fix_text(h: Hypothesis, key: str = "preprocess") -> tuple[str, list[str]]:
    """What to change; ``key``: the preprocessing the native context was fed (``preprocess``,
    or with start_nodes ``native_preprocess``)."""
    v = h.variant
    if h.finding == "pipeline.channel_order":
        return (
            f"Feed the model {v.color.upper()} ({key}.color: {v.color}) — or fold the "
            "conversion into the model with the recipe's input_conversion.",
            [f"{key}: {{color: {v.color}}}"],
        )
    if h.finding == "pipeline.normalization_duplicated":
        if not v.host_normalization:
            return (
                "Normalize once: remove mean/std from the host preprocessing (the model or "
                "the recipe already normalizes).",
                [f"{key}: {{mean: null, std: null}}"],
            )
        return (
            "Normalize once: drop the recipe's normalization command (the host already "
            "normalizes) — or keep it and remove mean/std from the host.",
            [],
        )
    cmd = next((t for t in (v.transforms or ()) if isinstance(t, NormalizationCommand)), None)
    if cmd is None:
        return ("Apply the model's normalization.", [])
    if key != "preprocess":  # the full graph's input: only the host feeds it
        line = f"{key}: {{mean: {_round(cmd.mean)}, std: {_round(cmd.std)}}}"
        return (f"The full graph expects normalized input: set {key}.mean/std.", [line])
    line = f"- normalization: {{mean: {_round(cmd.mean)}, std: {_round(cmd.std)}}}"
    where = "on the host (preprocess.mean/std) or as the first recipe command"
    return (f"Normalize the input as the model was trained: {where}.", [line])


def _round(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def test_hypotheses(
    engine: Engine, task: Task, split: str, seed: int
) -> tuple[list[dict[str, Any]], list[Finding]]:
    images = engine.images(split)
    declared = task.score(engine.outputs("native", split), images)
    rows: list[dict[str, Any]] = [
        {
            "variant": "declared",
            "metric": declared.metric,
            "value": declared.value,
        }
    ]
    found: list[tuple[float, Finding]] = []
    tested = [
        (h, scores, compare("declared", declared, h.variant.name, scores, seed,
                            HYPOTHESIS_BOOTSTRAP))
        for h in hypotheses(engine)
        for scores in [task.score(engine.outputs("native", split, variant=h.variant), images)]
    ]
    # several hypotheses are tested at once: significance after Holm's correction, and an
    # error (which marks the quantized results unreliable) only for a gain beyond max_drop
    adjusted = holm([cmp["p_value"] for _, _, cmp in tested])
    budget = engine.config.max_drop
    for (h, scores, cmp), p_holm in zip(tested, adjusted, strict=True):
        better = p_holm < 0.05 and cmp["ci95"][0] > 0
        rows.append(
            {
                "variant": h.variant.name,
                "value": scores.value,
                "difference": cmp["difference"],
                "ci95": cmp["ci95"],
                "p_value": cmp["p_value"],
                "p_holm": p_holm,
                "test": cmp["test"],
                "significantly_better": better,
            }
        )
        if better:
            text, recipe = _fix_text(h, _pre_key(engine))
            found.append(
                (
                    cmp["difference"],
                    Finding(
                        h.finding,
                        1,
                        "error" if cmp["difference"] > budget else "warning",
                        f"{h.description}: {declared.metric} {declared.value:.1f} → "
                        f"{scores.value:.1f} "
                        f"(+{cmp['difference']:.1f} points, 95% CI {cmp['ci95'][0]:.1f} … "
                        f"{cmp['ci95'][1]:.1f}, p = {cmp['p_value']:.2g}, Holm-adjusted "
                        f"{p_holm:.2g} over {len(tested)} hypotheses, {len(images)} images)",
                        {
                            "declared": declared.value,
                            "alternative": scores.value,
                            "variant": h.variant.name,
                            "difference": cmp["difference"],
                            "ci95": cmp["ci95"],
                            "p_value": cmp["p_value"],
                            "p_holm": p_holm,
                            "hypotheses_tested": len(tested),
                            "max_drop": budget,
                            "test": cmp["test"],
                            "n": len(images),
                        },
                        text,
                        recipe,
                    ),
                )
            )
    # Strongest evidence first: it becomes the top suspect. One finding per ID; the other
    # fixes that also work are listed in its evidence.
    best: dict[str, Finding] = {}
    for _, f in sorted(found, key=lambda t: -t[0]):
        if f.id in best:
            best[f.id].evidence.setdefault("also_better", []).append(
                {"variant": f.evidence["variant"], "value": f.evidence["alternative"]}
            )
        else:
            best[f.id] = f
    return rows, list(best.values())


# --- output activations ------------------------------------------------------------------------


def _score_values(task: Task, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    post = getattr(task, "post", None)
    if post is None:  # classification
        x = next(iter(outputs.values()))
        return x.reshape(len(x), -1)
    head = outputs.get(post.output or next(iter(outputs)))
    if head is None or head.ndim != 3 or post.type == "python":
        return None
    if post.type == "yolov8":
        return head[:, 4:, :]
    return head[:, :, 4:]


def output_activation_check(engine: Engine, task: Task, split: str, seed: int) -> Finding | None:
    config = engine.config
    post = config.postprocess
    if post.activation == "none":
        return None
    outputs = engine.outputs("fp_optimized", split)
    graph = sorted({a for o in outputs for a in output_activations(engine.float_model, o)})
    values = _score_values(task, outputs)
    in_unit = values is not None and float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    if not graph and not in_unit:
        return None
    images = engine.images(split)
    declared = task.score(outputs, images)
    without = make_task(config, post.model_copy(update={"activation": "none"}))
    alt = without.score(outputs, images)
    cmp = compare("declared", declared, "without host activation", alt, seed, HYPOTHESIS_BOOTSTRAP)
    evidence: dict[str, Any] = {
        "host_activation": post.activation,
        "graph_activations": graph,
        "score_range": None if values is None else [float(values.min()), float(values.max())],
        "declared": declared.value,
        "without_host_activation": alt.value,
        "difference": cmp["difference"],
        "ci95": cmp["ci95"],
        "p_value": cmp["p_value"],
        "test": cmp["test"],
    }
    detections = getattr(declared, "detections", None)
    if detections is not None and values is not None:
        # mAP ranks detections and barely notices; a deployed confidence threshold does:
        # sigmoid(p) >= 0.5 for every p in [0, 1], so every anchor passes it.
        lowest = float(1 / (1 + np.exp(-values.min())))
        evidence["lowest_score_after_host_activation"] = (
            lowest**2 if post.type != "yolov8" else lowest
        )
        for name, sc in (("declared", declared), ("without_host_activation", alt)):
            dets = sc.detections  # type: ignore[attr-defined]
            evidence[f"detections_per_image_at_{DEPLOY_THRESHOLD}_{name}"] = float(
                np.mean([(d.scores >= DEPLOY_THRESHOLD).sum() for d in dets])
            )
    where = (
        f"the graph ends in {', '.join(graph)}" if graph else "the outputs already lie in [0, 1]"
    )
    certain = bool(graph) and in_unit  # an activation on probabilities is always a bug
    significant = cmp["p_value"] < 0.05 and cmp["ci95"][0] > 0
    severity = "error" if significant or (certain and detections is not None) else "warning"
    extra = ""
    if detections is not None and values is not None:
        extra = (
            f"; every score becomes >= {evidence['lowest_score_after_host_activation']:.2f}: "
            f"{evidence[f'detections_per_image_at_{DEPLOY_THRESHOLD}_declared']:.0f} detections "
            f"per image at confidence {DEPLOY_THRESHOLD} instead of "
            f"{evidence[f'detections_per_image_at_{DEPLOY_THRESHOLD}_without_host_activation']:.1f}"
        )
    return Finding(
        "pipeline.output_activation_duplicated",
        1,
        severity,
        f"{post.activation} applied twice: {where} (scores in "
        f"[{evidence['score_range'][0]:.2g}, {evidence['score_range'][1]:.2g}]) and the host "
        f"applies it again{extra}; {declared.metric} {declared.value:.1f} with it, "
        f"{alt.value:.1f} without",
        evidence,
        "Remove the host's activation (postprocess.activation: none), or cut the graph before "
        "its activation (end_nodes) and keep it on the host.",
        ["postprocess: {activation: none}"],
    )


# --- native vs fp_optimized, end-node cut ------------------------------------------------------


def fp_optimized_check(
    engine: Engine, task: Task, native_task: Task | None, split: str, seed: int
) -> list[Finding]:
    if engine.fp_is_native:
        return []
    images = engine.images(split)
    native_out = engine.outputs("native", split)
    fp_out = engine.outputs("fp_optimized", split)
    snr = {
        name: snr_db_between(native_out[name], fp_out[name])
        for name in fp_out
        if name in native_out and native_out[name].shape == fp_out[name].shape
    }
    n_task = native_task or task
    a = n_task.score(native_out, images)
    b = task.score(fp_out, images)
    cmp = compare("native", a, "fp_optimized", b, seed, HYPOTHESIS_BOOTSTRAP)
    # Significant and larger than the accuracy budget: float round-off in a folded transform
    # or a re-implemented decoder may shift the metric by a few hundredths, consistently.
    budget = engine.config.max_drop
    differs = (
        cmp["p_value"] < 0.05 and cmp["ci95"][1] < 0 and -cmp["difference"] > budget
    ) or cmp["agreement"] < 95.0
    low_snr = [n for n, v in snr.items() if v < MIN_FP_SNR_DB]
    evidence = {
        "output_snr_db": snr,
        "native": a.value,
        "fp_optimized": b.value,
        "difference": cmp["difference"],
        "ci95": cmp["ci95"],
        "p_value": cmp["p_value"],
        "test": cmp["test"],
        cmp["agreement_name"]: cmp["agreement"],
        "n": len(images),
        "end_nodes": list(engine.config.end_nodes),
        "transforms": [str(t) for t in engine.transforms],
    }
    cut = bool(engine.config.end_nodes)
    fid = "pipeline.end_nodes_mismatch" if cut else "pipeline.fp_optimized_mismatch"
    found: list[Finding] = []
    if engine.start_cut is not None:
        outputs = OutputComparison(
            native_out, fp_out, snr, a, b, cmp, comparable=not (cut and native_task is None)
        )
        start = start_nodes_check(engine, split, outputs)
        if start.severity != "ok" or not (cut or differs or low_snr):
            # an input that differs explains the outputs; one that matches, with nothing else
            # cut or changed, leaves nothing more to say
            return [start]
        found.append(start)
    if cut and native_task is None:
        return [
            *found,
            Finding(
                fid,
                1,
                "warning",
                "end_nodes cut the model but there is no native_postprocess to decode the full "
                "graph: the cut cannot be checked against it",
                evidence,
                "Give native_postprocess (how the full graph's outputs are decoded) so that the "
                "cut "
                "model + host postprocess can be compared with the full graph.",
            )
        ]
    if not differs and not (low_snr and not cut):
        return [
            *found,
            Finding(
                fid,
                1,
                "ok",
                f"fp_optimized reproduces native: {a.metric} {a.value:.1f} vs {b.value:.1f}, "
                f"agreement {cmp['agreement']:.1f}%",
                evidence,
            )
        ]
    what = (
        "the cut model + host postprocess do not reproduce the full graph (the postprocess "
        "misses part of what was cut away)"
        if cut
        else "the recipe's float transforms change the model's outputs"
    )
    return [
        *found,
        Finding(
            fid,
            1,
            "error",
            f"{what}: {a.metric} {a.value:.1f} (native) vs {b.value:.1f} (fp_optimized), "
            f"agreement {cmp['agreement']:.1f}%",
            evidence,
            "Make the host postprocess do everything the cut removed (e.g. the activations and "
            "the concatenation after end_nodes), or move end_nodes."
            if cut
            else "Check the recipe's normalization / input_conversion against what the model "
            "expects.",
        )
    ]


def reference_check(engine: Engine, task: Task, seed: int) -> Finding | None:
    ref = engine.config.reference_accuracy
    if ref is None:
        return None
    images = engine.images("evaluation")
    scores = task.score(engine.outputs("native"), images)
    lo, hi = bootstrap_ci(
        np.arange(scores.n), scores.values_for, n_boot=scores.n_bootstrap, seed=seed
    )
    evidence = {"reference": ref, "native": scores.value, "ci95": [lo, hi], "n": scores.n}
    if lo <= ref <= hi or scores.value >= ref:
        return Finding(
            "pipeline.reference_accuracy",
            1,
            "ok",
            f"native {scores.metric} {scores.value:.1f} (95% CI {lo:.1f} … {hi:.1f}) "
            f"is consistent with the reference {ref:.1f}",
            evidence,
        )
    return Finding(
        "pipeline.reference_accuracy",
        1,
        "error" if ref - hi > 2.0 else "warning",
        f"native {scores.metric} {scores.value:.1f} (95% CI {lo:.1f} … {hi:.1f}) is below the "
        f"reference {ref:.1f}: the float pipeline does not reproduce the model's accuracy",
        evidence,
        "Before quantizing, make the float pipeline match the one the model was trained and "
        "evaluated with (resize, crop, normalization, channel order, postprocess).",
    )


def pipeline_checks(
    engine: Engine,
    task: Task,
    native_task: Task | None = None,
    seed: int = 0,
    images: int = HYPOTHESIS_IMAGES,
) -> PipelineResult:
    """Run every suspect-1 check. Findings with an error mean the quantized results are not a
    pure quantization issue."""
    split = _subset(engine, images, seed)
    result = PipelineResult()
    stats = input_statistics(engine, split)
    result.evidence["input_statistics"] = stats
    rows, found = test_hypotheses(engine, native_task or task, split, seed)
    result.evidence["hypotheses"] = rows
    result.findings.extend(found)
    if stats is not None and stats["looks"] != "normalized" and not found:
        result.findings.append(
            Finding(
                "pipeline.normalization_missing"
                if stats["looks"] == "not normalized"
                else "pipeline.normalization_duplicated",
                1,
                "info",
                f"The input of the first compute layer looks {stats['looks']} (median channel "
                f"std {np.median(stats['channel_std']):.3g}), but no other normalization does "
                "better on labelled images: the model evidently expects it this way",
                stats,
            )
        )
    act = output_activation_check(engine, task, split, seed)
    if act:
        result.findings.append(act)
    result.findings.extend(fp_optimized_check(engine, task, native_task, split, seed))
    ref = reference_check(engine, native_task or task, seed)
    if ref:
        result.findings.append(ref)
    for f in found:
        if stats is not None:
            f.evidence["input_statistics"] = {
                k: stats[k] for k in ("tensor", "channel_mean", "channel_std", "looks")
            }
    return result
