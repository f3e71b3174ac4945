"""``report/index.html``: the report for people, one self-contained file (inline CSS, inline
SVG plots, thumbnails as data URIs; no script, no network), rendered from the same content
as findings.json, so a saved findings.json can be rendered again:

>>> import json
>>> data = json.loads(Path("report/findings.json").read_text())     # doctest: +SKIP
>>> write_html(data, Path("report"))                                 # doctest: +SKIP
PosixPath('report/index.html')
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..files import write_atomic
from . import plots
from .checklist import checklist, key_number, num
from .findings import Report

log = logging.getLogger(__name__)

#: Findings whose evidence lists image files shown as thumbnails: evidence key → caption.
THUMBNAIL_KEYS = {"files": "", "outlier_files": "farthest from the evaluation images"}
MAX_THUMBNAILS = 24
#: Remedy lines that are doctor.yaml keys of their own, not recipe commands.
CONFIG_KEYS = ("preprocess", "postprocess", "target", "data", "end_nodes")
THUMBNAIL_PX = 96
MAX_HISTOGRAMS = 6


def write_html(report: Report | dict[str, Any], folder: Path) -> Path:
    """Render ``index.html`` into ``folder`` atomically; returns its path."""
    data = report.to_dict() if isinstance(report, Report) else report
    return write_atomic(folder / "index.html", render_html(data))


def render_html(data: dict[str, Any]) -> str:
    """The report page for one findings.json document (a dict)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("quantdoctor.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = num
    env.filters["signed"] = lambda x: (
        ("+" if isinstance(x, (int, float)) and x > 0 else "") + num(x)
    )
    env.filters["pretty"] = lambda x: json.dumps(x, indent=1, ensure_ascii=False)[:6000]
    findings = data.get("findings", [])
    top = next((f for f in findings if f["severity"] in ("error", "warning")), None)
    return env.get_template("index.html.j2").render(
        data=data,
        top=top,
        checklist=checklist(data),
        findings=_anchored([_finding_view(f, data) for f in findings]),
        contexts_svg=_plot(plots.context_bars, data.get("contexts")),
        fix_svg=_plot(plots.fix_steps, data.get("fix")) if data.get("fix", {}).get("steps")
        is not None else "",
        layer_rows=_layer_table(data),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


# --- view models -------------------------------------------------------------------------


def _finding_view(f: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A finding plus what the page shows with it: its plots, thumbnails, recipe block."""
    plots_svg: list[str] = []
    ev = f.get("evidence", {})
    fid = f["id"]
    layers = data.get("evidence", {}).get("layers", {})
    if fid.startswith("pipeline.") and ev.get("variant") is not None:
        hyps = data.get("evidence", {}).get("pipeline", {}).get("hypotheses")
        plots_svg.append(_plot(plots.hypothesis_bars, hyps))
    notes: list[str] = []
    if fid == "layers.low_snr" and layers.get("layers"):
        threshold, flagged = ev.get("threshold_db", 10.0), _flagged_names(ev, "flagged")
        plots_svg.append(_plot(plots.snr_bars, layers["layers"], threshold, flagged))
        notes.append(_note(plots.snr_note, layers["layers"], threshold, flagged))
    if fid == "layers.weight_range_imbalance" and f["severity"] != "ok" and layers.get("layers"):
        flagged = _flagged_names(ev, "candidates")
        plots_svg.append(_plot(plots.weight_snr_bars, layers["layers"], flagged))
        notes.append(_note(plots.weight_note, layers["layers"], flagged))
    # a wide_range "info" still shows its outliers and the clip that did not pay (collapsed)
    if fid == "layers.wide_range" or (fid == "layers.low_snr" and f["severity"] != "ok"):
        plots_svg.extend(_histograms(f, layers))
        plots_svg.extend(_scatters(f, layers))
    thumbs = _thumbnails(f) if fid.startswith("calibration.") else []
    commands = [r for r in f.get("recipe", []) if not r.startswith(CONFIG_KEYS)]
    return {
        **f,
        "key": key_number(f),
        "plots": [p for p in plots_svg if p],
        "chart_notes": [n for n in notes if n],
        "thumbnails": thumbs,
        "scalars": {k: v for k, v in ev.items() if not isinstance(v, (dict, list))},
        "nested": {k: v for k, v in ev.items() if isinstance(v, (dict, list)) and v},
        "recipe_yaml": "recipe:\n" + "\n".join(f"  - {r}" for r in commands) if commands else "",
        "config_lines": [r for r in f.get("recipe", []) if r.startswith(CONFIG_KEYS)],
    }


def _flagged_names(ev: dict[str, Any], key: str) -> list[str]:
    """Layer names of a finding's flagged rows (``{"layer": name, ...}``)."""
    return [str(r["layer"]) for r in ev.get(key, []) if isinstance(r, dict) and "layer" in r]


def _note(fn: Callable[..., str], *args: Any) -> str:
    """Said on the page above a per-layer chart that shows a selection; "" otherwise."""
    try:
        text = fn(*args)
    except Exception:  # odd evidence: the chart is skipped too (see _plot), so is its note
        return ""
    return f"Chart: {text}" if text else ""


def _layer_table(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every layer of the per-layer analysis, in graph order, for the page's full table
    (the charts of big models show only a selection): what each layer finding flagged."""
    layers = data.get("evidence", {}).get("layers", {}).get("layers") or []
    marks: dict[str, list[str]] = {}
    for f in data.get("findings", []):
        if f.get("id") == "layers.low_snr":
            for name in _flagged_names(f.get("evidence", {}), "flagged"):
                marks.setdefault(name, []).append("low SNR")
        elif f.get("id") == "layers.weight_range_imbalance" and f.get("severity") != "ok":
            for name in _flagged_names(f.get("evidence", {}), "candidates"):
                marks.setdefault(name, []).append("weight ranges")
    rows = []
    for i, r in enumerate(layers):
        if not isinstance(r, dict) or "name" not in r:
            continue
        w = r.get("weight_snr_db") or {}
        rows.append({
            "index": i,
            "name": str(r["name"]),
            "op_type": r.get("op_type", ""),
            "alone": r.get("alone_snr_min_db"),
            "accumulated": r.get("accumulated_snr_db"),
            "per_tensor": w.get("per_tensor") if isinstance(w, dict) else None,
            "per_channel": w.get("per_channel") if isinstance(w, dict) else None,
            "flags": marks.get(str(r["name"]), []),
        })
    return rows


def _anchored(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Page anchors: the finding ID (the checklist links to it), then ID-2, ID-3 for repeats
    (evaluation.degradation is one finding per quantized context)."""
    seen: dict[str, int] = {}
    for v in views:
        seen[v["id"]] = seen.get(v["id"], 0) + 1
        v["anchor"] = "f-" + v["id"] + (f"-{seen[v['id']]}" if seen[v["id"]] > 1 else "")
    return views


def _flagged_tensors(f: dict[str, Any], layers: dict[str, Any]) -> list[tuple[str, Any]]:
    """(tensor, suggested clipping range or None) of a layer finding's flagged rows."""
    by_layer = {r["name"]: r.get("output") for r in layers.get("layers", [])}
    out = []
    for row in f["evidence"].get("candidates", []) + f["evidence"].get("flagged", []):
        if isinstance(row, dict):
            tensor = row.get("tensor") or by_layer.get(row.get("layer", ""))
            if tensor:
                out.append((tensor, row.get("suggested_range")))
    return list(dict(out).items())


def _histograms(f: dict[str, Any], layers: dict[str, Any]) -> list[str]:
    tensors = layers.get("tensors", {})
    return [
        _plot(plots.tensor_histogram, t, tensors[t], clip)
        for t, clip in _flagged_tensors(f, layers)[:MAX_HISTOGRAMS]
        if t in tensors
    ]


def _scatters(f: dict[str, Any], layers: dict[str, Any]) -> list[str]:
    scatter = layers.get("scatter", {})
    return [
        _plot(plots.value_scatter, t, scatter[t])
        for t, _ in _flagged_tensors(f, layers)[:MAX_HISTOGRAMS]
        if t in scatter
    ]


def _thumbnails(f: dict[str, Any]) -> list[dict[str, str]]:
    """Small PNG data URIs of the image files a calibration finding names (exact/near
    duplicate groups, constant, noise-like and out-of-domain images)."""
    if f["severity"] == "ok":
        return []
    ev = f.get("evidence", {})
    files: list[tuple[str, str]] = []
    for group in ev.get("groups", []):
        files.extend(
            (p, f"{group['kind']} duplicate group of {group['size']}")
            for p in group.get("files", [])[:4]
        )
    for key, caption in THUMBNAIL_KEYS.items():
        files.extend((p, caption) for p in ev.get(key, []) if isinstance(p, str))
    out = []
    for path, caption in files[:MAX_THUMBNAILS]:
        uri = _thumbnail(path)
        if uri:
            out.append({"uri": uri, "name": Path(path).name, "path": path, "caption": caption})
    return out


def _thumbnail(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            if max(im.size) < THUMBNAIL_PX // 2:  # tiny images (8x8 digits): enlarge, blocky
                k = THUMBNAIL_PX // max(im.size)
                im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return None  # the file moved since the run: the path is still listed
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plot(fn: Callable[..., str], *args: Any) -> str:
    """A plot, or nothing when its evidence is missing or odd (the page must still render)."""
    if not args or args[0] is None or (hasattr(args[0], "__len__") and not args[0]):
        return ""
    try:
        return fn(*args)
    except Exception as e:  # a plot never costs the report
        log.warning("plot %s skipped: %s", fn.__name__, e)
        return ""


__all__ = ["render_html", "write_html"]
