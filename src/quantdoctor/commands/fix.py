"""``quantdoctor fix``: from the diagnosis to a recipe that meets the accuracy budget, proven
on held-out images.

1. ``diagnose`` names the causes. A wrong float pipeline (suspect 1) is not tuned away: the
   pipeline change is reported and nothing else is done.
2. The causes become candidate remedies (:func:`candidates`), each with the gain its finding
   measured and a cost; the most promising and cheapest go first.
3. The labelled images are split, seeded, into a *search* half and a *confirmation* half.
   A candidate is accepted on the search half only when it is a significant gain over the
   recipe so far (paired test) or brings the drop within the budget without losing
   accuracy. The search stops when the budget is met or the evaluations are spent.
4. The final recipe is measured once on the confirmation half: that number, with its CI, is
   the result (the search half's number is never reported as the result).

>>> result = fix(load_config("doctor.yaml"), max_drop=0.5)        # doctest: +SKIP
>>> result.status, result.confirmed["drop"]                        # doctest: +SKIP
('met', 0.3)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..checks.evaluation import compare, score_context
from ..config import DoctorConfig, parse_config
from ..engine import Engine
from ..errors import ConfigError, DataError, QuantdoctorError
from ..graph.macs import layer_macs
from ..progress import Progress
from ..quant import resolve_target
from ..quant.remedies import REMEDIES
from ..report import Finding, Report
from ..tasks import Task
from ..train import torch_available

#: The context measured during the search: ONNX Runtime's integer kernels (the fast path).
CONTEXT = "int8"
SEARCH_SPLIT = "fix.search"
CONFIRM_SPLIT = "fix.confirm"
#: Evaluations of candidates on the search half, by default.
MAX_EVALUATIONS = 12
#: A gain counts when the paired test's p is below this and the CI excludes 0.
ALPHA = 0.05


@dataclass
class Candidate:
    """A remedy to try: recipe lines (and config changes), why, its expected gain and cost."""

    label: str
    steps: list[dict[str, Any]]
    because: str
    expected_gain: float | None = None
    #: 0 cheap (ranges, float edits), 1 bias correction, 2 16-bit layers, 3 AdaRound,
    #: 4 fine-tuning
    cost: int = 0
    config_changes: dict[str, Any] = field(default_factory=dict)
    layers_16bit: tuple[str, ...] = ()
    #: calibrate on (a sample of) the search images instead of the calibration set
    calibrate_from_evaluation: bool = False


@dataclass
class FixStep:
    """One candidate tried on the search half."""

    index: int
    remedy: str
    because: str
    recipe: list[str]
    value: float
    ci95: list[float]
    delta: float
    delta_ci95: list[float]
    p_value: float
    drop_vs_native: float
    seconds: float
    macs_16bit: float
    accepted: bool
    reason: str


@dataclass
class FixResult:
    """What ``fix`` did; serialised as the ``fix`` section of findings.json."""

    status: str  # met | not_met | pipeline | no_labels
    max_drop: float
    metric: str = ""
    search_images: int = 0
    confirm_images: int = 0
    native_search: float | None = None
    baseline_search: float | None = None
    steps: list[FixStep] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    confirmed: dict[str, Any] | None = None
    recipe: list[str] = field(default_factory=list)
    config_changes: dict[str, Any] = field(default_factory=dict)
    macs_16bit: float = 0.0
    evaluations: int = 0
    seconds: float = 0.0
    message: str = ""
    fixed_config: str | None = None
    exported: dict[str, Any] | None = None
    calibrate_from_evaluation: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- candidates --------------------------------------------------------------------------


def _lines(finding: Finding) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A finding's recipe lines split into recipe commands and config changes."""
    steps, changes = [], {}
    for line in finding.recipe:
        parsed = yaml.safe_load(line.strip().removeprefix("- "))
        if not isinstance(parsed, dict) or len(parsed) != 1:
            continue
        key = next(iter(parsed))
        (steps.append(parsed) if key in REMEDIES else changes.update(parsed))
    return steps, changes


def _gain(finding: Finding, key: str = "remedy_metric") -> float | None:
    m = finding.evidence.get(key)
    return float(m["gain"]) if isinstance(m, dict) and m.get("gain") is not None else None


def candidates(
    report: Report, engine: Engine, calibrate_from_evaluation: bool = False
) -> list[Candidate]:
    """Remedies for the causes the diagnosis found (suspect 4 and the whole-model
    sensitivities), most promising and cheapest first. Only what the target allows. The
    calibration set is the user's to fix; with ``calibrate_from_evaluation`` re-calibrating
    on (search) evaluation images is tried first."""
    target = engine.target
    out: list[Candidate] = []
    if calibrate_from_evaluation:
        out.append(Candidate("calibrate from evaluation images", [], "--calibrate-from-evaluation",
                             None, -1, calibrate_from_evaluation=True))
    for f in report.findings:
        if f.severity not in ("error", "warning"):
            continue
        steps, changes = _lines(f)
        if f.id == "layers.weight_range_imbalance":
            if target.allows_per_channel_weights and not target.weights.per_channel:
                profile = target.name if engine.imported is None else "int8"
                per_channel = {"profile": profile, "weights": {"per_channel": True}}
                out.append(Candidate(
                    "per-channel weights", [], f.id, _gain(f, "per_channel_metric"),
                    config_changes={"target": per_channel},
                ))
            out.append(Candidate("equalization", [{"equalization": {}}], f.id,
                                 _gain(f, "equalization_metric")))
            out.append(Candidate("bias correction", [{"bias_correction": {}}], f.id, None, 1))
        elif f.id == "layers.wide_range":
            if steps:
                out.append(Candidate("activation clipping (suggested ranges)", steps, f.id,
                                     _gain(f)))
            out.append(Candidate("mse calibration", [{"calibration": {"method": "mse"}}], f.id))
        elif f.id in ("layers.low_snr", "layers.concat_output") and steps:
            layers = tuple(
                name for s in steps if "quantization_param" in s
                for name in s["quantization_param"]["layers"]
            )
            label = "16-bit " + ("Concat output" if f.id == "layers.concat_output" else "layers")
            out.append(Candidate(label, steps, f.id, _gain(f), 2, layers_16bit=layers))
        elif f.id == "quantization.weights_sensitive":
            out.append(Candidate("bias correction", [{"bias_correction": {}}], f.id, None, 1))
            out.append(Candidate("weights clipping (mse)",
                                 [{"weights_clipping": {"layers": ["*"], "mode": "mse"}}], f.id))
        elif f.id == "quantization.activations_sensitive":
            out.append(Candidate("mse calibration", [{"calibration": {"method": "mse"}}], f.id))
        elif f.suspect == 4 and steps:
            out.append(Candidate(f.id.split(".")[-1], steps, f.id, _gain(f)))
    out += gradient_candidates(report)
    # one candidate per remedy (the first cause that asked for it), best expected gain first
    unique: dict[str, Candidate] = {}
    for c in out:
        unique.setdefault(c.label, c)
    # a gain the diagnosis measured first (largest first), then the unmeasured by cost
    return sorted(
        unique.values(),
        key=lambda c: (
            c.cost >= 0 and not (c.expected_gain and c.expected_gain > 0),
            c.cost if not c.expected_gain else 0,
            -(c.expected_gain or 0.0),
            c.cost,
        ),
    )


#: Findings of quantization error (suspect 4, whole-model sensitivities) that the gradient
#: remedies address when nothing cheaper has brought the drop within the budget.
GRADIENT_CAUSES = (
    "quantization.weights_sensitive",
    "quantization.activations_sensitive",
    "layers.weight_range_imbalance",
    "layers.low_snr",
    "layers.wide_range",
    "layers.bn_missing",
)


def imported_conflict(engine: Engine, cand: Candidate) -> str | None:
    """Why a candidate cannot apply to a quantized_model's quantization, or None: its ranges
    are the file's (no re-calibration), its weight scales were computed for its weights (no
    equalization)."""
    if engine.imported is None:
        return None
    commands = {k for step in cand.steps for k in step}
    if cand.calibrate_from_evaluation or "calibration" in commands:
        return "the ranges come from quantized_model (no re-calibration)"
    if "equalization" in commands:
        return "it would change the weights quantized_model's scales were computed for"
    return None


def gradient_remedies_available() -> bool:
    """Whether ``adaround`` and ``finetune`` can run (the ``[train]`` extra: torch)."""
    return torch_available()


def gradient_candidates(report: Report) -> list[Candidate]:
    """AdaRound, then fine-tuning: the most expensive remedies, last; tried when a
    quantization cause is found and torch is installed (else ``fix`` says they were not)."""
    cause = next(
        (f.id for f in report.findings
         if f.severity in ("error", "warning") and (f.id in GRADIENT_CAUSES or f.suspect == 4)),
        None,
    )
    if cause is None or not gradient_remedies_available():
        return []
    return [
        Candidate("adaround", [{"adaround": {}}], cause, None, 3),
        Candidate("finetune", [{"finetune": {}}], cause, None, 4),
    ]


# --- the search --------------------------------------------------------------------------


class MacCounter:
    """The fraction of the model's MACs that run at 16 bits under a set of layers."""

    def __init__(self, engine: Engine) -> None:
        self.macs = layer_macs(engine.float_model)
        self.total = max(sum(self.macs.values()), 1)

    def fraction(self, engine: Engine) -> float:
        plan = engine.plan()
        at16 = sum(
            self.macs.get(layer.name, 0)
            for layer in engine.layers
            if max(plan.layer_precision(layer) or (8, 8)) >= 16
        )
        return at16 / self.total


def _split(engine: Engine, seed: int) -> tuple[int, int]:
    """Disjoint, seeded search and confirmation halves of the labelled evaluation images."""
    images = engine.images("evaluation")
    if images.labels is None and images.boxes is None:
        raise DataError("fix needs labelled evaluation images (data.evaluation.labels)")
    n = len(images)
    if n < 20:
        raise DataError(
            f"fix needs at least 20 labelled evaluation images to search and confirm on "
            f"disjoint halves; data.evaluation has {n}"
        )
    order = np.random.default_rng(seed + 7919).permutation(n)
    half = n // 2
    if not engine.has_split(SEARCH_SPLIT):
        engine.add_split(SEARCH_SPLIT, images.subset(np.sort(order[:half]).tolist()))
        engine.add_split(CONFIRM_SPLIT, images.subset(np.sort(order[half:]).tolist()))
    return half, n - half


def _recipe_text(steps: list[dict[str, Any]]) -> list[str]:
    return [yaml.safe_dump(s, default_flow_style=True, width=10_000).strip() for s in steps]


@dataclass
class _State:
    engine: Engine
    scores: Any
    value: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    calibrate_from_evaluation: bool = False


def _sibling(
    base: Engine,
    steps: list[dict[str, Any]],
    changes: dict[str, Any],
    calibrate_from_evaluation: bool = False,
) -> Engine:
    """The base engine with ``steps`` appended to its recipe and ``changes`` to its config
    (e.g. per-channel weights), sharing its images and caches; with
    ``calibrate_from_evaluation`` its calibration images are a seeded sample of the search
    images (never the confirmation images)."""
    if not changes:
        sibling = base.with_recipe(steps)
    else:
        raw = base.config.model_dump(mode="json", exclude={"source"})
        raw.update(changes)
        config = parse_config(raw).model_copy(update={"source": base.config.source})
        sibling = Engine(config, base.progress, resolve_target(config.target),
                         native_model=base.native_model)
        base.share_caches(sibling)
        sibling = sibling.with_recipe(steps) if steps else sibling
    if calibrate_from_evaluation:
        search = base.images(SEARCH_SPLIT)
        size = min(sibling.config.calibration.size, len(search))
        pick = np.sort(np.random.default_rng(base.config.seed).choice(len(search), size, False))
        sibling = sibling.with_calibration_images(search.subset(pick.tolist()))
    return sibling


def search(
    engine: Engine,
    task: Task,
    native_task: Task,
    report: Report,
    *,
    max_drop: float,
    max_evaluations: int = MAX_EVALUATIONS,
    max_16bit_macs: float = 1.0,
    calibrate_from_evaluation: bool = False,
    seed: int = 0,
    on_step: Callable[[FixResult], None] | None = None,
) -> tuple[FixResult, _State]:
    """Try the candidates on the search half (see the module docstring)."""
    started = time.perf_counter()
    n_search, n_confirm = _split(engine, seed)
    native_scores, native = score_context(engine, native_task, "native", seed, SEARCH_SPLIT)
    base_scores, base = score_context(engine, task, CONTEXT, seed, SEARCH_SPLIT)
    result = FixResult(
        "not_met", max_drop, native.metric, n_search, n_confirm, native.value, base.value
    )
    state = _State(engine, base_scores, base.value)
    macs = MacCounter(engine)
    result.evaluations = 1

    def within_budget(scores: Any) -> bool:
        """The drop's upper 95% bound on the search half is within the budget: a point
        estimate just below it would often fail on the confirmation half, so the search
        goes on for margin (still accepting only significant gains)."""
        cmp = compare("native", native_scores, "current", scores, seed)
        return -cmp["ci95"][0] <= max_drop

    for cand in candidates(report, engine, calibrate_from_evaluation):
        if within_budget(state.scores):
            break
        conflict = imported_conflict(engine, cand)
        if conflict:
            result.skipped.append({"remedy": cand.label, "reason": conflict})
            continue
        if result.evaluations >= max_evaluations:
            result.skipped.append({"remedy": cand.label, "reason": "max evaluations reached"})
            continue
        t0 = time.perf_counter()
        from_eval = state.calibrate_from_evaluation or cand.calibrate_from_evaluation
        sibling = _sibling(engine, state.steps + cand.steps,
                           {**state.changes, **cand.config_changes}, from_eval)
        fraction = macs.fraction(sibling)
        if fraction > max_16bit_macs + 1e-12:
            result.skipped.append({
                "remedy": cand.label,
                "reason": f"{100 * fraction:.1f}% of MACs at 16 bits exceeds --max-16bit-macs "
                          f"{100 * max_16bit_macs:.1f}%",
            })
            continue
        scores, summary = score_context(sibling, task, CONTEXT, seed, SEARCH_SPLIT)
        result.evaluations += 1
        cmp = compare("current", state.scores, cand.label, scores, seed)
        significant = cmp["p_value"] < ALPHA and cmp["ci95"][0] > 0
        # reaching the budget counts once: the step that crosses it (never a no-gain step
        # taken after the point estimate is already within it)
        reaches = (
            native.value - summary.value <= max_drop < native.value - state.value
            and summary.value >= state.value
        )
        accepted = significant or reaches
        reason = (
            "significant gain" if significant
            else "reaches the budget" if reaches
            else f"gain not significant (p = {cmp['p_value']:.2g})" if cmp["difference"] > 0
            else "no gain"
        )
        result.steps.append(FixStep(
            len(result.steps) + 1, cand.label, cand.because, _recipe_text(cand.steps),
            summary.value, list(summary.ci95), cmp["difference"], list(cmp["ci95"]),
            cmp["p_value"], native.value - summary.value, time.perf_counter() - t0, fraction,
            accepted, reason,
        ))
        if accepted:
            state = _State(sibling, scores, summary.value, state.steps + cand.steps,
                           {**state.changes, **cand.config_changes}, from_eval)
            result.calibrate_from_evaluation = from_eval
        _record(result, state, macs, started)
        if on_step is not None:
            on_step(result)
    _record(result, state, macs, started)
    return result, state


def _record(result: FixResult, state: _State, macs: MacCounter, started: float) -> None:
    """The recipe so far into the result (after every step, for the saved report)."""
    result.recipe = _recipe_text(state.steps)
    result.config_changes = state.changes
    result.macs_16bit = macs.fraction(state.engine)
    result.seconds = time.perf_counter() - started


def confirm(result: FixResult, state: _State, task: Task, native_task: Task, seed: int) -> None:
    """Measure the final recipe once on the confirmation half: the result."""
    native_scores, native = score_context(state.engine, native_task, "native", seed,
                                          CONFIRM_SPLIT)
    scores, summary = score_context(state.engine, task, CONTEXT, seed, CONFIRM_SPLIT)
    cmp = compare("native", native_scores, "fixed", scores, seed)
    drop = -cmp["difference"]
    result.confirmed = {
        "context": CONTEXT,
        "metric": summary.metric,
        "n": summary.n,
        "native": native.value,
        "native_ci95": list(native.ci95),
        "value": summary.value,
        "ci95": list(summary.ci95),
        "drop": drop,
        "drop_ci95": [-cmp["ci95"][1], -cmp["ci95"][0]],
        "p_value": cmp["p_value"],
        "test": cmp["test"],
    }
    result.status = "met" if drop <= result.max_drop else "not_met"


# --- outputs -----------------------------------------------------------------------------


def fixed_config_text(
    config: DoctorConfig, result: FixResult, output: Path, target: str | None = None
) -> str:
    """The user's config with the winning recipe, commented with what each step bought. Its
    paths stay as the user wrote them when it lies beside the config, else they are absolute
    (so that it runs as is from where it is written)."""
    source = config.source
    raw = (yaml.safe_load(source.read_text(encoding="utf-8")) if source else None) or {}
    if source is None or output.resolve().parent != source.parent:
        resolved = config.model_dump(mode="json", exclude={"source"})
        raw["model"] = resolved["model"]
        raw["data"] = {
            k: {kk: vv for kk, vv in v.items() if vv is not None}
            for k, v in resolved["data"].items()
            if v is not None
        }
        raw["report"] = resolved["report"]
        for key in ("native_postprocess", "postprocess"):
            if key in raw and isinstance(resolved.get(key), dict) and raw[key].get("function"):
                raw[key]["function"] = resolved[key]["function"]
    if target is not None:  # the command line's --target
        raw["target"] = target
    raw.update(result.config_changes)
    if result.calibrate_from_evaluation:
        ev = config.data.evaluation
        raw.setdefault("data", {})["calibration"] = {
            "path": str(ev.path), "limit": config.calibration.size}
    recipe = list(raw.get("recipe") or [])
    recipe += [yaml.safe_load(line) for line in result.recipe]
    raw["recipe"] = recipe
    header = [
        f"# written by quantdoctor fix from {source.name if source else 'the config'}",
        f"# budget: max_drop {result.max_drop:g} {result.metric} points; status: {result.status}",
    ]
    if result.confirmed:
        c = result.confirmed
        header.append(
            f"# confirmed on {c['n']} held-out images: {c['metric']} {c['value']:.2f} "
            f"(95% CI {c['ci95'][0]:.2f} … {c['ci95'][1]:.2f}), native {c['native']:.2f}, "
            f"drop {c['drop']:.2f} (95% CI {c['drop_ci95'][0]:.2f} … {c['drop_ci95'][1]:.2f})"
        )
    for step in result.steps:
        if step.accepted:
            header.append(
                f"# step {step.index} {step.remedy} ({'; '.join(step.recipe) or 'config'}): "
                f"{step.delta:+.2f} (95% CI {step.delta_ci95[0]:+.2f} … "
                f"{step.delta_ci95[1]:+.2f}) on the search images, {step.reason}"
            )
    if result.calibrate_from_evaluation:
        header.append("# data.calibration: fix calibrated on a sample of the search half of the "
                      "evaluation images; this file samples the whole evaluation folder")
    if result.macs_16bit:
        header.append(f"# MACs at 16 bits: {100 * result.macs_16bit:.1f}%")
    body = yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=100)
    return "\n".join(header) + "\n" + body


def pipeline_message(report: Report) -> str:
    """What to change in the float pipeline (suspect 1 errors), with the measured numbers."""
    lines = ["The float pipeline is wrong (suspect 1): not a quantization problem, so fix does "
             "not tune quantization. Change this first, then run fix again:"]
    for f in report.ranked():
        if f.suspect == 1 and f.severity == "error":
            lines.append(f"- {f.id}: {f.title}. {f.recommendation}")
            lines += [f"    {line}" for line in f.recipe]
    return "\n".join(lines)


def not_met_message(report: Report, calibrated_from_evaluation: bool) -> str:
    """What is left when the budget is not met: the calibration set's problems (the user's
    to fix, with their measured cost) and the remedies this version cannot try."""
    parts = ["The budget is not met with the remedies tried; the best recipe is written."]
    calib = [f for f in report.ranked() if f.suspect == 2 and f.severity in ("error", "warning")]
    if calib and not calibrated_from_evaluation:
        parts.append(
            "The calibration set is a likely cause, which fix leaves to you: "
            + " ".join(f"{f.id}: {f.title}." for f in calib[:3])
            + " Fix the calibration set, or let fix calibrate on evaluation images "
            "(--calibrate-from-evaluation)."
        )
    if not gradient_remedies_available():
        parts.append("AdaRound and fine-tuning (gradient remedies on the trainable copy) were "
                     "not tried: they need PyTorch, pip install 'quantdoctor[train]'.")
    else:
        parts.append("Beyond these: quantization-aware training with your labels "
                     "(quantdoctor.train, README 'Quantization-aware training'), or 16-bit "
                     "layers (--max-16bit-macs).")
    return " ".join(parts)


def check_budget(max_drop: float, max_16bit_macs: float, max_evaluations: int) -> None:
    """Values checked at the boundary: one sentence each."""
    if not max_drop >= 0:
        raise ConfigError(f"--max-drop {max_drop} is unreachable: give a drop of 0 or more "
                          "metric points")
    if not 0 <= max_16bit_macs <= 1:
        raise ConfigError(f"--max-16bit-macs {max_16bit_macs} is outside [0, 1]: give the "
                          "largest fraction of MACs that may run at 16 bits, e.g. 0.1")
    if max_evaluations < 1:
        raise ConfigError(f"--max-evaluations {max_evaluations}: give at least 1")


def fix(
    config: DoctorConfig,
    *,
    max_drop: float | None = None,
    max_evaluations: int = MAX_EVALUATIONS,
    max_16bit_macs: float = 1.0,
    output: Path | None = None,
    export: Path | None = None,
    force: bool = False,
    calibrate_from_evaluation: bool = False,
    target: str | None = None,
    progress: Progress | None = None,
    report_dir: Path | None = None,
    on_step: Callable[[FixStep], None] | None = None,
) -> tuple[FixResult, Report]:
    """Diagnose, search, confirm, write ``output`` (the fixed config) and, with ``export``,
    the QDQ model of the fixed recipe. findings.json gains the ``fix`` section after every
    step; ``on_step`` hears of each step as it is decided (the CLI prints a line)."""
    from .. import api

    budget = config.max_drop if max_drop is None else max_drop
    check_budget(budget, max_16bit_macs, max_evaluations)
    started = time.perf_counter()
    run = api.diagnose_run(
        config, progress=progress, max_drop=budget, target=target, report_dir=report_dir
    )
    try:
        result, report = _fix_after_diagnosis(
            run, budget, max_evaluations, max_16bit_macs, output, export, force,
            calibrate_from_evaluation, target, on_step, started,
        )
    finally:
        run.close()
    run.finish(result)  # NotSaved, carrying the result, when a file could not be written
    return result, report


def _fix_after_diagnosis(
    run: Any,
    budget: float,
    max_evaluations: int,
    max_16bit_macs: float,
    output: Path | None,
    export: Path | None,
    force: bool,
    calibrate_from_evaluation: bool,
    target: str | None,
    on_step: Callable[[FixStep], None] | None,
    started: float,
) -> tuple[FixResult, Report]:
    config = run.config  # with the target override
    report = run.report
    if report.reliability:
        result = FixResult("pipeline", budget, message=pipeline_message(report))
        report.fix = result.to_dict()
        run.save()
        return result, report

    told = 0

    def save(partial: FixResult) -> None:
        nonlocal told
        report.fix = partial.to_dict()
        run.save()
        if on_step is not None:
            for step in partial.steps[told:]:
                on_step(step)
            told = len(partial.steps)

    native_task = run.native_task or run.task
    result, state = run.step("fix", lambda: search(
        run.engine, run.task, native_task, report, max_drop=budget,
        max_evaluations=max_evaluations, max_16bit_macs=max_16bit_macs,
        calibrate_from_evaluation=calibrate_from_evaluation, seed=config.seed, on_step=save,
    ))
    confirm(result, state, run.task, native_task, config.seed)
    result.seconds = time.perf_counter() - started
    if not result.steps and result.status == "met":
        result.message = "nothing to fix: the quantized model is within the budget"
    elif result.status == "not_met":
        result.message = not_met_message(report, calibrate_from_evaluation)
    unsaved: QuantdoctorError | None = None  # minutes of search are not lost with a file
    if output is not None:
        from ..files import write_atomic

        try:
            write_atomic(output, fixed_config_text(config, result, output, target))
            result.fixed_config = str(output)
        except QuantdoctorError as err:
            unsaved = err
    if export is not None and output is not None and unsaved is None:
        from ..config import load_config
        from .export import export_model

        try:
            result.exported = export_model(load_config(output), export, force=force).to_json()
        except QuantdoctorError as err:
            unsaved = err
    save(result)
    if unsaved is not None:
        run.write_error = unsaved
    return result, report
