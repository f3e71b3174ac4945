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


def _fmt_ci(ci: tuple[float, float] | list[float]) -> str:
    return f"{ci[0]:.2f} … {ci[1]:.2f}"


def print_evaluation(report: Report, console: Console) -> None:
    table = Table(title="Three-way test: each context against ground truth", title_justify="left")
    for col in ("context", "metric", "value", "95% CI", "images"):
        table.add_column(col, justify="right" if col in ("value", "images") else "left")
    for name, ctx in report.contexts.items():
        table.add_row(name, ctx.metric, f"{ctx.value:.2f}", _fmt_ci(ctx.ci95), str(ctx.n))
    console.print(table)
    if report.comparisons:
        cmp_table = Table(title="Paired differences (same images)", title_justify="left")
        for col in ("context", "vs", "Δ points", "95% CI", "McNemar p", "top-1 agreement*"):
            cmp_table.add_column(col, justify="left" if col in ("context", "vs") else "right")
        for c in report.comparisons:
            cmp_table.add_row(
                c["context"],
                c["reference"],
                f"{c['difference']:+.2f}",
                _fmt_ci(c["ci95"]),
                f"{c['p_value']:.3g}",
                f"{c['top1_agreement']:.2f}%",
            )
        console.print(cmp_table)
        console.print(
            "[dim]* two-way agreement: how often both predict the same class; not accuracy.[/dim]"
        )


def print_findings(report: Report, console: Console) -> None:
    for f in report.ranked():
        style = _STYLE[f.severity]
        console.print(f"[{style}]{f.severity.upper():7}[/{style}] {f.id}: {f.title}")
        if f.severity in ("error", "warning") and f.recommendation:
            console.print(f"        [dim]{f.recommendation}[/dim]")
    top = report.top_suspect
    if top:
        console.print(f"\n[bold]Top suspect:[/bold] {top.id}")
