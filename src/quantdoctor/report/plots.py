"""The report's plots as inline SVG strings (matplotlib, no pyplot state, no display).

Every function takes plain evidence from findings.json and returns one ``<svg>`` element
whose ids are unique within the page, so that several can sit in one HTML file:

>>> svg = snr_bars([{"name": "conv1", "alone_snr_min_db": 8.0, "accumulated_snr_db": 7.5}])
>>> svg.startswith("<svg") and "10 dB" in svg
True
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Shown SNRs are capped here: an exact layer reports 200 dB, which would flatten the rest.
SNR_CAP_DB = 80.0
LOW_SNR_DB = 10.0

_BLUE, _RED, _GREY, _ORANGE, _GREEN = "#3465a4", "#cc0000", "#888888", "#f57900", "#4e9a06"
_ids = itertools.count()
_RC = {
    "svg.fonttype": "none",  # text stays text: smaller files, selectable, page fonts
    "svg.hashsalt": "quantdoctor",  # stable ids and output for the same evidence
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any) -> str:
    """The figure as one ``<svg>`` element, its ids prefixed so that pages can hold many
    (called inside a plotting function, under its rcParams)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    prefix = f"qd{next(_ids)}-"
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(
        r'(xlink:href|href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}{m.group(2)}"', text
    )
    return re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", text)


def _with_rc(fn: Any) -> Any:
    """Run a plotting function under the report's rcParams (fonts, spines)."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> str:
        import matplotlib

        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapped


@_with_rc
def context_bars(contexts: dict[str, dict[str, Any]]) -> str:
    """Each context's metric with its 95% CI (the three-way test at a glance)."""
    names = list(contexts)
    values = np.array([contexts[n]["value"] for n in names], dtype=float)
    lo = np.array([contexts[n]["ci95"][0] for n in names], dtype=float)
    hi = np.array([contexts[n]["ci95"][1] for n in names], dtype=float)
    metric = contexts[names[0]]["metric"] if names else ""
    fig = _figure(6.4, 0.45 * len(names) + 0.9)
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    # float grey, emulated/integer blue, outputs read from files (the device) orange
    colors = [_GREY if n in ("native", "fp_optimized") else _ORANGE if n == "external" else _BLUE
              for n in names]
    ax.barh(y, values, color=colors, height=0.6)
    ax.errorbar(
        values, y, xerr=[values - lo, hi - values], fmt="none", ecolor="black", capsize=3, lw=1
    )
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi + 0.33, f" {v:.2f}", va="bottom", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlabel(f"{metric} (%) with 95% CI")
    ax.set_xlim(0, max(100.0, float(np.nanmax(hi)) if len(hi) else 100.0))
    return _svg(fig)


@_with_rc
def fix_steps(fix: dict[str, Any]) -> str:
    """``fix``: the metric after each step on the search images (accepted steps joined,
    rejected ones as crosses), the float reference and the budget line, and the confirmed
    result on the held-out images."""
    steps = fix.get("steps") or []
    native, budget = fix.get("native_search"), fix.get("max_drop", 0.0)
    fig = _figure(6.4, 2.6)
    ax = fig.add_subplot()
    x = [0]
    current = [fix.get("baseline_search")]
    for s in steps:
        ax.plot([s["index"]], [s["value"]], marker="o" if s["accepted"] else "x",
                color=_GREEN if s["accepted"] else _RED, ls="none")
        if s["accepted"]:
            x.append(s["index"])
            current.append(s["value"])
    ax.plot(x, current, color=_BLUE, marker="o", label="recipe so far (search images)")
    if native is not None:
        ax.axhline(native, color=_GREY, ls="--", lw=1, label=f"native {native:.2f}")
        ax.axhline(native - budget, color=_ORANGE, ls=":", lw=1,
                   label=f"budget (native − {budget:g})")
    conf = fix.get("confirmed")
    if conf:
        end = (steps[-1]["index"] if steps else 0) + 0.6
        ax.errorbar([end], [conf["value"]], yerr=[[conf["value"] - conf["ci95"][0]],
                    [conf["ci95"][1] - conf["value"]]], fmt="s", color="black", capsize=3,
                    label=f"confirmed {conf['value']:.2f} (held-out)")
    ax.set_xticks(range(0, (steps[-1]["index"] if steps else 0) + 1))
    ax.set_xlabel("step (0: the recipe as given)")
    ax.set_ylabel(f"{fix.get('metric', '')} (%)")
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


@_with_rc
def hypothesis_bars(hypotheses: Sequence[dict[str, Any]]) -> str:
    """The declared preprocessing against the alternatives scored on labelled images."""
    names = [str(h["variant"]) for h in hypotheses]
    values = [float(h["value"]) for h in hypotheses]
    fig = _figure(6.4, 0.38 * len(names) + 0.9)
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    best = int(np.argmax(values))
    colors = [
        _GREY if n == "declared" else (_GREEN if i == best else _BLUE) for i, n in enumerate(names)
    ]
    ax.barh(y, values, color=colors, height=0.6)
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    metric = hypotheses[0].get("metric", "") if hypotheses else ""
    ax.set_xlabel(f"{metric} (%) on the labelled subset")
    ax.set_xlim(0, max(100.0, max(values, default=0) * 1.1))
    return _svg(fig)


#: Per-layer charts of bigger models show a selection, each bar labelled: 60 labels at 7 pt
#: fit the page's width without shrinking (YOLOX-Nano has 349 layers; all 349 would be drawn
#: at 5.7 px). The page's table lists every layer.
MAX_BARS = 60


def select_bars(
    badness: Sequence[float | None], flagged: Sequence[bool], max_bars: int = MAX_BARS
) -> list[int]:
    """Indices of the bars a per-layer chart draws. Up to ``max_bars`` rows: all of them in
    graph order. Beyond: every flagged row (the worst ``max_bars`` if more are flagged), then
    the rows with the lowest ``badness`` (unknowns last) up to ``max_bars``, worst first.

    >>> select_bars([5, 1, None, 3], [False, False, False, True], max_bars=2)
    [1, 3]
    """
    n = len(badness)
    if n <= max_bars:
        return list(range(n))
    key = [np.inf if b is None or np.isnan(b) else float(b) for b in badness]
    order = sorted(range(n), key=lambda i: (key[i], i))
    picked = set([i for i in order if flagged[i]][:max_bars])
    rest = [i for i in order if i not in picked and np.isfinite(key[i])]
    picked.update(rest[: max(0, max_bars - len(picked))])
    return [i for i in order if i in picked]


def _selection_note(idx: Sequence[int], hit: Sequence[bool], order: str) -> str:
    """What a per-layer chart left out, in words; "" when it shows every layer."""
    if len(idx) >= len(hit):
        return ""
    n_flagged, shown_flagged = sum(hit), sum(hit[i] for i in idx)
    flagged = (
        "every flagged one in red"
        if shown_flagged == n_flagged
        else f"the {shown_flagged} worst of {n_flagged} flagged in red"
    )
    return f"{len(idx)} of {len(hit)} layers shown ({order}, {flagged}); all in the table below"


def _layer_axis(
    ax: Any, names: Sequence[str], flagged: Sequence[bool], selected: bool
) -> None:
    """Tick labels for a per-layer chart: every bar labelled, flagged ones in red. Only an
    unselected chart of more than MAX_BARS layers (called directly) thins them out."""
    x = np.arange(len(names))
    step = 1 if selected else max(1, len(names) // MAX_BARS)
    ax.set_xticks(x[::step], [_short(n) for n in names[::step]], rotation=90,
                  fontsize=7 if selected else 6)
    for label, hit in zip(ax.get_xticklabels(), flagged[::step], strict=True):
        if hit:
            label.set_color(_RED)
    ax.set_xlim(-0.7, len(names) - 0.3)


def _chart_width(bars: int, selected: bool = False) -> float:
    # a selection labels every bar: wider spacing, and at most 11 inches, the page's width
    return min(max(6.4, (0.15 if selected else 0.12) * bars + 2), 11 if selected else 16)


@_with_rc
def snr_bars(
    layers: Sequence[dict[str, Any]],
    threshold_db: float = LOW_SNR_DB,
    flagged: Sequence[str] | None = None,
    max_bars: int = MAX_BARS,
) -> str:
    """Per layer: output SNR with only that layer quantized (bars; flagged ones red) and
    on-layer SNR with everything quantized (dots). ``flagged``: the layer names that
    ``layers.low_snr`` flagged (default: those at or below the threshold).

    Up to ``max_bars`` layers: all, in graph order. More: the worst layers by that SNR and
    every flagged one, worst first, each labelled, with a note saying how many are shown."""
    alone_all = [r.get("alone_snr_min_db") for r in layers]
    idx, hit_all = _snr_pick(layers, threshold_db, flagged, max_bars)
    selected = len(idx) < len(layers)
    rows = [layers[i] for i in idx]
    hit = [hit_all[i] for i in idx]
    names = [str(r["name"]) for r in rows]
    alone = np.array([np.nan if alone_all[i] is None else alone_all[i] for i in idx], dtype=float)
    acc = np.array(
        [
            np.nan if r.get("accumulated_snr_db") is None else r["accumulated_snr_db"]
            for r in rows
        ],
        dtype=float,
    )
    shown = np.minimum(alone, SNR_CAP_DB)
    # rotated full labels need room below the axes when every bar is labelled
    fig = _figure(_chart_width(len(names), selected), 4.2 if selected else 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    colors = [_RED if h else _BLUE for h in hit]
    ax.bar(x, np.nan_to_num(shown), color=colors, width=0.8)
    ax.plot(x, np.minimum(acc, SNR_CAP_DB), "o", ms=2.5, color=_ORANGE)
    ax.axhline(threshold_db, color=_RED, ls="--", lw=1)
    # the label sits in the right margin, where no bar can hide it (the left one has ticks)
    ax.annotate(
        f"{threshold_db:.0f} dB",
        (1, threshold_db),
        xycoords=("axes fraction", "data"),
        xytext=(3, 0),
        textcoords="offset points",
        color=_RED,
        ha="left",
        va="center",
        fontsize=7,
    )
    ax.set_ylabel(f"output SNR (dB, capped at {SNR_CAP_DB:.0f})", labelpad=14)
    ax.set_ylim(0, SNR_CAP_DB * 1.05)
    _layer_axis(ax, names, hit, selected)
    if selected:
        ax.set_xlabel(_selection_note(idx, hit_all, _SNR_ORDER), fontsize=7)
    # explicit handles: the first bar's colour (red when flagged) must not colour the legend
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=_BLUE, label="only this layer quantized"),
        Patch(color=_RED, label="flagged (layers.low_snr)"),
        Line2D([], [], ls="none", marker="o", ms=2.5, color=_ORANGE,
               label="on-layer, everything quantized"),
    ]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=3, fontsize=7,
              frameon=False)
    return _svg(fig)


@_with_rc
def weight_snr_bars(
    layers: Sequence[dict[str, Any]],
    flagged: Sequence[str] | None = None,
    max_bars: int = MAX_BARS,
) -> str:
    """Per layer with weights: weight SNR with per-tensor against per-channel ranges (the
    depthwise failure: per-tensor far below per-channel). ``flagged``: the layer names that
    ``layers.weight_range_imbalance`` examined (red labels).

    Up to ``max_bars`` layers: all, in graph order. More: the largest per-tensor losses and
    every flagged layer, largest loss first, each labelled, with a note."""
    rows_all = _weight_rows(layers)
    idx, hit_all = _weight_pick(layers, flagged, max_bars)
    selected = len(idx) < len(rows_all)
    rows = [rows_all[i] for i in idx]
    names = [str(r["name"]) for r in rows]
    per_tensor = np.array([_num(r["weight_snr_db"]["per_tensor"]) for r in rows], dtype=float)
    per_channel = np.array([_num(r["weight_snr_db"]["per_channel"]) for r in rows], dtype=float)
    fig = _figure(_chart_width(len(names), selected), 4.0 if selected else 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, np.minimum(per_channel, SNR_CAP_DB), width=0.8, color=_GREY, label="per-channel")
    ax.bar(x, np.minimum(per_tensor, SNR_CAP_DB), width=0.5, color=_BLUE, label="per-tensor")
    ax.set_ylabel("weight SNR (dB)")
    _layer_axis(ax, names, [hit_all[i] for i in idx], selected)
    if selected:
        ax.set_xlabel(_selection_note(idx, hit_all, _WEIGHT_ORDER), fontsize=7)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, fontsize=7, frameon=False)
    return _svg(fig)


_SNR_ORDER = "lowest only-this-layer SNR first"
_WEIGHT_ORDER = "largest loss of per-tensor against per-channel first"


def snr_note(
    layers: Sequence[dict[str, Any]],
    threshold_db: float = LOW_SNR_DB,
    flagged: Sequence[str] | None = None,
    max_bars: int = MAX_BARS,
) -> str:
    """What ``snr_bars`` with the same arguments leaves out ("" when it shows every layer)."""
    return _selection_note(*_snr_pick(layers, threshold_db, flagged, max_bars), _SNR_ORDER)


def weight_note(
    layers: Sequence[dict[str, Any]],
    flagged: Sequence[str] | None = None,
    max_bars: int = MAX_BARS,
) -> str:
    """What ``weight_snr_bars`` with the same arguments leaves out ("" when it shows all)."""
    return _selection_note(*_weight_pick(layers, flagged, max_bars), _WEIGHT_ORDER)


def _snr_pick(
    layers: Sequence[dict[str, Any]],
    threshold_db: float,
    flagged: Sequence[str] | None,
    max_bars: int,
) -> tuple[list[int], list[bool]]:
    """(indices of the bars drawn, flagged or not for every layer)."""
    hit = _snr_flags(layers, threshold_db, flagged)
    return select_bars([r.get("alone_snr_min_db") for r in layers], hit, max_bars), hit


def _weight_rows(layers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in layers if r.get("weight_snr_db")]


def _weight_pick(
    layers: Sequence[dict[str, Any]], flagged: Sequence[str] | None, max_bars: int
) -> tuple[list[int], list[bool]]:
    """(indices into the layers with weights of the bars drawn, flagged or not for each)."""
    rows = _weight_rows(layers)
    hit = _flags(rows, flagged or [])
    loss = [_loss(r["weight_snr_db"]) for r in rows]
    return select_bars([None if v is None else -v for v in loss], hit, max_bars), hit


def _snr_flags(
    layers: Sequence[dict[str, Any]], threshold_db: float, flagged: Sequence[str] | None
) -> list[bool]:
    if flagged is not None:
        return _flags(layers, flagged)
    alone = [r.get("alone_snr_min_db") for r in layers]
    return [v is not None and v <= threshold_db for v in alone]


def _flags(rows: Sequence[dict[str, Any]], flagged: Sequence[str]) -> list[bool]:
    names = set(map(str, flagged))
    return [str(r["name"]) in names for r in rows]


def _num(v: Any) -> float:
    return np.nan if v is None else float(v)


def _loss(w: dict[str, Any]) -> float | None:
    """dB of weight SNR lost to one shared scale (per-channel minus per-tensor)."""
    pt, pc = w.get("per_tensor"), w.get("per_channel")
    return None if pt is None or pc is None else float(pc) - float(pt)


@_with_rc
def tensor_histogram(
    name: str,
    tensor: dict[str, Any],
    suggested_range: Sequence[float] | None = None,
) -> str:
    """Histogram of one tensor over the evaluation images (and the calibration images),
    log scale, with the calibrated range and the suggested clipping range."""
    fig = _figure(6.4, 2.6)
    ax = fig.add_subplot()
    for key, color, label in (
        ("evaluation", _BLUE, "evaluation"),
        ("calibration", _GREY, "calibration"),
    ):
        hist = (tensor.get(key) or {}).get("histogram")
        if not hist or not hist.get("counts"):
            continue
        edges = np.asarray(hist["edges"], dtype=float)
        counts = np.asarray(hist["counts"], dtype=float)
        ax.stairs(
            np.maximum(counts, 0.5),
            edges,
            color=color,
            label=label,
            lw=1.2,
            fill=key == "evaluation",
            alpha=0.35 if key == "evaluation" else 1.0,
        )
    ax.set_yscale("log")
    rng = tensor.get("calibrated_range")
    if rng:
        for v in rng:
            ax.axvline(v, color="black", lw=1)
        ax.text(rng[1], ax.get_ylim()[1], " calibrated", fontsize=7, va="top")
    if suggested_range:
        for v in suggested_range:
            ax.axvline(v, color=_RED, lw=1.2, ls="--")
        ax.text(
            suggested_range[1],
            ax.get_ylim()[1] / 10,
            " suggested clip",
            color=_RED,
            fontsize=7,
            va="top",
        )
    ax.set_title(_short(name, 70), fontsize=9, loc="left")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    ax.legend(loc="upper center", fontsize=7, frameon=False, ncols=2)
    return _svg(fig)


@_with_rc
def value_scatter(name: str, pairs: dict[str, Any]) -> str:
    """Float against quantized values of one tensor at the same positions (everything
    quantized); on the diagonal means no error."""
    f = np.asarray(pairs["float"], dtype=float)
    q = np.asarray(pairs["quantized"], dtype=float)
    fig = _figure(3.2, 3.0)
    ax = fig.add_subplot()
    ax.plot(f, q, ".", ms=2, color=_BLUE, alpha=0.6)
    lo = float(min(f.min(initial=0), q.min(initial=0)))
    hi = float(max(f.max(initial=1), q.max(initial=1)))
    ax.plot([lo, hi], [lo, hi], color=_GREY, lw=0.8)
    snr = pairs.get("accumulated_snr_db")
    title = _short(name, 38) + (f"\n{snr:.1f} dB" if snr is not None else "")
    ax.set_title(title, fontsize=8, loc="left")
    ax.set_xlabel("float")
    ax.set_ylabel("quantized")
    return _svg(fig)


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1) :]


__all__ = [
    "context_bars",
    "hypothesis_bars",
    "select_bars",
    "snr_bars",
    "snr_note",
    "tensor_histogram",
    "value_scatter",
    "weight_note",
    "weight_snr_bars",
]
