"""The Python API; the CLI is a thin layer over it.

>>> import quantdoctor
>>> cfg = quantdoctor.load_config("doctor.yaml")                       # doctest: +SKIP
>>> report = quantdoctor.diagnose(cfg)                                 # doctest: +SKIP
>>> report.top_suspect.id                                              # doctest: +SKIP
'pipeline.normalization_duplicated'
>>> quantdoctor.evaluate(cfg).contexts["int8"].value                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import yaml

from .checks.calibration import calibration_checks
from .checks.evaluation import EvaluationResult, three_way_test
from .checks.external import missing_outputs
from .checks.layers import layer_checks
from .checks.pipeline import pipeline_checks
from .config import DoctorConfig, TargetConfig
from .engine import Engine
from .errors import QuantdoctorError
from .files import NotSaved, WriteError
from .profile import StepProfiler
from .progress import Progress
from .quant import resolve_target
from .report import Finding, Report
from .report.folder import ReportFolder
from .report.html import write_html
from .tasks import Task, make_native_task, make_task

log = logging.getLogger(__name__)

#: What diagnose prints and stores when step 1 found an error.
UNRELIABLE = "not a pure quantization issue: the float pipeline itself is wrong (suspect 1)"


class _Run:
    """One command's run: the engine, the report, and saving after every step."""

    def __init__(
        self,
        config: DoctorConfig,
        progress: Progress | None,
        target: str | None,
        report_dir: Path | None,
        write: bool,
    ) -> None:
        if target is not None:
            config = config.model_copy(update={"target": TargetConfig(profile=target)})  # type: ignore[arg-type]
        self.config = config
        self.folder = report_dir or config.report.dir
        self.write = write
        self.report = Report(config=str(config.source) if config.source else "")
        self.guard = ReportFolder(self.folder)
        self.profiler = StepProfiler()
        #: the last save's failure, if it failed (cleared by a save that succeeds)
        self.write_error: QuantdoctorError | None = None
        if write:  # before any expensive work
            self.guard.check_writable()
            self.guard.lock()
        try:
            self.engine = Engine(config, progress, resolve_target(config.target))
        except BaseException:
            self.close()
            raise
        self.task: Task = make_task(config)
        self.native_task = make_native_task(config)
        #: brings conclusions drawn across steps up to date before each save
        self.conclude: Callable[[Report], None] | None = None

    def save(self, page: bool = True) -> None:
        """findings.json, then index.html from the same content (a failed page never costs
        the JSON: it is written first, and a page error is only logged). ``page=False``
        (within a step): the JSON only, the page follows at the step's end."""
        if self.conclude is not None:
            self.conclude(self.report)
        self.report.profile = {**self.profiler.summary(), "engine": self.engine.costs.to_dict()}
        self.report.recipe = {
            "commands": [
                yaml.safe_dump(
                    step.model_dump(mode="json"), default_flow_style=True, width=10_000,
                    sort_keys=False,
                ).strip()
                for step in self.config.recipe
            ],
            "applied": [r.to_dict() for r in self.engine.recipe_log],
        }
        done = sum(1 for status in self.report.steps.values() if status == "done")
        if self.write and self.guard.may_write(done):
            self.guard.before_write()
            try:
                self.report.write_json(self.folder)
            except WriteError as err:  # e.g. the disk filled up: go on, say so at the end
                if self.write_error is None:
                    log.warning("%s", err)
                self.write_error = err
                return
            self.write_error = None  # a later save wrote everything so far
            if not page:
                return
            try:
                write_html(self.report, self.folder)
            except Exception as e:  # a bug in the page must not lose a diagnosis
                log.warning("index.html not written: %s", e)

    def close(self) -> None:
        """Let other runs write into the report folder again."""
        self.guard.unlock()

    def finish(self, result: Any = None) -> None:
        """Close; if the last save failed, raise :class:`NotSaved` carrying ``result`` (the
        report by default), so that nothing computed is lost with the file."""
        self.close()
        if self.write_error is not None:
            raise NotSaved(self.report if result is None else result, self.write_error)

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run a step; on bad input, a crash or Ctrl-C keep what is done, record the
        failure, re-raise."""
        try:
            with self.profiler.measure(name):
                out = fn()
                self.engine.release_memory()
        except QuantdoctorError as err:
            self.report.steps[name] = f"failed: {err}"
            self.save()
            raise
        except KeyboardInterrupt:
            self.report.steps[name] = "failed: interrupted"
            self.save()
            raise
        except Exception as err:  # a bug: still keep the earlier steps and say where it broke
            self.report.steps[name] = f"failed: {type(err).__name__}: {err}"
            self.save()
            raise
        self.report.steps[name] = "done"
        self.save()
        return out

    def setup(self) -> None:
        """Step 0: model, data and labels load; one pass of the float model runs."""
        engine, config = self.engine, self.config
        images = engine.images("evaluation")
        self.report.setup = {
            "model": str(config.model),
            "input": {"name": engine.input.name, "shape": list(engine.input.shape)},
            "outputs": [o.name for o in engine.info.outputs],
            "task": config.task,
            "target": engine.target.name,
            "target_description": engine.target.description,
            "evaluation_images": len(images),
            "calibration_method": config.calibration.method,
            "layers": len(engine.layers),
            "data_notes": list(engine.data_notes),
        }
        if engine.imported is not None:  # what the other tool's quantization follows
            self.report.setup["quantized_model"] = next(
                r.summary for r in engine.recipe_log if r.command == "quantized_model"
            )
        self.report.findings.extend(self._setup_findings())
        if config.external is not None:  # checked here: bad dumps fail before the slow steps
            external = engine.external("evaluation")
            self.report.setup["external"] = external.summary()
            missing = missing_outputs(external)
            if missing is not None:
                self.report.findings.append(missing)

    def _setup_findings(self) -> list[Finding]:
        out = []
        for split in ("evaluation", "calibration"):
            images = self.engine._splits.get(split)
            if images is not None and images.failures:
                out.append(Finding(
                    "setup.unreadable_images", 0, "warning",
                    f"{len(images.failures)} {split} image(s) could not be read and were skipped",
                    {"split": split, "files": [[str(p), e] for p, e in images.failures]},
                    "Fix or remove these files; results use only the readable images.",
                ))
        return out

    def three_way(self, max_drop: float | None) -> EvaluationResult:
        budget = self.config.max_drop if max_drop is None else max_drop

        def on_context(partial: EvaluationResult) -> None:
            self.report.contexts = dict(partial.contexts)
            self.save(page=False)

        result = three_way_test(
            self.engine, self.task, max_drop=budget, seed=self.config.seed,
            on_context=on_context, native_task=self.native_task,
        )
        self.report.contexts = result.contexts
        self.report.comparisons = result.comparisons
        self.report.findings.extend(result.findings)
        self.report.setup["calibration_images"] = len(self.engine.images("calibration"))
        if not any(f.id == "setup.unreadable_images" for f in self.report.findings):
            self.report.findings.extend(self._setup_findings())
        return result


def evaluate(
    config: DoctorConfig,
    *,
    progress: Progress | None = None,
    max_drop: float | None = None,
    target: str | None = None,
    report_dir: Path | None = None,
    write: bool = True,
) -> Report:
    """The three-way test (DESIGN §4 step 3): native, quantized (float emulation) and int8
    (fused integer kernels) against ground truth. Writes ``<report.dir>/findings.json``
    after each step. ``target`` replaces the config's target profile."""
    run = _Run(config, progress, target, report_dir, write)
    try:
        run.step("setup", run.setup)
        run.step("evaluation", lambda: run.three_way(max_drop))
    finally:
        run.close()
    run.finish()
    return run.report


def _layers(run: _Run, max_drop: float | None) -> None:
    result = layer_checks(
        run.engine, run.task, max_drop=max_drop, seed=run.config.seed,
    )
    run.report.findings.extend(result.findings)
    run.report.evidence["layers"] = result.evidence


def analyze(
    config: DoctorConfig,
    *,
    progress: Progress | None = None,
    max_drop: float | None = None,
    target: str | None = None,
    report_dir: Path | None = None,
    write: bool = True,
) -> Report:
    """Only the per-layer analysis (DESIGN §4 step 4): per-layer SNR, weights vs activations,
    ranges, weight imbalance, BatchNorm, concatenated outputs, activation functions."""
    run = _Run(config, progress, target, report_dir, write)
    try:
        run.step("setup", run.setup)
        run.step("layers", lambda: _layers(run, max_drop))
    finally:
        run.close()
    run.finish()
    return run.report


def _conclude(report: Report) -> None:
    """Across steps: an error in the float pipeline marks the three-way results unreliable;
    a degradation's remedy is its causes, not 'run diagnose'."""
    if report.reliability:
        for f in report.findings:
            if f.suspect == 3:
                f.evidence["unreliable"] = UNRELIABLE
    causes = [f.id for f in report.ranked()
              if f.severity in ("error", "warning") and f.suspect != 3]
    for f in report.findings:
        # (a device's drop that the emulation does not reproduce keeps its own advice)
        if f.id == "evaluation.degradation" and "explained_by" not in f.evidence:
            f.recommendation = (
                "The drop is real (not noise); the checklist ranks its likely causes first: "
                + ", ".join(dict.fromkeys(causes)) + "."
                if causes
                else "The drop is real (not noise), and no check named a cause: try the "
                "remedies of the layer findings (16-bit layers, per-channel weights) or "
                "more/better calibration images."
            )


def diagnose(
    config: DoctorConfig,
    *,
    progress: Progress | None = None,
    max_drop: float | None = None,
    target: str | None = None,
    report_dir: Path | None = None,
    write: bool = True,
    skip: Collection[str] = (),
) -> Report:
    """The checklist (DESIGN §4): setup, the float pipeline (suspect 1), the calibration set
    (suspect 2), the three-way test (suspect 3), the layers (suspect 4). findings.json is
    written after each step; when step 1 finds an error the quantized results are marked
    unreliable. ``skip`` leaves out steps by name ("calibration", "layers")."""
    run = diagnose_run(
        config, progress=progress, max_drop=max_drop, target=target, report_dir=report_dir,
        write=write, skip=skip,
    )
    run.finish()
    return run.report


def diagnose_run(
    config: DoctorConfig,
    *,
    progress: Progress | None = None,
    max_drop: float | None = None,
    target: str | None = None,
    report_dir: Path | None = None,
    write: bool = True,
    skip: Collection[str] = (),
) -> _Run:
    """:func:`diagnose`, returning the run (its engine keeps the decoded images and the
    outputs computed, for commands that go on from the diagnosis, such as ``fix``). The run
    still holds its report folder: ``run.close()`` when done (an error closes it)."""
    run = _Run(config, progress, target, report_dir, write)
    try:
        return _diagnose_steps(run, config, max_drop, skip)
    except BaseException:
        run.close()
        raise


def _diagnose_steps(
    run: _Run, config: DoctorConfig, max_drop: float | None, skip: Collection[str]
) -> _Run:
    run.conclude = _conclude
    report = run.report
    run.step("setup", run.setup)

    def pipeline() -> None:
        result = pipeline_checks(run.engine, run.task, run.native_task, seed=config.seed)
        report.findings.extend(result.findings)
        report.evidence["pipeline"] = result.evidence
        if result.has_error:
            report.reliability = UNRELIABLE

    run.step("pipeline", pipeline)

    def calibration() -> None:
        result = calibration_checks(run.engine, run.task, max_drop=max_drop, seed=config.seed)
        report.findings.extend(result.findings)
        report.evidence["calibration"] = result.evidence

    if "calibration" not in skip:
        run.step("calibration", calibration)
    run.step("evaluation", lambda: run.three_way(max_drop))
    if "layers" not in skip:
        run.step("layers", lambda: _layers(run, max_drop))
    return run
