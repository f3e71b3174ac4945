"""Findings model, findings.json, and the terminal view."""

from .findings import SEVERITY_ORDER, ContextResult, Finding, Report, to_json_types

__all__ = ["SEVERITY_ORDER", "ContextResult", "Finding", "Report", "to_json_types"]
