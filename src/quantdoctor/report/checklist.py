"""The checklist view shared by the terminal and the HTML page: one row per suspect with its
status and the one number that sums it up, from findings.json content (a dict).

>>> rows = checklist({"steps": {"setup": "done"}, "findings": []})
>>> [(r["num"], r["status"]) for r in rows][:2]
[(0, 'ok'), (1, 'not run')]
"""

from __future__ import annotations

from typing import Any

SUSPECTS = {
    0: "Setup: model, data and labels load and run",
    1: "Float pipeline: normalization, channel order, output activations, end nodes",
    2: "Calibration set: size, duplicates, domain, coverage",
    3: "Three-way test: float and quantized against ground truth",
    4: "Layers: noise, ranges, weights, BatchNorm, concat outputs",
}
#: The same, in a word or two (terminal tables).
SHORT_NAMES = {0: "setup", 1: "float pipeline", 2: "calibration set", 3: "three-way test",
               4: "layers"}
STEP_OF_SUSPECT = {0: "setup", 1: "pipeline", 2: "calibration", 3: "evaluation", 4: "layers"}


def checklist(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per suspect: status (worst severity, ok, not run, failed) and its key number."""
    steps = data.get("steps", {})
    rows = []
    for suspect, text in SUSPECTS.items():
        mine = [f for f in data.get("findings", []) if f["suspect"] == suspect]
        worst = mine[0] if mine else None  # findings are ranked already
        step = steps.get(STEP_OF_SUSPECT[suspect], "")
        if step.startswith("failed"):
            status = "failed"
        elif worst is not None:
            status = worst["severity"]
        elif step == "done":
            status = "ok"
        else:
            status = "not run"
        rows.append(
            {
                "num": suspect,
                "text": text,
            "short": SHORT_NAMES[suspect],
                "status": status,
                "finding": worst["id"]
                if worst and worst["severity"] in ("error", "warning")
                else "",
                "key": key_number(worst) if worst else (step if status == "failed" else ""),
            }
        )
    return rows


def key_number(f: dict[str, Any]) -> str:
    """The one number that sums up a finding, for the checklist table."""
    ev, fid = f.get("evidence", {}), f["id"]
    try:
        if "declared" in ev and "alternative" in ev:
            return (
                f"{ev['declared']:.1f} → {ev['alternative']:.1f} "
                f"({ev['difference']:+.1f}, p = {ev['p_value']:.2g})"
            )
        if fid == "evaluation.external_mismatch":
            lo, hi = ev["ci95"]
            return f"external − quantized {ev['difference']:+.2f} (CI {lo:+.2f} … {hi:+.2f})"
        if fid.startswith("evaluation.") and "drop_points" in ev:
            lo, hi = ev["drop_ci95"]
            return f"{ev['context']}: drop {num(ev['drop_points'])} (CI {num(lo)} … {num(hi)})"
        if fid == "calibration.direct_test":
            lo, hi = ev["cost_ci95"]
            return f"cost {ev['cost_points']:+.2f} points (CI {lo:+.2f} … {hi:+.2f})"
        if fid == "layers.low_snr":
            flagged = ev.get("flagged", [])
            if flagged:
                return f"{len(flagged)} layer(s), lowest {flagged[0]['alone_snr_db']:.1f} dB"
            return f"median {ev.get('median_snr_db')} dB"
        if "remedy_metric" in ev and ev["remedy_metric"]:
            m = ev["remedy_metric"]
            return (
                f"remedy: {m['baseline']:.2f} → {m['value']:.2f} "
                f"({m['gain']:+.2f}, p = {m['p_value']:.2g})"
            )
        if fid.startswith("quantization.") and "drop" in ev:
            return f"drop {ev['drop']:.2f}"
        if fid == "calibration.too_few":
            return f"{ev['distinct_images']} distinct image(s) of {ev['images']}"
        if fid == "calibration.duplicates":
            return f"{ev['redundant_images']} of {ev['images']} redundant"
        if fid == "pipeline.fp_optimized_mismatch":
            return f"{ev['native']:.1f} vs {ev['fp_optimized']:.1f}"
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    return ""


def num(x: Any, digits: int = 2) -> str:
    """Floats with ``digits`` decimals (``digits=0``: 6 significant digits); no "-0.00"."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        if digits == 0 or (x != 0 and (abs(x) < 10**-digits or abs(x) >= 1e6)):
            text = f"{x:.6g}" if digits == 0 else f"{x:.3g}"
        else:
            text = f"{x:.{digits}f}"
        return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text
    return str(x)


__all__ = ["SUSPECTS", "checklist", "key_number", "num"]
