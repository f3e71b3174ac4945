"""The terminal view: rich tables and progress bars (on stderr, so stdout stays clean)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..progress import Advance
from .checklist import checklist
from .findings import Report, no_negative_zero

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}


class PlainProgress:
    """Progress as plain lines, for output that is not a terminal (CI logs, a file): a task
    that runs longer than ``first`` seconds prints its step and percentage, then again at
    most every ``every`` seconds, and a last line when it ends; short tasks print nothing."""

    def __init__(self, console: Console, first: float = 5.0, every: float = 10.0) -> None:
        self.console = console
        self.first = first
        self.every = every

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        started = time.monotonic()
        state = {"done": 0, "next": started + self.first, "printed": False}

        def line(text: str) -> None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
            state["printed"] = True

        def advance(n: int = 1) -> None:
            state["done"] += n
            now = time.monotonic()
            if now >= state["next"]:
                pct = f"{100 * state['done'] / total:.0f}% " if total else ""
                line(f"{description}: {pct}({state['done']}/{total}), {now - started:.0f} s")
                state["next"] = now + self.every

        yield advance
        if state["printed"]:
            line(f"{description}: done ({state['done']}/{total}) in "
                 f"{time.monotonic() - started:.0f} s")


class RichProgress:
    """Progress bars for long work when the terminal is interactive; plain lines
    (:class:`PlainProgress`) otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._plain = None if console.is_terminal else PlainProgress(console)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        if self._plain is not None:
            with self._plain.task(description, total) as advance:
                yield advance
            return
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)


def _fmt(x: float, metric: str, sign: bool = False) -> str:
    """Metrics are in percent (mAP too): 2 decimals."""
    text = f"{x:+.2f}" if sign else f"{x:.2f}"
    return text.replace("-0.00", "+0.00" if sign else "0.00")  # no negative zero


def _fmt_ci(ci: tuple[float, float] | list[float], metric: str) -> str:
    return f"{_fmt(ci[0], metric)} … {_fmt(ci[1], metric)}"


def _print_import_note(report: Report, console: Console) -> None:
    """quantized_model: whose quantization the quantized contexts run, and its conventions."""
    imported = report.setup.get("quantized_model")
    if not imported:
        return
    left = imported.get("not_reproduced_count", 0)
    console.print(
        f"quantized_model: {imported['path']} ({imported['conventions']})"
        + (f"; {left} of its quantized tensors not reproduced" if left else ""),
        markup=False, highlight=False, soft_wrap=True,
    )


def print_evaluation(report: Report, console: Console, compact: bool = False) -> None:
    """The three-way test; ``compact``: one table, each context's paired difference to its
    reference beside its value (diagnose's one-screen summary)."""
    if not report.contexts:
        return
    _print_import_note(report, console)
    if compact:
        _print_compact_evaluation(report, console)
        _print_external_note(report, console)
        return
    table = Table(title="Three-way test: each context against ground truth", title_justify="left")
    for col in ("context", "metric", "value", "95% CI", "images"):
        table.add_column(col, justify="right" if col in ("value", "images") else "left")
    for name, ctx in report.contexts.items():
        m = ctx.metric
        table.add_row(name, m, _fmt(ctx.value, m), _fmt_ci(ctx.ci95, m), str(ctx.n))
    console.print(table)
    if report.comparisons:
        cmp_table = Table(title="Paired differences (same images)", title_justify="left")
        first = report.comparisons[0]
        agree = (
            "top-1 agreement*"
            if first["agreement_name"] == "top1_agreement"
            else "det. F1 agreement*"
        )
        for col in ("context", "vs", "Δ", "95% CI", "p", agree):
            cmp_table.add_column(col, justify="left" if col in ("context", "vs") else "right")
        for c in report.comparisons:
            cmp_table.add_row(
                c["context"],
                c["reference"],
                _fmt(c["difference"], c["metric"], sign=True),
                _fmt_ci(c["ci95"], c["metric"]),
                f"{c['p_value']:.3g}",
                f"{c['agreement']:.2f}%",
            )
        console.print(cmp_table)
        console.print(f"[dim]p: {first['test']}. * {first['agreement_note']}.[/dim]")
    _print_external_note(report, console)


def _print_external_note(report: Report, console: Console) -> None:
    """Where the external context's outputs come from and which images its tests use (images
    without outputs are left out, never silently)."""
    source = report.setup.get("external")
    note = next((c["images"] for c in report.comparisons
                 if c["context"] == "external" and "images" in c), None)
    if not source or note is None:
        return
    used = f"its metric and paired tests are {note}" if note.startswith("on ") else note
    console.print(f"external: outputs read from {source['path']}; {used}.", style="dim",
                  markup=False, highlight=False, soft_wrap=True)


def _print_compact_evaluation(report: Report, console: Console) -> None:
    table = Table(title="Three-way test (against ground truth)", title_justify="left")
    table.add_column("context")
    table.add_column("value [95% CI]", justify="right", no_wrap=True)
    table.add_column("Δ [95% CI]", justify="right", no_wrap=True)
    table.add_column("vs")
    table.add_column("p", justify="right", no_wrap=True)
    first_vs: dict[str, dict] = {}
    for c in report.comparisons:
        first_vs.setdefault(c["context"], c)
    metric, n = "", 0
    for name, ctx in report.contexts.items():
        metric, n = ctx.metric, max(n, ctx.n)
        lo, hi = (_fmt(v, metric) for v in ctx.ci95)
        row = [name, f"{_fmt(ctx.value, metric)} [{lo}…{hi}]", "", "", ""]
        c = first_vs.get(name)
        if c:
            dlo, dhi = (_fmt(v, metric, sign=True) for v in c["ci95"])
            row[2] = f"{_fmt(c['difference'], metric, sign=True)} [{dlo}…{dhi}]"
            row[3:] = [c["reference"], f"{c['p_value']:.2g}"]
        table.add_row(*row)
    console.print(table)
    if report.comparisons:
        test = report.comparisons[0]["test"]
        console.print(f"[dim]{metric} in %, up to {n} images; p: {test}[/dim]")


def print_findings(report: Report, console: Console, problems_only: bool = False) -> None:
    """Findings, most important first; ``problems_only``: errors and warnings, and a count
    of the rest (the one-screen summary of ``diagnose``)."""
    ranked = report.ranked()
    shown = [f for f in ranked if f.severity in ("error", "warning")] if problems_only else ranked
    for f in shown:
        style = _STYLE[f.severity]
        console.print(f"[{style}]{f.severity.upper():7}[/{style}] {f.id}: {f.title}")
        if f.severity in ("error", "warning") and f.recommendation and not problems_only:
            console.print(f"        [dim]{f.recommendation}[/dim]")
    if len(shown) < len(ranked):
        console.print(f"[dim]… and {len(ranked) - len(shown)} info/ok findings in the report[/dim]")
    top = report.top_suspect
    if top and not problems_only:
        console.print(f"\n[bold]Top suspect:[/bold] {top.id}")


def print_summary(report: Report, console: Console) -> None:
    """The checklist with a status and key number per suspect, then the verdict."""
    table = Table(title="Checklist", title_justify="left")
    for col in ("#", "suspect", "status", "finding", "key number"):
        table.add_column(col)
    for row in checklist(report.to_dict()):
        style = _STYLE.get(row["status"], "red" if row["status"] == "failed" else "dim")
        status = f"[{style}]{row['status']}[/{style}]"
        table.add_row(str(row["num"]), row["short"], status, row["finding"], row["key"])
    console.print(table)
    if report.reliability:
        console.print(f"[bold red]Quantized results unreliable:[/bold red] {report.reliability}")
    top = report.top_suspect
    verdict = "no problem found" if top is None else f"{top.id} — {top.title}"
    console.print(f"[bold]Verdict:[/bold] {verdict}")
    for f in report.ranked():
        if f.id == "evaluation.degradation" and f is not top:
            console.print(f"[bold]Measured drop:[/bold] {f.title}")
    if top is not None and top.recommendation:
        console.print(f"[bold]Remedy:[/bold] {top.recommendation}")


def print_fix(fix: dict, console: Console) -> None:
    """``quantdoctor fix``: the steps table and the confirmed result."""
    if fix.get("status") == "pipeline":
        console.print(fix.get("message", ""), markup=False, highlight=False, soft_wrap=True)
        return
    metric = fix.get("metric", "")
    table = Table(title=f"fix: steps on {fix.get('search_images')} search images "
                        f"(native {fix.get('native_search', 0):.2f}, as given "
                        f"{fix.get('baseline_search', 0):.2f}, budget {fix.get('max_drop')})")
    for col in ("step", "remedy", metric, "Δ vs previous [95% CI]", "p", "s", "16-bit MACs",
                "accepted"):
        table.add_column(col, justify="left" if col in ("remedy", "accepted") else "right")
    for s in fix.get("steps", []):
        table.add_row(
            str(s["index"]), s["remedy"], _fmt(s["value"], metric),
            f"{_fmt(s['delta'], metric, True)} [{_fmt(s['delta_ci95'][0], metric, True)}, "
            f"{_fmt(s['delta_ci95'][1], metric, True)}]",
            f"{s['p_value']:.2g}", f"{s['seconds']:.1f}", f"{100 * s['macs_16bit']:.1f}%",
            ("yes: " if s["accepted"] else "no: ") + s["reason"],
            style="green" if s["accepted"] else None,
        )
    if fix.get("steps"):  # a wide table: not squeezed into 80 columns when piped
        Console(file=console.file, width=max(console.width, 150),
                force_terminal=console.is_terminal).print(table)
    for k in fix.get("skipped", []):
        console.print(f"not tried: {k['remedy']} ({k['reason']})", markup=False)
    c = fix.get("confirmed")
    if c:
        style = "green" if fix.get("status") == "met" else "bold red"
        console.print(no_negative_zero(
            f"[{style}]confirmed on {c['n']} held-out images: {metric} {c['value']:.2f} "
            f"({c['ci95'][0]:.2f} … {c['ci95'][1]:.2f}), native {c['native']:.2f}, drop "
            f"{c['drop']:.2f} (95% CI {c['drop_ci95'][0]:.2f} … {c['drop_ci95'][1]:.2f}); "
            f"budget {fix.get('max_drop')}: {'met' if fix.get('status') == 'met' else 'NOT met'}"
            f"[/{style}]"),
            highlight=False, soft_wrap=True,
        )
    if fix.get("message"):
        console.print(fix["message"], markup=False, highlight=False, soft_wrap=True)
    if fix.get("recipe"):
        console.print("recipe added: " + "; ".join(fix["recipe"]), markup=False,
                      highlight=False, soft_wrap=True)
    console.print(
        f"{100 * fix.get('macs_16bit', 0):.1f}% of MACs at 16 bits, {fix.get('evaluations')} "
        f"evaluations, {fix.get('seconds', 0):.0f} s", markup=False, highlight=False)


def print_profile(report: Report, console: Console) -> None:
    """``--profile``: wall time and peak resident memory per step, then what the engine ran
    (model passes by context, captures, decoding)."""
    profile = report.profile
    if not profile:
        return
    table = Table(title="Where the time went", title_justify="left")
    table.add_column("step")
    table.add_column("wall (s)", justify="right")
    table.add_column("peak RSS (MB)", justify="right")
    table.add_column("RSS after (MB)", justify="right")
    for name, s in profile.get("steps", {}).items():
        table.add_row(name, f"{s['wall_s']:.1f}", f"{s['peak_rss_mb']:.0f}", f"{s['rss_mb']:.0f}")
    table.add_row("total", f"{profile.get('total_wall_s', 0.0):.1f}",
                  f"{profile.get('peak_rss_mb', 0.0):.0f}", "", style="bold")
    console.print(table)
    engine = profile.get("engine") or {}
    runs = engine.get("run_s") or {}
    if runs or engine.get("decoded_images"):
        passes = Table(title="Model passes", title_justify="left")
        passes.add_column("what")
        passes.add_column("images", justify="right")
        passes.add_column("seconds", justify="right")
        for context, seconds in runs.items():
            passes.add_row(context, str(engine["run_images"].get(context, 0)), f"{seconds:.1f}")
        passes.add_row("captures", str(engine.get("captured_images", 0)),
                       f"{engine.get('capture_s', 0.0):.1f}")
        passes.add_row("decoding", str(engine.get("decoded_images", 0)),
                       f"{engine.get('decode_s', 0.0):.1f}")
        console.print(passes)
        if engine.get("outputs_from_disk"):
            console.print(f"{engine['outputs_from_disk']} model output set(s) read from the "
                          "cache across runs", markup=False)
