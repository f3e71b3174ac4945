"""The terminal view: rich tables and progress bars (on stderr, so stdout stays clean)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..progress import Advance
from .findings import Report

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}


class RichProgress:
    """Progress bars for long work (shown only when the terminal is interactive)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        ) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)


def _fmt(x: float, metric: str, sign: bool = False) -> str:
    """Metrics are in percent (mAP too): 2 decimals."""
    return f"{x:+.2f}" if sign else f"{x:.2f}"


def _fmt_ci(ci: tuple[float, float] | list[float], metric: str) -> str:
    return f"{_fmt(ci[0], metric)} … {_fmt(ci[1], metric)}"


def print_evaluation(report: Report, console: Console) -> None:
    if not report.contexts:
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


def print_findings(report: Report, console: Console) -> None:
    for f in report.ranked():
        style = _STYLE[f.severity]
        console.print(f"[{style}]{f.severity.upper():7}[/{style}] {f.id}: {f.title}")
        if f.severity in ("error", "warning") and f.recommendation:
            console.print(f"        [dim]{f.recommendation}[/dim]")
    top = report.top_suspect
    if top:
        console.print(f"\n[bold]Top suspect:[/bold] {top.id}")


_SUSPECTS = {
    0: "setup: model, data and labels load and run",
    1: "float pipeline: normalization, channel order, activations, end nodes",
    2: "calibration set: size, duplicates, domain, coverage",
    3: "three-way test: float and quantized against ground truth",
    4: "layers: noise, ranges, weights, BatchNorm, concat outputs",
}


def print_summary(report: Report, console: Console) -> None:
    """Verdict, top suspect and the checklist with a status per suspect."""
    table = Table(title="Checklist", title_justify="left")
    for col in ("#", "suspect", "status", "key finding"):
        table.add_column(col)
    checked = {f.suspect for f in report.findings}
    ran = set(report.steps)
    step_of = {0: "setup", 1: "pipeline", 2: "calibration", 3: "evaluation", 4: "layers"}
    for num, text in _SUSPECTS.items():
        mine = [f for f in report.ranked() if f.suspect == num]
        worst = mine[0] if mine else None
        if worst is not None:
            status = worst.severity
        elif step_of[num] in ran or num in checked:
            status = "ok"
        else:
            status = "not run"
        style = _STYLE.get(status, "dim")
        key = worst.id if worst is not None and worst.severity in ("error", "warning") else ""
        table.add_row(str(num), text, f"[{style}]{status}[/{style}]", key)
    console.print(table)
    if report.reliability:
        console.print(f"[bold red]Quantized results unreliable:[/bold red] {report.reliability}")
    top = report.top_suspect
    verdict = "no problem found" if top is None else f"{top.id} — {top.title}"
    console.print(f"[bold]Verdict:[/bold] {verdict}")
