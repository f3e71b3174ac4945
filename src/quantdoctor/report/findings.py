"""Findings and findings.json (DESIGN §5, a stable contract: extend, never rename).

>>> f = Finding("evaluation.degradation", 3, "error", "Top-1 drops 5.0 points", {"drop": 5.0})
>>> Report(config="doctor.yaml", findings=[f]).to_dict()["findings"][0]["id"]
'evaluation.degradation'
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..files import write_atomic

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2, "ok": 3}
#: Findings that state the accuracy drop itself, not a cause: causes of the same severity
#: rank above them, so that the top suspect is a cause whenever one was found.
SYMPTOMS = frozenset({"evaluation.degradation"})


@dataclass
class Finding:
    """One conclusion with its evidence and the remedy."""

    id: str
    suspect: int
    severity: str
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    recommendation: str = ""
    recipe: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_ORDER:
            raise ValueError(f"severity must be one of {list(SEVERITY_ORDER)}")
        self.title = no_negative_zero(self.title)
        self.recommendation = no_negative_zero(self.recommendation)


#: "-0.00" (a rounded tiny negative) as a whole number in text; "-0.001" and "x-0.0" are not.
_NEGATIVE_ZERO = re.compile(r"(?<![\w.])-(0(?:\.0+)?)(?![\d.])")


def no_negative_zero(text: str) -> str:
    """``text`` with every printed negative zero ("drop -0.00") without its sign.

    >>> no_negative_zero("drop -0.00 points (95% CI -0.50 … -0.00)")
    'drop 0.00 points (95% CI -0.50 … 0.00)'
    """
    return _NEGATIVE_ZERO.sub(r"\1", text)


def _remedy_gain(f: Finding) -> float:
    """The metric gain its remedy measured (evidence ``remedy_metric.gain``), else 0."""
    m = f.evidence.get("remedy_metric") if isinstance(f.evidence, dict) else None
    gain = m.get("gain") if isinstance(m, dict) else None
    return float(gain) if isinstance(gain, (int, float)) and np.isfinite(gain) else 0.0


@dataclass
class ContextResult:
    """A context's metric against ground truth."""

    metric: str
    value: float
    ci95: tuple[float, float]
    n: int


def to_json_types(x: Any, significant: int | None = None) -> Any:
    """numpy scalars/arrays, tuples and paths → JSON types; NaN/±inf → null; floats rounded
    to ``significant`` digits when given (long per-channel tables)."""
    if isinstance(x, dict):
        return {str(k): to_json_types(v, significant) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json_types(v, significant) for v in x]
    if isinstance(x, np.ndarray):
        return to_json_types(x.tolist(), significant)
    if isinstance(x, np.generic):
        return to_json_types(x.item(), significant)
    if isinstance(x, float):
        if not np.isfinite(x):
            return None
        return float(f"{x:.{significant}g}") if significant else x
    if isinstance(x, Path):
        return str(x)
    return x


@dataclass
class Report:
    """Everything a command concluded; serialised as findings.json."""

    config: str
    contexts: dict[str, ContextResult] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, str] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    #: Empty, or why the quantized results must not be read as a quantization verdict.
    reliability: str = ""
    #: The recipe that produced the quantized model: the commands as configured and what
    #: each one did when applied (stage, seconds, summary).
    recipe: dict[str, Any] = field(default_factory=dict)
    #: ``quantdoctor fix``: the steps tried, the confirmed result, the recipe (empty: no fix).
    fix: dict[str, Any] = field(default_factory=dict)
    #: Where the run's time and memory went: per step wall time and peak resident memory,
    #: and what the engine ran (quantdoctor.profile; ``--profile`` prints it).
    profile: dict[str, Any] = field(default_factory=dict)

    def ranked(self) -> list[Finding]:
        """Most important first: by severity, causes before the symptom (the drop itself),
        checklist order, then the larger measured remedy gain (stable otherwise)."""
        return sorted(
            self.findings,
            key=lambda f: (
                SEVERITY_ORDER[f.severity],
                f.id in SYMPTOMS,
                f.suspect,
                -_remedy_gain(f),
            ),
        )

    @property
    def top_suspect(self) -> Finding | None:
        return next((f for f in self.ranked() if f.severity in ("error", "warning")), None)

    def to_dict(self) -> dict[str, Any]:
        return to_json_types(
            {
                "version": 1,
                "tool": f"quantdoctor {__version__}",
                "config": self.config,
                "contexts": {k: asdict(v) for k, v in self.contexts.items()},
                "findings": [asdict(f) for f in self.ranked()],
                "comparisons": self.comparisons,
                "steps": self.steps,
                "setup": self.setup,
                "reliability": self.reliability or "ok",
                "evidence": self.evidence,
                "recipe": self.recipe,
                **({"fix": self.fix} if self.fix else {}),
                **({"profile": self.profile} if self.profile else {}),
            }
        )

    def write_json(self, folder: Path) -> Path:
        """Write ``findings.json`` atomically (a crash never leaves half a file)."""
        return write_atomic(folder / "findings.json", json.dumps(self.to_dict(), indent=2))
