"""The findings of the per-layer analysis (DESIGN §4 step 4, §5 IDs), each a function of a
:class:`~quantdoctor.checks.layers.LayerAnalysis` that holds the measurements; each runs what
it still needs (statistics, variants, metrics) through it, so each can also run alone:

>>> a = LayerAnalysis(engine, task, images=64)               # doctest: +SKIP
>>> weight_range_imbalance(a).evidence["depthwise_layers"]    # doctest: +SKIP
['/_blocks.7/_depthwise_conv/Conv', ...]

Thresholds are starting points, each with the measurement that justified it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import numpy_helper

from ..engine.subgraph import Variant, literal
from ..graph import load_model
from ..quant.plan import weight_axis
from ..report import Finding
from . import layer_graph as lg
from .evaluation import compare
from .layer_stats import (
    best_clip,
    clip_choice,
    iqr_low_outliers,
    wasted_ratio,
    weight_range_stats,
)

if TYPE_CHECKING:
    from .layers import LayerAnalysis

SUSPECT = 4
PRECISION_16 = "a16_w16"
#: Ranges name registered for the clipping remedy.
CLIPPED_RANGES = "layer_clipped"  # an engine range-set name, not a finding ID

#: A layer that alone brings a model output to this SNR or below is a 16-bit candidate
#: (DESIGN §4: 10 dB), as is a low IQR outlier (below Q1 − 1.5·IQR of all layers).
LOW_SNR_DB = 10.0
#: At most this many 16-bit candidates are named and measured together.
MAX_16BIT = 8
#: A tensor is a clipping candidate when its calibrated range is WASTED_RATIO times wider
#: than the range holding all but CLIP_TAIL of its values on each side (two bits of the grid
#: for 0.02% of the values; the [0.01, 99.99] percentiles of DESIGN's recipe example), or when
#: the best clipping range promises CLIP_MIN_ESTIMATED_GAIN_DB of on-tensor SNR (estimated
#: from the calibration histogram). At most MAX_CLIPS tensors are run clipped (measured).
WASTED_RATIO = 4.0
CLIP_TAIL = 1e-4
CLIP_MIN_ESTIMATED_GAIN_DB = 3.0
MAX_CLIPS = 8
#: ... and must measurably raise the model-output SNR of its layer by this much to be kept.
CLIP_MIN_MEASURED_GAIN_DB = 0.5
#: Weight imbalance: under per-tensor weights the median output channel loses this much
#: weight SNR against per-channel weights (12 dB: it uses a quarter of the grid or less;
#: measured on EfficientNet-Lite0: depthwise layers 13-25 dB, pointwise projections
#: 3-12 dB). The whole-tensor SNR would hide it: large channels dominate its power. At most
#: MAX_WEIGHT_LAYERS (largest loss first) are then run with per-channel weights.
WEIGHT_LOSS_DB = 12.0
MAX_WEIGHT_LAYERS = 24
#: ... and a named layer gains at least this much model-output SNR with per-channel weights.
WEIGHT_MIN_MEASURED_GAIN_DB = 1.0
#: Pre-activation statistics of a convolution without BatchNorm (DESIGN §4): a channel is
#: unnormalized at |mean| > BN_MEAN or std > BN_STD; a layer when more than BN_FRACTION of
#: its channels are.
BN_MEAN = 5.0
BN_STD = 3.0
BN_FRACTION = 0.05
#: Concatenated outputs: a part loses at least CONCAT_MIN_LOSS_DB of SNR (one bit) to the
#: shared range (measured on the captured values), and the parts' range widths differ by
#: CONCAT_RANGE_RATIO (two bits) or more. Measured on YOLOX-Nano: boxes [-2.8, 3.9] and
#: scores [0, 1] in one tensor (7.3x): the class scores lose 14 dB.
CONCAT_RANGE_RATIO = 4.0
CONCAT_MIN_LOSS_DB = 6.0
#: Activation functions: their layers' median sensitivity this many dB below the others'.
ACTIVATION_GAP_DB = 6.0


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _names(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def whole_model(a: LayerAnalysis) -> list[Finding]:
    """``quantization.weights_sensitive`` and ``quantization.activations_sensitive``."""
    variants = {
        "weights_only": a.plan.replace(quantize_activations=False),
        "activations_only": a.plan.replace(quantize_weights=False),
        "quantized": a.plan,
    }
    with a.timer("whole_model"):
        snr = {k: a.output_snr(p) for k, p in variants.items()}
        table: dict[str, Any] = {
            k: {"output_snr_db": {o: _r(v) for o, v in s.items()}} for k, s in snr.items()
        }
        drops: dict[str, dict[str, Any]] = {}
        if a.metrics:
            native_scores, native = a.score("native", "fp_optimized", None)
            table["native"] = {"value": native.value, "ci95": list(native.ci95)}
            for k, p in variants.items():
                label = "quantized_baseline" if k == "quantized" else k
                scores, summary = a.score(label, a.context_for(p), p)
                cmp = compare("native", native_scores, k, scores, a.seed)
                table[k].update(
                    {
                        "value": summary.value,
                        "ci95": list(summary.ci95),
                        "n": summary.n,
                        "context": a.context_for(p),
                    }
                )
                drops[k] = {
                    "drop": -cmp["difference"],
                    "drop_ci95": [-cmp["ci95"][1], -cmp["ci95"][0]],
                    "p_value": cmp["p_value"],
                    "test": cmp["test"],
                }
                table[k].update(drops[k])
    a.remedies["whole_model"] = {"context": a.context, **table}
    findings = []
    for kind, fid, part in (
        ("weights_only", "quantization.weights_sensitive", "weights"),
        ("activations_only", "quantization.activations_sensitive", "activations"),
    ):
        s = min(snr[kind].values()) if snr[kind] else None
        evidence: dict[str, Any] = {
            "context": a.context_for(variants[kind]),
            "target": a.engine.target.name,
            "output_snr_db": {o: _r(v) for o, v in snr[kind].items()},
            "all_quantized_output_snr_db": {o: _r(v) for o, v in snr["quantized"].items()},
            "images_for_snr": len(a.images),
        }
        if kind in drops:
            d = drops[kind]
            evidence.update(
                {
                    "metric": a.task.metric,
                    "native": table["native"]["value"],
                    "value": table[kind]["value"],
                    "drop": d["drop"],
                    "drop_ci95": d["drop_ci95"],
                    "p_value": d["p_value"],
                    "test": d["test"],
                    "all_quantized_drop": drops["quantized"]["drop"],
                    "n": table[kind]["n"],
                }
            )
            significant = d["p_value"] < 0.05 and d["drop_ci95"][0] > 0
            if significant and d["drop"] > a.max_drop:
                severity = "error"
            elif significant:
                severity = "info"
            else:
                severity = "ok"
            share = d["drop"] / drops["quantized"]["drop"] if drops["quantized"]["drop"] else None
            evidence["share_of_all_quantized_drop"] = share
            title = (
                f"Quantizing only the {part} costs {d['drop']:.2f} {a.task.metric} points "
                f"(95% CI {d['drop_ci95'][0]:.2f} … {d['drop_ci95'][1]:.2f}, p = "
                f"{d['p_value']:.2g}); everything quantized: "
                f"{drops['quantized']['drop']:.2f}"
            )
        else:
            severity = "info" if s is not None and s <= LOW_SNR_DB else "ok"
            title = f"Quantizing only the {part}: output SNR " + (
                f"{s:.1f} dB" if s is not None else "not measured (no float output)"
            )
        if part == "weights":
            rec = (
                "The weights carry the loss: use per-channel weights, equalization, "
                "weight clipping, 16-bit weights for the layers named by "
                "layers.weight_range_imbalance / layers.low_snr, or AdaRound."
                if severity in ("error", "warning")
                else ""
            )
        else:
            rec = (
                "The activations carry the loss: check the calibration set (suspect 2), "
                "clip wide ranges (layers.wide_range), use 16-bit activations for the "
                "layers named by layers.low_snr."
                if severity in ("error", "warning")
                else ""
            )
        if severity == "ok":
            rec = f"Quantizing the {part} alone costs no significant accuracy."
        findings.append(Finding(fid, SUSPECT, severity, title, evidence, rec))
    return findings


def low_snr(a: LayerAnalysis) -> Finding:
    """``layers.low_snr``: layers that alone bring an output to ≤ 10 dB, or low IQR
    outliers of the sweep; the model with them at 16 bits, measured."""
    rows = [(name, noise.min_snr_db()) for name, noise in a.alone.items()]
    rows = [r for r in rows if r[0] in a.by_name or r[0] == "<input>"]
    values = np.array([s for _, s in rows])
    outliers, fence = iqr_low_outliers(values)
    flagged = sorted(
        {i for i, (_, s) in enumerate(rows) if s <= LOW_SNR_DB} | set(outliers.tolist()),
        key=lambda i: rows[i][1],
    )
    named = [(rows[i][0], rows[i][1]) for i in flagged]
    a.low_snr_layers = [n for n, _ in named]
    candidates = [n for n, _ in named if n in a.by_name][:MAX_16BIT]
    evidence: dict[str, Any] = {
        "threshold_db": LOW_SNR_DB,
        "iqr_fence_db": _r(fence),
        "images": len(a.images),
        "layers_swept": len(rows),
        "median_snr_db": _r(float(np.median(values))) if len(values) else None,
        "flagged": [
            {
                "layer": n,
                "op_type": a.by_name[n].op_type if n in a.by_name else "input",
                "alone_snr_db": _r(s),
                "accumulated_snr_db": _r(
                    a.accumulated.get(
                        a.by_name[n].output if n in a.by_name else a.engine.input.name
                    )
                ),
                "reason": "≤ threshold" if s <= LOW_SNR_DB else "IQR outlier",
            }
            for n, s in named
        ],
        "candidates_16bit": candidates,
    }
    if not named:
        return Finding(
            "layers.low_snr",
            SUSPECT,
            "ok",
            f"No layer alone brings the outputs below {LOW_SNR_DB:.0f} dB "
            f"(median {evidence['median_snr_db']} dB over {len(rows)} layers)",
            evidence,
            "",
        )
    m = None
    if candidates and PRECISION_16 in a.engine.target.precisions:
        plan16 = a.plan.set_precision([literal(c) for c in candidates], PRECISION_16)
        with a.timer("remedy_16bit"):
            evidence["remedy_output_snr_db"] = {o: _r(v) for o, v in a.output_snr(plan16).items()}
            evidence["baseline_output_snr_db"] = {o: _r(v) for o, v in a.output_snr(a.plan).items()}
            m = a.measure("layers_16bit", plan16)
        evidence["remedy_metric"] = m
    severity = a.remedy_severity(m)
    worst = ", ".join(f"{n} ({s:.1f} dB)" for n, s in named[:4])
    title = f"{len(named)} layer(s) alone bring the outputs to low SNR: {worst}"
    rec = f"Quantize these layers with 16 bits (a16_w16): {_names(candidates)}." + (
        f" Measured: {a.metric_text(m)}." if m else ""
    )
    if candidates and PRECISION_16 not in a.engine.target.precisions:
        rec = (
            f"These layers are the most sensitive: {_names(candidates)}; 16-bit layers are not "
            f"available on target {a.engine.target.name} (precisions: "
            f"{', '.join(a.engine.target.precisions)}): clip their ranges or equalize instead."
        )
    recipe = (
        [f"quantization_param: {{layers: {candidates}, precision: {PRECISION_16}}}"]
        if candidates and PRECISION_16 in a.engine.target.precisions
        else []  # no 16-bit mode on this target: nothing to paste
    )
    return Finding("layers.low_snr", SUSPECT, severity, title, evidence, rec, recipe)


def wide_range(a: LayerAnalysis) -> Finding:
    """``layers.wide_range``: the best clipping range per tensor (calibration histograms),
    tried on the layer alone (measured SNR at the outputs), the useful ones applied to the
    whole model (measured metric)."""
    if not a.cal_stats:
        a.calibration_statistics()
    tried = []
    for layer in a.layers:
        stats = a.cal_stats.get(layer.output)
        scheme = a.scheme(layer.output)
        if stats is None or scheme is None or stats.count == 0:
            continue
        full, best = best_clip(stats, scheme)
        wasted = wasted_ratio(stats, CLIP_TAIL)
        if best.tail is not None and best.snr_db - full.snr_db >= CLIP_MIN_ESTIMATED_GAIN_DB:
            choice = best  # the tensor's own rounding + clipping noise says so
        elif wasted >= WASTED_RATIO:
            # the tensor's MSE rarely favours a clip at 8 bits (the outliers carry energy),
            # what follows (a saturating activation, the task) may: try it and measure
            choice = clip_choice(stats, scheme, CLIP_TAIL)
        else:
            continue
        tried.append((wasted, layer, full, choice, stats))
    tried.sort(key=lambda t: -t[0])
    tried = tried[:MAX_CLIPS]
    rows = []
    clipped: dict[str, tuple[float, float]] = {}
    if tried:
        variants = []
        for _, layer, _, best, _ in tried:
            ranges = dict(a.ranges)
            ranges[layer.output] = (best.lo, best.hi)
            variants.append(Variant.alone(a.engine, layer, ranges=ranges, key=f"clip:{layer.name}"))
        with a.timer("remedy_clipping"):
            got = a.run_variants(variants)
        for wasted, layer, full, best, stats in tried:
            before = a.alone_snr(layer.name)
            after = got[f"clip:{layer.name}"].min_snr_db()
            measured = after - before if before is not None else None
            rows.append(
                {
                    "layer": layer.name,
                    "tensor": layer.output,
                    "calibrated_range": [full.lo, full.hi],
                    "suggested_range": [best.lo, best.hi],
                    "tail_fraction_cut": best.tail,
                    "range_kept": (best.hi - best.lo) / (full.hi - full.lo),
                    "p99_99": stats.percentile(99.99),
                    "wasted_ratio": _r(wasted),
                    "estimated_tensor_snr_db": [_r(full.snr_db), _r(best.snr_db)],
                    "estimated_tensor_gain_db": _r(best.snr_db - full.snr_db),
                    "alone_output_snr_db": [_r(before), _r(after)],
                    "measured_output_gain_db": _r(measured),
                }
            )
            if measured is not None and measured >= CLIP_MIN_MEASURED_GAIN_DB:
                clipped[layer.output] = (best.lo, best.hi)
    evidence: dict[str, Any] = {
        "tensors_checked": sum(1 for la in a.layers if la.output in a.cal_stats),
        "calibration_images": len(a.engine.images("calibration")),
        "candidates": rows,
        "min_estimated_gain_db": CLIP_MIN_ESTIMATED_GAIN_DB,
        "min_wasted_ratio": WASTED_RATIO,
        "tail_fraction": CLIP_TAIL,
        "min_measured_gain_db": CLIP_MIN_MEASURED_GAIN_DB,
    }
    useful = [r for r in rows if r["tensor"] in clipped]
    if not useful:
        title = (
            "No activation range is wasted on rare outliers"
            if not rows
            else f"{len(rows)} tensor(s) have outliers, but clipping them does not measurably help"
        )
        return Finding(
            "layers.wide_range", SUSPECT, "ok" if not rows else "info", title, evidence, ""
        )
    ranges = dict(a.ranges)
    ranges.update(clipped)
    # the engine caches models by ranges name: one name per set of clips
    name = (
        f"{CLIPPED_RANGES}.{hashlib.sha1(repr(sorted(clipped.items())).encode()).hexdigest()[:10]}"
    )
    a.engine.add_ranges(name, ranges)
    with a.timer("remedy_clipping"):
        evidence["remedy_output_snr_db"] = {o: _r(v) for o, v in a.output_snr(a.plan, name).items()}
        m = a.measure(name, a.plan, name)
    evidence["remedy_metric"] = m
    best_row = max(useful, key=lambda r: r["measured_output_gain_db"])
    severity = a.remedy_severity(m)
    title = (
        f"{len(useful)} activation range(s) are wasted on rare outliers; clipping "
        f"{best_row['tensor']} to [{best_row['suggested_range'][0]:.3g}, "
        f"{best_row['suggested_range'][1]:.3g}] raises the output SNR of its layer by "
        f"{best_row['measured_output_gain_db']:.1f} dB"
    )
    rec = "Clip these activations to the suggested ranges (activation_clipping)." + (
        f" Measured with all of them clipped: {a.metric_text(m)}." if m else ""
    )
    recipe = [
        f"activation_clipping: {{layers: ['{a.by_output[t].name}'], mode: manual, "
        f"values: [{lo:.6g}, {hi:.6g}]}}"
        for t, (lo, hi) in clipped.items()
    ]
    return Finding("layers.wide_range", SUSPECT, severity, title, evidence, rec, recipe)


def weight_stats(a: LayerAnalysis) -> dict[str, dict[str, Any]]:
    out = {}
    for layer in a.layers:
        scheme = a.plan.weight_scheme(layer)
        node = a.nodes.get(layer.name)
        if scheme is None or node is None or layer.weight not in a.inits:
            continue
        w = numpy_helper.to_array(a.inits[layer.weight])
        axis = weight_axis(node, w.ndim)
        stats = weight_range_stats(w, axis, replace(scheme, per_channel=False))
        if stats:
            stats["per_channel_in_target"] = scheme.per_channel
            stats["depthwise"] = lg.is_depthwise(a.engine.float_model, layer)
            out[layer.name] = stats
    return out


def weight_range_imbalance(a: LayerAnalysis) -> Finding:
    """``layers.weight_range_imbalance``: per-tensor weights whose channel ranges differ
    so much that small channels get few levels; per-channel weights measured per layer
    (output SNR) and for the whole model (metric)."""
    stats = weight_stats(a)
    a.remedies["weights"] = stats
    candidates = [
        (s["median_channel_loss_db"], name)
        for name, s in stats.items()
        if not s["per_channel_in_target"] and s["median_channel_loss_db"] >= WEIGHT_LOSS_DB
    ]
    candidates.sort(reverse=True)
    not_run = [name for _, name in candidates[MAX_WEIGHT_LAYERS:]]
    candidates = candidates[:MAX_WEIGHT_LAYERS]
    evidence: dict[str, Any] = {
        "candidates_not_run": not_run,
        "target_weights": "per-channel" if a.engine.target.weights.per_channel else "per-tensor",
        "min_median_channel_loss_db": WEIGHT_LOSS_DB,
        "min_measured_gain_db": WEIGHT_MIN_MEASURED_GAIN_DB,
        "layers_checked": len(stats),
    }
    if not candidates:
        evidence["largest_median_channel_loss_db"] = _r(
            max((s["median_channel_loss_db"] for s in stats.values()), default=None)
        )
        why = (
            "the target quantizes weights per channel"
            if a.engine.target.weights.per_channel
            else "in every layer the median channel loses less than "
            f"{WEIGHT_LOSS_DB:.0f} dB of weight SNR to the shared scale"
        )
        return Finding(
            "layers.weight_range_imbalance",
            SUSPECT,
            "ok",
            f"No harmful per-channel weight-range imbalance: {why}",
            evidence,
            "",
        )
    pc_target = replace(a.engine.target, weights=replace(a.engine.target.weights, per_channel=True))
    pc_plan = a.plan.replace(target=pc_target)
    variants = [
        Variant.alone(a.engine, a.by_name[n], plan=pc_plan, key=f"per_channel:{n}")
        for _, n in candidates
    ]
    with a.timer("remedy_per_channel"):
        got = a.run_variants(variants)
    rows = []
    for gap, name in candidates:
        s = stats[name]
        before = a.alone_snr(name)
        after = got[f"per_channel:{name}"].min_snr_db()
        rows.append(
            {
                "layer": name,
                "depthwise": s["depthwise"],
                "channels": s["channels"],
                "max_over_median_range": _r(s["max_over_median"]),
                "channels_below_16_levels": s["channels_below_16_levels"],
                "weight_snr_db": {
                    "per_tensor": _r(s["snr_per_tensor_db"]),
                    "per_channel": _r(s["snr_per_channel_db"]),
                },
                "median_channel_loss_db": _r(gap),
                "alone_output_snr_db": {"per_tensor": _r(before), "per_channel": _r(after)},
                "measured_output_gain_db": _r(after - before) if before is not None else None,
            }
        )
    named = [
        r
        for r in rows
        if r["measured_output_gain_db"] is not None
        and r["measured_output_gain_db"] >= WEIGHT_MIN_MEASURED_GAIN_DB
    ]
    named.sort(key=lambda r: -r["measured_output_gain_db"])
    evidence["candidates"] = rows
    evidence["layers"] = [r["layer"] for r in named]
    evidence["depthwise_layers"] = [r["layer"] for r in named if r["depthwise"]]
    if not named:
        return Finding(
            "layers.weight_range_imbalance",
            SUSPECT,
            "info",
            f"{len(rows)} layer(s) have imbalanced weight ranges, but per-channel weights "
            "do not measurably raise their output SNR",
            evidence,
            "",
        )
    with a.timer("remedy_per_channel"):
        evidence["per_channel_output_snr_db"] = {
            o: _r(v) for o, v in a.output_snr(pc_plan).items()
        }
        m_pc = a.measure("per_channel_weights", pc_plan)
    evidence["per_channel_metric"] = m_pc
    allows_pc = a.engine.target.allows_per_channel_weights
    if not allows_pc:
        evidence["per_channel"] = f"not available on this target ({a.engine.target.name})"
    with a.timer("remedy_equalization"):
        eq_engine = a.engine.with_recipe([{"equalization": {}}])
        m_eq = a.measure("equalization", engine=eq_engine)
        evidence["equalization"] = next(
            (r.summary for r in eq_engine.recipe_log if r.command == "equalization"), {}
        )
    evidence["equalization_metric"] = m_eq
    use_pc = allows_pc and m_pc is not None and (m_eq is None or m_pc["gain"] > m_eq["gain"])
    m = m_pc if use_pc else m_eq
    evidence["remedy"] = "per_channel_weights" if use_pc else "equalization"
    evidence["remedy_metric"] = m
    severity = a.remedy_severity(m)
    dw = sum(r["depthwise"] for r in named)
    all_dw = sum(s["depthwise"] for s in stats.values())
    top = ", ".join(f"{r['layer']} (+{r['measured_output_gain_db']:.1f} dB)" for r in named[:3])
    title = (
        f"{len(named)} layer(s) ({dw} of the {all_dw} depthwise) lose precision to per-tensor "
        f"weights: per-channel weights raise their output SNR, e.g. {top}"
    )
    eq_text = f"Measured with equalization: {a.metric_text(m_eq)}." if m_eq else ""
    pc_text = (
        f"Measured with per-channel weights: {a.metric_text(m_pc)}"
        + ("" if allows_pc else f" (not available on {a.engine.target.name})")
        + "."
        if m_pc
        else ""
    )
    if use_pc:
        rec = (
            "Quantize weights per channel (target: {profile: "
            f"{a.engine.target.name}, weights: {{per_channel: true}}}}). {pc_text} {eq_text}"
        )
        recipe = [f"target: {{profile: {a.engine.target.name}, weights: {{per_channel: true}}}}"]
    else:
        rec = (
            "Equalize the channel ranges before per-tensor quantization (cross-layer "
            f"equalization, recipe command equalization). {eq_text} {pc_text}"
        )
        recipe = ["equalization: {}"]
    return Finding(
        "layers.weight_range_imbalance", SUSPECT, severity, title, evidence, rec.strip(), recipe
    )


def bn_missing(a: LayerAnalysis) -> Finding:
    """``layers.bn_missing``: graph evidence from the source graph (before BatchNorm
    folding: a BatchNormalization after the Conv, or the exporter's folded constants) and
    the per-channel statistics of each convolution's pre-activation. A convolution that
    the graph shows without BatchNorm is reported (prediction layers excepted); a warning
    when more than 5% of its channels have |mean| > 5 or std > 3. Statistics alone do not
    decide: EfficientNet-Lite0, trained with BatchNorm, has such channels in 19 of its 49
    convolutions (BatchNorm's learned scale reaches 10), more than the 5-layer CIFAR CNN
    of examples/train_cifar_cnn.py trained without BatchNorm (6% in one layer)."""
    if not a.eval_stats:
        a.evaluation_statistics(quantized=False)
    source = load_model(a.engine.config.model)
    sbn = lg.source_batchnorm(source, a.engine.float_model)
    heads = lg.output_layers(a.engine.float_model, a.layers)
    rows = []
    for layer in a.layers:
        t = a.conv_preactivation(layer)
        if t is None:
            continue
        acc = a.pre_stats.get(t) or a.eval_stats.get(t)
        ms = acc.channel_mean_std() if acc is not None else None
        if ms is None:
            continue
        mean, std = ms
        bad = (np.abs(mean) > BN_MEAN) | (std > BN_STD)
        rows.append(
            {
                "layer": layer.name,
                "source_node": sbn.source_names.get(layer.name),
                "source_weight": sbn.source_weights.get(layer.name),
                "batchnorm": sbn.status.get(layer.name, "unknown"),
                "prediction_layer": layer.name in heads,
                "channels": int(len(mean)),
                "fraction_unnormalized": float(bad.mean()),
                "max_abs_mean": float(np.abs(mean).max()),
                "max_std": float(std.max()),
                "median_std": float(np.median(std)),
                "channel_mean": mean.tolist(),
                "channel_std": std.tolist(),
            }
        )

    def unnormalized(r: dict[str, Any]) -> bool:
        return not r["prediction_layer"] and r["fraction_unnormalized"] > BN_FRACTION

    missing = [r for r in rows if r["batchnorm"] == "none" and not r["prediction_layer"]]
    flagged = [r for r in missing if unnormalized(r)]
    possible = [r for r in rows if r["batchnorm"] == "unknown" and unnormalized(r)]
    counts = {
        k: sum(r["batchnorm"] == k for r in rows)
        for k in ("batchnorm", "folded", "none", "unknown")
    }
    evidence: dict[str, Any] = {
        "source_model": str(a.engine.config.model),
        "source_has_batchnorm": sbn.source_has_batchnorm,
        "convolutions": len(rows),
        "graph_evidence": counts,
        "thresholds": {
            "abs_mean": BN_MEAN,
            "std": BN_STD,
            "fraction_of_channels": BN_FRACTION,
        },
        "images": len(a.images),
        "without_batchnorm": [r["layer"] for r in missing],
        "unnormalized": [r["layer"] for r in flagged],
        "unnormalized_without_graph_evidence": [r["layer"] for r in possible],
        "layers": [
            {k: v for k, v in r.items() if k not in ("channel_mean", "channel_std")} for r in rows
        ],
    }
    a.remedies["preactivations"] = rows
    rec = (
        "Retrain with a BatchNorm after these convolutions (it is folded away at export "
        "and costs nothing at inference): unnormalized, channel-imbalanced activations "
        "waste the 8-bit grid. Without retraining: per-channel weights, equalization and "
        "activation clipping soften the effect (see layers.weight_range_imbalance, "
        "layers.wide_range)."
    )
    where = (
        "the source graph has BatchNorms, but not after these"
        if sbn.source_has_batchnorm
        else "their weights are trained parameters as is: no BatchNorm was folded in"
    )
    if flagged:
        worst = max(flagged, key=lambda r: r["fraction_unnormalized"])
        title = (
            f"{len(missing)} convolution(s) have no BatchNorm ({where}); {len(flagged)} "
            f"of them have unnormalized pre-activations, worst {worst['layer']}: "
            f"{100 * worst['fraction_unnormalized']:.0f}% of channels with |mean| > "
            f"{BN_MEAN:g} or std > {BN_STD:g} (max |mean| {worst['max_abs_mean']:.1f}, "
            f"max std {worst['max_std']:.1f})"
        )
        return Finding("layers.bn_missing", SUSPECT, "warning", title, evidence, rec)
    if missing:
        worst = max(missing, key=lambda r: r["fraction_unnormalized"])
        title = (
            f"{len(missing)} convolution(s) have no BatchNorm ({where}), but their "
            f"pre-activations are still normalized (at most "
            f"{100 * worst['fraction_unnormalized']:.0f}% of a layer's channels with "
            f"|mean| > {BN_MEAN:g} or std > {BN_STD:g}): a low risk for quantization"
        )
        return Finding("layers.bn_missing", SUSPECT, "info", title, evidence, rec)
    if possible:
        title = (
            f"{len(possible)} convolution(s) have unnormalized pre-activations, and the "
            "graph cannot tell whether they had a BatchNorm (folded at export?)"
        )
        return Finding("layers.bn_missing", SUSPECT, "info", title, evidence, rec)
    heads_without = sum(r["batchnorm"] != "batchnorm" and r["prediction_layer"] for r in rows)
    parts = []
    if counts["batchnorm"]:
        parts.append(f"{counts['batchnorm']} convolution(s) are followed by a BatchNorm")
    if counts["folded"]:
        parts.append(f"{counts['folded']} had a BatchNorm folded in at export")
    if heads_without:
        parts.append(f"{heads_without} prediction layer(s) have none, as they should")
    note = "; ".join(parts) if parts else "the model has no convolutions"
    evidence["prediction_layers_without_batchnorm"] = heads_without
    return Finding(
        "layers.bn_missing", SUSPECT, "ok", f"No missing BatchNorm: {note}", evidence, ""
    )


def concat_output(a: LayerAnalysis) -> list[Finding]:
    """``layers.concat_output``: per model output built by a Concat, the range of each
    part, its SNR under its own range and under the shared output range (measured on the
    captured values), and the metric with the Concat cut off (float, on the host) or at
    16 bits."""
    if a.trees and not a.eval_stats:
        a.evaluation_statistics(quantized=False)
    findings = []
    producer = lg.producers(a.engine.float_model)
    for tree in a.trees:
        parts = []
        for leaf in tree.leaves:
            lo, hi = a.ranges.get(leaf, (np.nan, np.nan))
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            snr = a.leaf_snr.get(leaf, {})
            parts.append(
                {
                    "tensor": leaf,
                    "producer": producer[leaf].name if leaf in producer else None,
                    "range": [lo, hi],
                    "width": hi - lo,
                    "own_range_snr_db": _r(snr.get("own_range_db")),
                    "shared_range_snr_db": _r(snr.get("shared_range_db")),
                }
            )
        widths = [p["width"] for p in parts if np.isfinite(p["width"]) and p["width"] > 0]
        top = a.by_name.get(tree.concats[0])
        shared = a.ranges.get(top.output) if top is not None else None
        ratio = max(widths) / min(widths) if widths else 1.0
        losses = [
            p["own_range_snr_db"] - p["shared_range_snr_db"]
            for p in parts
            if p["own_range_snr_db"] is not None and p["shared_range_snr_db"] is not None
        ]
        loss = max(losses) if losses else 0.0
        evidence: dict[str, Any] = {
            "output": tree.output,
            "concats": tree.concats,
            "shared_range": list(shared) if shared else None,
            "parts": parts,
            "range_ratio": _r(ratio),
            "worst_part_snr_loss_db": _r(loss),
            "thresholds": {
                "range_ratio": CONCAT_RANGE_RATIO,
                "snr_loss_db": CONCAT_MIN_LOSS_DB,
            },
            "images": len(a.images),
        }
        quantized = top is not None and a.scheme(top.output) is not None
        if not quantized or ratio < CONCAT_RANGE_RATIO or loss < CONCAT_MIN_LOSS_DB:
            why = (
                "the Concat is not quantized"
                if not quantized
                else f"its parts' ranges differ by {ratio:.1f}x, the worst part loses {loss:.1f} dB"
            )
            findings.append(
                Finding(
                    "layers.concat_output",
                    SUSPECT,
                    "ok",
                    f"Output {tree.output} joins {len(parts)} parts by Concat harmlessly: {why}",
                    evidence,
                    "",
                )
            )
            continue
        concat_layers = [literal(c) for c in tree.concats if c in a.by_name]
        remedies = {"cut_before_concat": a.plan.disable_layers(concat_layers)}
        if PRECISION_16 in a.engine.target.precisions:
            remedies["output_16bit"] = a.plan.set_precision(concat_layers, PRECISION_16)
        measured: dict[str, Any] = {}
        with a.timer("remedy_concat"):
            # the shared scale in isolation: only the Concat(s) quantized, against float
            evidence["concat_alone"] = a.cost_alone(
                f"concat_alone:{tree.output}", a.plan.only(concat_layers)
            )
            for label, plan in remedies.items():
                measured[label] = {
                    "output_snr_db": {o: _r(v) for o, v in a.output_snr(plan).items()},
                    "metric": a.measure(f"{label}:{tree.output}", plan),
                }
            evidence["baseline_output_snr_db"] = {o: _r(v) for o, v in a.output_snr(a.plan).items()}
        evidence["remedies"] = measured
        best_label = max(
            measured,
            key=lambda k: (
                (measured[k]["metric"] or {}).get("gain", 0.0)
                if a.metrics
                else min(measured[k]["output_snr_db"].values())
            ),
        )
        m = measured[best_label]["metric"]
        narrow = min(parts, key=lambda p: p["width"])
        wide = max(parts, key=lambda p: p["width"])
        title = (
            f"Output {tree.output} concatenates parts with {ratio:.0f}x different ranges "
            f"({wide['tensor']} [{wide['range'][0]:.3g}, {wide['range'][1]:.3g}] and "
            f"{narrow['tensor']} [{narrow['range'][0]:.3g}, {narrow['range'][1]:.3g}]): "
            f"sharing one scale costs a part {loss:.1f} dB"
        )
        what = {
            "cut_before_concat": "cut the model before the Concat (end_nodes) and "
            "concatenate on the host",
            "output_16bit": "quantize the Concat output with 16 bits",
        }
        rec = "Best measured remedy: " + what[best_label] + (f": {a.metric_text(m)}." if m else ".")
        for other, got in measured.items():
            if other != best_label and got["metric"]:
                rec += f" Alternative, {what[other]}: {a.metric_text(got['metric'])}."
        alone = evidence["concat_alone"]
        if alone:
            rec += (
                f" By itself (only the Concat quantized) the shared scale costs "
                f"{alone['drop']:.2f} {alone['metric']} points (95% CI "
                f"{alone['drop_ci95'][0]:.2f} … {alone['drop_ci95'][1]:.2f}, p = "
                f"{alone['p_value']:.2g})."
            )
        ends = [p["producer"] or p["tensor"] for p in parts]
        rec += f" To cut: end_nodes: {ends} (and concatenate in the host postprocessing)."
        recipe = (
            []  # a cut is a config change (end_nodes), not a recipe command
            if best_label == "cut_before_concat"
            else [f"quantization_param: {{layers: {tree.concats}, precision: {PRECISION_16}}}"]
        )
        findings.append(
            Finding(
                "layers.concat_output",
                SUSPECT,
                a.remedy_severity(m),
                title,
                evidence,
                rec,
                recipe,
            )
        )
    return findings


def activation_function(a: LayerAnalysis) -> Finding:
    """``layers.activation_function``: activations that quantize poorly, with the measured
    sensitivity of their layers and the on-layer SNR lost across them."""
    uses = lg.activation_functions(a.engine.float_model)
    evidence: dict[str, Any] = {"found": {}}
    if not uses:
        return Finding(
            "layers.activation_function",
            SUSPECT,
            "ok",
            "No activation function that quantizes poorly (SiLU/Swish, GELU, Mish …)",
            evidence,
            "",
        )
    involved: set[str] = set()
    kinds: dict[str, dict[str, Any]] = {}
    for use in uses:
        names = [
            layer.name
            for layer in a.layers
            if layer.name in use.nodes or layer.output == use.output
        ]
        involved.update(names)
        k = kinds.setdefault(
            use.kind,
            {
                "count": 0,
                "why": lg.POOR_ACTIVATIONS.get(use.kind, ""),
                "layers": [],
                "alone_snr_db": [],
                "snr_lost_across_db": [],
            },
        )
        k["count"] += 1
        k["layers"] += names
        k["alone_snr_db"] += [s for n in names if (s := a.alone_snr(n)) is not None]
        before, after = a.accumulated.get(use.input), a.accumulated.get(use.output)
        if before is not None and after is not None:
            k["snr_lost_across_db"].append(before - after)
    others = [s for n in a.alone if n not in involved and (s := a.alone_snr(n)) is not None]
    flagged_low = set(a.low_snr_layers)
    warn = False
    for k in kinds.values():
        k["median_alone_snr_db"] = _r(np.median(k["alone_snr_db"])) if k["alone_snr_db"] else None
        k["median_snr_lost_across_db"] = (
            _r(np.median(k["snr_lost_across_db"])) if k["snr_lost_across_db"] else None
        )
        k["low_snr_layers"] = sorted(set(k["layers"]) & flagged_low)
        if (
            k["median_alone_snr_db"] is not None
            and others
            and k["median_alone_snr_db"] <= float(np.median(others)) - ACTIVATION_GAP_DB
        ) or k["low_snr_layers"]:
            warn = True
        k["alone_snr_db"] = [_r(v) for v in k["alone_snr_db"]]
        k["snr_lost_across_db"] = [_r(v) for v in k["snr_lost_across_db"]]
    evidence["found"] = kinds
    evidence["median_alone_snr_other_layers_db"] = _r(np.median(others)) if others else None
    summary = ", ".join(f"{k['count']} {kind}" for kind, k in kinds.items())
    title = f"The model uses activations that quantize poorly: {summary}"
    rec = (
        "Where the target supports it, keep these activations fused in their layer (one "
        "quantizer after the whole activation) or quantize their layers with 16 bits; when "
        "retraining is possible, ReLU/ReLU6 quantize best."
    )
    return Finding(
        "layers.activation_function",
        SUSPECT,
        "warning" if warn else "info",
        title,
        evidence,
        rec,
    )
