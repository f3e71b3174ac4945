"""The Python API; the CLI is a thin layer over it.

>>> import quantdoctor
>>> report = quantdoctor.evaluate(quantdoctor.load_config("doctor.yaml"))   # doctest: +SKIP
>>> report.contexts["native"].value, report.top_suspect.id                  # doctest: +SKIP
(88.8, 'evaluation.degradation')
"""

from __future__ import annotations

from pathlib import Path

from .checks.evaluation import EvaluationResult, three_way_test
from .config import DoctorConfig, TargetConfig
from .engine import Engine
from .errors import QuantdoctorError
from .progress import Progress
from .quant import resolve_target
from .report import Finding, Report
from .tasks import make_task


def _setup_findings(engine: Engine) -> list[Finding]:
    out = []
    for split, images in engine._splits.items():
        if images.failures:
            out.append(
                Finding(
                    "setup.unreadable_images",
                    0,
                    "warning",
                    f"{len(images.failures)} {split} image(s) could not be read and were skipped",
                    {"split": split, "files": [[str(p), e] for p, e in images.failures]},
                    "Fix or remove these files; results use only the readable images.",
                )
            )
    return out


def evaluate(
    config: DoctorConfig,
    *,
    progress: Progress | None = None,
    max_drop: float | None = None,
    target: str | None = None,
    report_dir: Path | None = None,
    write: bool = True,
) -> Report:
    """The three-way test: native, quantized (float emulation) and int8 (fused integer
    kernels) against ground truth. Writes ``<report.dir>/findings.json`` after each step.

    ``target`` replaces the config's target profile (``"hailo8"`` / ``"int8"``)."""
    if target is not None:
        config = config.model_copy(update={"target": TargetConfig(profile=target)})  # type: ignore[arg-type]
    folder = report_dir or config.report.dir
    report = Report(config=str(config.source) if config.source else "")
    save = (lambda: report.write_json(folder)) if write else (lambda: None)
    budget = config.max_drop if max_drop is None else max_drop

    engine = Engine(config, progress, resolve_target(config.target))
    task = make_task(config)
    images = engine.images("evaluation")
    report.setup = {
        "model": str(config.model),
        "input": {"name": engine.input.name, "shape": list(engine.input.shape)},
        "outputs": [o.name for o in engine.info.outputs],
        "target": engine.target.name,
        "target_description": engine.target.description,
        "evaluation_images": len(images),
        "calibration_images": config.calibration.size,
        "calibration_method": config.calibration.method,
        "layers": len(engine.layers),
    }
    report.steps["setup"] = "done"
    report.findings.extend(_setup_findings(engine))
    save()

    def on_context(partial: EvaluationResult) -> None:
        report.contexts = dict(partial.contexts)
        save()

    try:
        result = three_way_test(
            engine, task, max_drop=budget, seed=config.seed, on_context=on_context
        )
    except QuantdoctorError as err:
        report.steps["evaluation"] = f"failed: {err}"
        save()
        raise
    report.setup["calibration_images"] = len(engine.images("calibration"))
    report.findings = _setup_findings(engine) + result.findings
    report.contexts = result.contexts
    report.comparisons = result.comparisons
    report.steps["evaluation"] = "done"
    save()
    return report


__all__ = ["evaluate"]
