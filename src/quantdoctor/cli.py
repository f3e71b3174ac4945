"""The `quantdoctor` command: parse, call the API, print, exit code (2 on bad input)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import QuantdoctorError
from .files import NotSaved, WriteError

if TYPE_CHECKING:
    from .config import DoctorConfig
    from .report import Finding, Report

app = typer.Typer(
    help="Find out why a network lost accuracy when quantized, with measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)

DEBUG = typer.Option("--debug", help="Show full tracebacks on errors.")


def _fail(error: BaseException, debug: bool, note: str = "") -> None:
    if debug:
        raise error
    err.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True)
    if note:
        err.print(escape(note), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        out.print(f"quantdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


ConfigArg = Annotated[Path, typer.Argument(help="doctor.yaml")]
MaxDrop = Annotated[
    float | None,
    typer.Option(help="Accuracy drop budget in points (default: the config's max_drop)."),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(help="Override the target profile: hailo8 or int8."),
]
ReportDir = Annotated[
    Path | None,
    typer.Option(help="Where findings.json goes (default: the config's report.dir)."),
]


Limit = Annotated[
    int | None,
    typer.Option(help="Evaluate on a seeded sample of this many evaluation images."),
]
FailOn = Annotated[
    str | None,
    typer.Option(
        help="Exit 1 (for CI pipelines) when a finding is an error (error), an error or a "
        "warning (warning), or when the quantized model loses more than max_drop with "
        "significance (degradation)."
    ),
]
FAIL_ON = ("error", "warning", "degradation")
ProfileOpt = Annotated[
    bool,
    typer.Option("--profile", help="Print where the time and memory went: wall time and peak "
                 "memory per step, model passes by context (also in findings.json, profile)."),
]
NoCache = Annotated[
    bool,
    typer.Option("--no-cache", help="Do not use the cache across runs (decoded images, "
                 "ranges, outputs; see QUANTDOCTOR_CACHE in the README)."),
]


ExecutorOpt = Annotated[
    str | None,
    typer.Option(help="Where the work runs: local (default) or ray (the config's "
                 "executor.address, default auto; needs pip install 'quantdoctor[ray]')."),
]


def with_executor(cfg: DoctorConfig, executor: str | None) -> DoctorConfig:
    """The config with ``executor.type`` set from ``--executor`` (checked: one sentence)."""
    if executor is None:
        return cfg
    if executor not in ("local", "ray"):
        raise QuantdoctorError(f"--executor {executor!r} is unknown; use local or ray")
    return cfg.model_copy(
        update={"executor": cfg.executor.model_copy(update={"type": executor})}
    )


def _cache_off(no_cache: bool) -> None:
    if no_cache:  # read by the engine (engine/disk_cache.py)
        os.environ["QUANTDOCTOR_CACHE"] = "off"


def _check_options(max_drop: float | None, limit: int | None, fail_on: str | None) -> None:
    """Values checked at the boundary: one sentence each."""
    if max_drop is not None and not max_drop >= 0:
        raise QuantdoctorError(f"--max-drop must be >= 0 accuracy points, got {max_drop}")
    if limit is not None and limit < 1:
        raise QuantdoctorError(f"--limit must be at least 1 image, got {limit}")
    if fail_on is not None and fail_on not in FAIL_ON:
        raise QuantdoctorError(f"--fail-on {fail_on!r} is unknown; use {', '.join(FAIL_ON)}")


def with_limit(cfg: DoctorConfig, limit: int | None) -> DoctorConfig:
    """The config with ``data.evaluation.limit`` set (a seeded sample, ``seed``)."""
    if limit is None or cfg.data.evaluation is None:
        return cfg
    ev = cfg.data.evaluation.model_copy(update={"limit": limit})
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"evaluation": ev})})


def failed_findings(report: Report, fail_on: str | None) -> list[Finding]:
    """The findings that make ``--fail-on`` exit 1."""
    if fail_on == "degradation":
        return [f for f in report.findings
                if f.id == "evaluation.degradation" and f.severity == "error"]
    levels = {"error": ("error",), "warning": ("error", "warning")}.get(fail_on or "", ())
    return [f for f in report.findings if f.severity in levels]


def _run(command: str, config: Path, max_drop: float | None, target: str | None,
         report_dir: Path | None, debug: bool, limit: int | None = None,
         fail_on: str | None = None, profile: bool = False,
         executor: str | None = None) -> None:
    from . import api
    from .config import load_config
    from .report.console import (
        RichProgress,
        print_evaluation,
        print_findings,
        print_profile,
        print_summary,
    )

    with _report_run(debug, report_dir) as where:
        _check_target(target)
        _check_options(max_drop, limit, fail_on)
        cfg = with_executor(with_limit(load_config(config), limit), executor)
        where.folder = report_dir or cfg.report.dir
        unsaved: NotSaved | None = None
        try:
            report = getattr(api, command)(
                cfg, progress=RichProgress(err), max_drop=max_drop, target=target,
                report_dir=report_dir,
            )
        except NotSaved as e:  # the disk filled up: print what was computed, then say so
            report, unsaved = e.result, e
    folder = where.folder
    if command == "diagnose":  # one screen: the details are in the report
        print_evaluation(report, out, compact=True)
        print_findings(report, out, problems_only=True)
        print_summary(report, out)
    else:
        print_evaluation(report, out)
        print_findings(report, out)
    if profile:
        print_profile(report, out)
    assert folder is not None
    if unsaved is not None:
        _fail(unsaved, debug)
    out.print(
        f"\nreport: {folder / 'index.html'}  (findings: {folder / 'findings.json'})",
        markup=False,
        soft_wrap=True,  # paths stay whole for copy and paste
    )
    failed = failed_findings(report, fail_on)
    if failed:
        err.print(f"--fail-on {fail_on}: {', '.join(f.id for f in failed)} (exit 1)",
                  markup=False)
        raise typer.Exit(1)


@dataclass
class _Where:
    """Where a command writes its report (known once the config is read)."""

    folder: Path | None
    started: float


@contextmanager
def _report_run(debug: bool, folder: Path | None) -> Iterator[_Where]:
    """Errors of a command that writes a report: bad input is one sentence and exit 2,
    Ctrl-C exit 130, a crash its traceback; each says where the finished steps are."""
    where = _Where(folder, time.time())
    try:
        yield where
    except QuantdoctorError as e:
        _fail(e, debug, _partial_note(where.folder, where.started))
    except KeyboardInterrupt:
        err.print(f"interrupted. {_partial_note(where.folder, where.started)}", markup=False)
        raise typer.Exit(130) from None
    except Exception:
        err.print(_partial_note(where.folder, where.started), markup=False)
        raise


def _check_target(target: str | None) -> None:
    if target is not None and target not in ("hailo8", "int8"):
        raise QuantdoctorError(f"--target {target!r} is unknown; use hailo8 or int8")


def _partial_note(folder: Path | None, started: float) -> str:
    """After a failure: where this run saved the steps it finished, if it saved any."""
    path = folder / "findings.json" if folder is not None else None
    if path is None or not path.is_file() or path.stat().st_mtime < started:
        return ""
    return f"The steps finished so far are in {folder / 'index.html'} and {path}."


@app.command()
def evaluate(
    config: ConfigArg,
    max_drop: MaxDrop = None,
    target: TargetOpt = None,
    report_dir: ReportDir = None,
    limit: Limit = None,
    fail_on: FailOn = None,
    no_cache: NoCache = False,
    profile: ProfileOpt = False,
    executor: ExecutorOpt = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """The three-way test: native, quantized and int8 against ground truth, with CIs."""
    _cache_off(no_cache)
    _run("evaluate", config, max_drop, target, report_dir, debug, limit, fail_on, profile,
         executor)


@app.command()
def diagnose(
    config: ConfigArg,
    max_drop: MaxDrop = None,
    target: TargetOpt = None,
    report_dir: ReportDir = None,
    limit: Limit = None,
    fail_on: FailOn = None,
    no_cache: NoCache = False,
    profile: ProfileOpt = False,
    executor: ExecutorOpt = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """The whole checklist: the float pipeline, then the three-way test; names the top
    suspect."""
    _cache_off(no_cache)
    _run("diagnose", config, max_drop, target, report_dir, debug, limit, fail_on, profile,
         executor)


@app.command()
def analyze(
    config: ConfigArg,
    max_drop: MaxDrop = None,
    target: TargetOpt = None,
    report_dir: ReportDir = None,
    limit: Limit = None,
    fail_on: FailOn = None,
    no_cache: NoCache = False,
    profile: ProfileOpt = False,
    executor: ExecutorOpt = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Only the per-layer analysis: noise per layer, ranges, weights, BatchNorm, concat
    outputs, activation functions."""
    _cache_off(no_cache)
    _run("analyze", config, max_drop, target, report_dir, debug, limit, fail_on, profile,
         executor)


@app.command()
def init(
    model: Annotated[Path, typer.Argument(help="The float ONNX model.")],
    images: Annotated[
        Path, typer.Option(help="Folder of labelled images (class sub-folders, or see --labels).")
    ],
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Classification: a 'filename,label' file. Detection: a folder of YOLO txt files "
            "or a COCO json (default: a labels/ folder beside images/)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write doctor.yaml here (default: print it)."),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="Calibration images (default: 64 of the --images)."),
    ] = None,
    class_names: Annotated[
        Path | None, typer.Option(help="Class names, one per line (index = line number).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Evaluate on a seeded sample of this many images.")
    ] = None,
    target: Annotated[str, typer.Option(help="Target profile: hailo8 or int8.")] = "hailo8",
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure",
            help="Score the common input normalizations on labelled images (default) or decide "
            "from the graph alone.",
        ),
    ] = True,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the -o file.")] = False,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Write a commented doctor.yaml for MODEL that runs as is: task, decoder, preprocessing
    (normalization measured on your labelled images), data, target, recipe.

    quantdoctor init model.onnx --images val/ > doctor.yaml
    """
    from .report.console import RichProgress
    from .scaffold import check_writable, scaffold, write_config_file

    try:
        if output is not None:
            check_writable(output, force)  # before minutes of work, not after
        result = scaffold(
            model, images, labels, calibration=calibration, class_names=class_names,
            output=output, limit=limit, target=target, measure=measure,
            progress=RichProgress(err),
        )
        for note in result.notes:  # stderr: stdout holds only the YAML
            err.print(f"init: {note}", markup=False, highlight=False, soft_wrap=True)
        if output is None:
            sys.stdout.write(result.text)
            sys.stdout.flush()
        else:
            try:
                write_config_file(result.text, output, force)
            except WriteError as e:  # e.g. a full disk: the measured config is not lost
                sys.stdout.write(result.text)
                sys.stdout.flush()
                _fail(e, debug, "The config is printed above (stdout).")
            err.print(f"wrote {output}; next: quantdoctor diagnose {output}", markup=False,
                      highlight=False, soft_wrap=True)
    except QuantdoctorError as e:
        _fail(e, debug)
    except KeyboardInterrupt:
        err.print("interrupted; nothing was written")
        raise typer.Exit(130) from None


@app.command()
def export(
    config: ConfigArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o",
            help="The QDQ model to write, e.g. model.qdq.onnx; model.encodings.json and "
            "model.recipe.yaml go beside it.",
        ),
    ],
    target: TargetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Write the QDQ model that the int8 context runs (checked with onnx.checker), its
    encodings (scale, zero point, bits per quantized tensor) and the recipe.

    quantdoctor export doctor.yaml -o model.qdq.onnx
    """
    from .commands.export import export_model
    from .config import load_config
    from .report.console import RichProgress

    try:
        result = export_model(
            load_config(config), output, force, target=target, progress=RichProgress(err)
        )
    except QuantdoctorError as e:
        _fail(e, debug)  # checked before any work: nothing was written
        return
    except KeyboardInterrupt:
        err.print("interrupted; nothing was written")
        raise typer.Exit(130) from None
    plural = {"activation": "activations", "weight": "weights", "bias": "biases"}
    kinds = ", ".join(
        f"{n} {k if n == 1 else plural.get(k, k)}" for k, n in result.by_kind.items()
    )
    bits = ", ".join(f"{n} at {b} bits" for b, n in result.by_bits.items())
    for line in (
        f"wrote {result.model}  (the QDQ model of the int8 context; onnx.checker passed)",
        f"wrote {result.encodings}  ({result.tensors} quantized tensors: {kinds}; {bits})",
        f"wrote {result.recipe}  (the recipe and target {result.target})",
        *(f"note: {n}" for n in result.notes),
        f"target: {result.target}; verify with `quantdoctor evaluate {config}` (its int8 "
        "context runs this same model)",
    ):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def fix(
    config: ConfigArg,
    max_drop: MaxDrop = None,
    max_evaluations: Annotated[
        int, typer.Option(help="Candidate remedies to evaluate at most (on the search images).")
    ] = 12,
    max_16bit_macs: Annotated[
        float,
        typer.Option("--max-16bit-macs", help="Largest fraction of MACs allowed at 16 bits."),
    ] = 1.0,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The fixed config (default: <config>.fixed.yaml)."),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(help="Also export the fixed recipe's QDQ model here (as `export` does)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    calibrate_from_evaluation: Annotated[
        bool,
        typer.Option(help="Allow re-calibrating on (search) evaluation images when the "
                     "calibration set is the problem."),
    ] = False,
    target: TargetOpt = None,
    report_dir: ReportDir = None,
    limit: Limit = None,
    no_cache: NoCache = False,
    executor: ExecutorOpt = None,
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """Diagnose, then try the remedies of the causes found, cheapest and most promising
    first, until the quantized model is within the budget; confirm on held-out images.

    Exit codes: 0 budget met on the held-out images, 1 not met (the best recipe is still
    written), 2 bad input, 3 the float pipeline is wrong (nothing tuned).

    quantdoctor fix doctor.yaml --max-drop 0.5 -o doctor.fixed.yaml
    """
    from .commands.export import check_outputs, sidecar_paths
    from .commands.fix import check_budget
    from .commands.fix import fix as run_fix
    from .config import load_config
    from .report.console import RichProgress, print_fix
    from .report.findings import no_negative_zero

    _cache_off(no_cache)
    with _report_run(debug, report_dir) as where:
        _check_target(target)
        _check_options(None, limit, None)  # the budget: check_budget, below
        cfg = with_executor(with_limit(load_config(config), limit), executor)
        where.folder = report_dir or cfg.report.dir
        check_budget(cfg.max_drop if max_drop is None else max_drop, max_16bit_macs,
                     max_evaluations)
        fixed_path = output or config.with_name(config.stem + ".fixed.yaml")
        # before minutes of work, not after
        check_outputs([fixed_path], force, protected=[config, cfg.model],
                      example=config.stem + ".fixed.yaml")
        if export is not None:
            check_outputs([export, *sidecar_paths(export)], force, protected=[config, cfg.model])
        unsaved: NotSaved | None = None
        try:
            result, _ = run_fix(
                cfg, max_drop=max_drop, max_evaluations=max_evaluations,
                max_16bit_macs=max_16bit_macs, output=fixed_path, export=export, force=force,
                calibrate_from_evaluation=calibrate_from_evaluation, target=target,
                progress=RichProgress(err), report_dir=report_dir,
                on_step=lambda s: err.print(
                    no_negative_zero(
                        f"fix step {s.index}: {s.remedy} → {s.value:.2f} ({s.delta:+.2f}, "
                        f"95% CI {s.delta_ci95[0]:+.2f} … {s.delta_ci95[1]:+.2f}) "
                        f"{'accepted' if s.accepted else 'rejected'}: {s.reason}"
                    ),
                    markup=False, highlight=False, soft_wrap=True,
                ),
            )
        except NotSaved as e:  # the search is done: print it, then say what was not written
            result, unsaved = e.result, e
    folder = where.folder
    print_fix(result.to_dict(), out)
    if unsaved is not None:
        _fail(unsaved, debug)
    if result.fixed_config:
        out.print(f"wrote {result.fixed_config}", markup=False, highlight=False, soft_wrap=True)
    if result.exported:
        out.print(f"exported {result.exported.get('model')}", markup=False, soft_wrap=True)
    assert folder is not None
    out.print(f"report: {folder / 'index.html'}  (findings: {folder / 'findings.json'})",
              markup=False, soft_wrap=True)
    raise typer.Exit({"met": 0, "not_met": 1, "pipeline": 3}.get(result.status, 1))


@app.command()
def demo(
    folder: Annotated[
        Path, typer.Option("--dir", help="Where the demo's model, images, config and report go.")
    ] = Path("quantdoctor-demo"),
    mistake: Annotated[
        str,
        typer.Option(
            help="The mistake to inject: double_normalization, single_calibration_image or none."
        ),
    ] = "double_normalization",
    debug: Annotated[bool, DEBUG] = False,
) -> None:
    """The whole checklist offline on built-in data: a small CNN trained on scikit-learn's
    digits, the digits as PNG files, one classic mistake injected into the pipeline.

    quantdoctor demo --dir quantdoctor-demo --mistake double_normalization
    """
    from .demo import MISTAKES, prepare_demo

    try:
        config = prepare_demo(folder, mistake)
    except QuantdoctorError as e:
        _fail(e, debug)
        return
    except OSError as e:  # e.g. no permission, disk full
        _fail(QuantdoctorError(f"cannot write the demo into {folder}: {e}"), debug)
        return
    out.print(
        f"demo: injected mistake {mistake} ({MISTAKES[mistake]}); model, images and config in "
        f"{folder}/",
        markup=False,
        highlight=False,
        soft_wrap=True,  # paths stay whole for copy and paste
    )
    _run("diagnose", config, None, None, None, debug)  # exactly `quantdoctor diagnose <config>`
    report = config.parent / "report"  # the demo config's report.dir
    out.print(
        f"demo: report in {report}/ (open {report / 'index.html'}); edit {config} and rerun "
        f"`quantdoctor diagnose {config}`",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:
    try:
        app()
    except QuantdoctorError as e:  # raised outside a command body
        if "--debug" in sys.argv:
            raise
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
