"""Suspect 4: where in the network accuracy is lost, and why (DESIGN §4 step 4).

Every finding rests on a measurement, and every remedy it recommends is measured too:

- ``layers.low_snr``: per-layer sensitivity (only layer *i* quantized, its weights and its
  output; SNR at every model output) and the on-layer SNR with everything quantized
  (accumulated error); layers at ≤ 10 dB or low IQR outliers are 16-bit candidates, and the
  model with them at 16 bits is measured;
- ``quantization.weights_sensitive`` / ``quantization.activations_sensitive``: the whole
  model with only its weights / only its activations quantized, against ground truth;
- ``layers.wide_range``: activation ranges wasted on rare outliers (histograms of the
  calibration images); the best clipping range per tensor, and the SNR at the model outputs
  that it buys when applied (measured by running the layer clipped), and the metric with every
  useful clip applied;
- ``layers.weight_range_imbalance``: per-channel weight ranges under per-tensor weights (the
  depthwise failure); what per-channel weights buy per layer (model-output SNR) and for the
  whole model (metric);
- ``layers.bn_missing``: convolutions that the source graph (before BatchNorm folding) shows
  without a BatchNorm, graded by their pre-activation statistics (|mean| > 5 or std > 3 in
  > 5% of the channels);
- ``layers.concat_output``: model outputs assembled by a Concat from tensors of very different
  ranges (boxes and scores); the per-part SNR under the shared quantization and the metric
  with the Concat cut off (done on the host) or at 16 bits;
- ``layers.activation_function``: SiLU/Swish, GELU, Mish … and what they measurably cost.

Float and quantized tensors are compared only where both graphs compute the same thing: at
each layer's output *after* its fused activation (``LayerInfo.output``), where the QDQ model
quantizes.

The per-layer sweep runs on :class:`~quantdoctor.engine.subgraph.LayerSweep`: one float
capture, then each variant rebuilds only its layer's chunk of the graph and runs what is
downstream (EfficientNet-Lite0, 60 layers, 64 images: about 30 float evaluations).

>>> result = layer_checks(Engine(config), make_task(config))        # doctest: +SKIP
>>> [f.id for f in result.findings if f.severity == "error"]        # doctest: +SKIP
['layers.low_snr', 'quantization.weights_sensitive', 'layers.weight_range_imbalance']
>>> result.evidence["layers"][1]["alone_snr_db"]                     # doctest: +SKIP
{'logits': 18.1}

One check alone, on the shared measurements of a :class:`LayerAnalysis`:

>>> LayerAnalysis(engine, task, images=64).concat_output()          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import ImageSet
from ..engine import Engine
from ..engine.subgraph import LayerSweep, OutputNoise, Variant
from ..progress import StepTimer
from ..quant import LayerInfo, QuantPlan, Ranges
from ..report import Finding, to_json_types
from ..stats import snr_db
from ..tasks import Task, TaskScores
from . import layer_findings as lf
from . import layer_graph as lg
from .evaluation import compare, score_context
from .layer_stats import (
    TensorStats,
    qdq,
    sum_sq,
)

#: Images of the evaluation split used for the sweep and the tensor statistics.
SWEEP_IMAGES = 64
#: Prefix of the split names the analysis registers with the engine (its images).
SPLIT = "layer_sweep"  # an engine split name, not a finding ID

#: Images per capture when gathering tensor statistics (memory: every layer output of
#: this many images, float and quantized).
STATS_CHUNK = 8
#: Float/quantized value pairs kept per tensor for the report's scatter plots, and how many
#: tensors (the lowest on-layer SNR, flagged ones first) keep them in the evidence.
SCATTER_PAIRS = 400
SCATTER_TENSORS = 6


@dataclass
class LayerResult:
    """The findings of the layer step (checklist order) and the tables behind them, as plain
    JSON types (for findings.json and the HTML report's plots):

    - ``layers``: one row per quantized layer (graph order; ``<input>`` first): SNR at each
      output with the layer alone quantized, on-layer SNR with everything quantized, weight
      SNR per-tensor vs per-channel;
    - ``tensors``: per quantized tensor: calibrated range, bits, statistics, percentiles,
      per-channel min/max and a histogram over the evaluation images (``edges``,
      ``counts``, ``under``/``over``) and over the calibration images;
    - ``remedies``: ``whole_model`` (native, weights only, activations only, everything),
      ``weights`` (per layer: per-channel ranges and SNRs), ``preactivations`` (per
      convolution: channel means and stds), ``metrics`` (every remedy measured);
    - ``cost``: the sweep's chunks, variants, runs and seconds, and each step's seconds."""

    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)


def _jsonable(x: Any) -> Any:
    """JSON types with floats to 6 significant digits (per-channel tables of a large model
    are long)."""
    return to_json_types(x, significant=6)


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _value_pairs(ref: np.ndarray, q: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of :data:`SCATTER_PAIRS` positions of one batch, float and quantized."""
    flat_ref, flat_q = ref.reshape(-1), q.reshape(-1)
    n = min(SCATTER_PAIRS, flat_ref.size)
    idx = np.random.default_rng(seed).choice(flat_ref.size, n, replace=False)
    return flat_ref[idx].astype(np.float32), flat_q[idx].astype(np.float32)


def split_name(n: int, seed: int = 0) -> str:
    """The engine split under which :func:`sweep_images` registers its ``n`` images."""
    return f"{SPLIT}.{n}.{seed}"


def sweep_images(engine: Engine, n: int = SWEEP_IMAGES, seed: int = 0) -> ImageSet:
    """A seeded sample of ``n`` evaluation images, preferring images that are not also
    calibration images (their ranges would cover them by construction); registered with the
    engine as split :func:`split_name` (``n``, ``seed``), so its outputs are cached."""
    name = split_name(n, seed)
    try:
        return engine.images(name)
    except ValueError:
        pass
    ev = engine.images("evaluation")
    cal = engine.images("calibration")
    cal_hashes = {hashlib.sha1(p.tobytes()).digest() for p in cal.pixels}
    held = [
        i for i, p in enumerate(ev.pixels) if hashlib.sha1(p.tobytes()).digest() not in cal_hashes
    ]
    pool = np.asarray(held if len(held) >= min(n, len(ev)) else range(len(ev)))
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(pool)[: min(n, len(pool))])
    fixed = engine.input.fixed_batch
    if fixed and fixed > 1 and len(keep) > fixed:
        keep = keep[: len(keep) - len(keep) % fixed]  # whole batches for fixed-batch models
    images = ev.subset(keep)
    engine.add_split(name, images)
    return images


def _subsets(images: ImageSet, size: int) -> Iterator[ImageSet]:
    for start in range(0, len(images), size):
        yield images.subset(range(start, min(start + size, len(images))))


class LayerAnalysis:
    """Shared state of the layer step: the images, the sweep, the statistics and the metric
    measurements, computed once and used by every check. Each check is a method returning
    its finding(s); :func:`layer_checks` runs them all.

    ``context`` measures metrics (``int8``: ONNX Runtime's fused integer kernels, the fast
    path; ``quantized``: float emulation); ``metrics=False`` skips every metric measurement
    (findings then rest on SNR alone)."""

    def __init__(
        self,
        engine: Engine,
        task: Task,
        images: int = SWEEP_IMAGES,
        *,
        seed: int | None = None,
        context: str = "int8",
        metrics: bool = True,
        max_drop: float | None = None,
    ) -> None:
        self.engine = engine
        self.task = task
        self.seed = engine.config.seed if seed is None else seed
        self.context = context
        self.max_drop = engine.config.max_drop if max_drop is None else max_drop
        self.images = sweep_images(engine, images, self.seed)
        self.split = split_name(images, self.seed)
        self.plan = engine.plan()
        self.ranges: Ranges = engine.ranges()
        self.layers = [layer for layer in engine.layers if self.plan.layer_enabled(layer)]
        self.by_name = {layer.name: layer for layer in engine.layers}
        self.by_output = {layer.output: layer for layer in engine.layers}
        self.nodes = {n.name: n for n in engine.float_model.graph.node}
        self.inits = {i.name: i for i in engine.float_model.graph.initializer}
        ev = engine.images("evaluation")
        self.metrics = metrics and (ev.labels is not None or ev.boxes is not None)
        self.metrics_note = None if self.metrics else ("disabled" if not metrics else "no labels")
        self._sweep: LayerSweep | None = None
        self.alone: dict[str, OutputNoise] = {}
        self.eval_stats: dict[str, TensorStats] = {}
        self.cal_stats: dict[str, TensorStats] = {}
        self.pre_stats: dict[str, TensorStats] = {}
        self.accumulated: dict[str, float] = {}
        #: per tensor: (float values, quantized values) at the same positions (a sample)
        self.pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.leaf_snr: dict[str, dict[str, float]] = {}
        self._scores: dict[str, tuple[TaskScores, Any]] = {}
        self.measured: dict[str, dict[str, Any]] = {}
        self.remedies: dict[str, Any] = {}
        self.low_snr_layers: list[str] = []
        self.trees = lg.concat_trees(engine.float_model)
        self.timer = StepTimer()

    # --- helpers ---------------------------------------------------------------------------
    @property
    def sweep(self) -> LayerSweep:
        if self._sweep is None:
            self._sweep = LayerSweep(self.engine, self.images)
        return self._sweep

    def scheme(self, tensor: str) -> Any:
        """The activation scheme the plan gives ``tensor`` (None: not quantized)."""
        layer = self.by_output.get(tensor)
        if layer is None and tensor == self.engine.input.name:
            return self.plan.activation_scheme(None, tensor)
        return self.plan.activation_scheme(layer, tensor) if layer else None

    def conv_preactivation(self, layer: LayerInfo) -> str | None:
        node = self.nodes.get(layer.name)
        return node.output[0] if node is not None and node.op_type == "Conv" else None

    def context_for(self, plan: QuantPlan | None) -> str:
        """The measurement context for ``plan``: float emulation where weights stay float
        under quantized activations, because ONNX Runtime's integer path (its
        WeightBiasQuantization optimizer) quantizes such float weights itself when it fuses
        DQ → Conv → Q (measured on EfficientNet-Lite0, activations only: 8.1 dB output SNR
        in ``int8`` against 25.5 dB emulated)."""
        if self.context == "int8" and plan is not None and not plan.quantize_weights:
            return "quantized"
        return self.context

    def _baseline(self) -> tuple[TaskScores, Any]:
        return self.score("quantized_baseline", self.context, None)

    def score(
        self,
        label: str,
        context: str,
        plan: QuantPlan | None,
        ranges: str = "calibration",
        engine: Engine | None = None,
    ) -> tuple[TaskScores, Any]:
        if label not in self._scores:
            kw: dict[str, Any] = {"ranges": ranges}
            if plan is not None:
                kw["plan"] = plan
            self._scores[label] = score_context(
                engine or self.engine, self.task, context, self.seed, **kw
            )
        return self._scores[label]

    def measure(
        self,
        label: str,
        plan: QuantPlan | None = None,
        ranges: str = "calibration",
        engine: Engine | None = None,
    ) -> dict[str, Any] | None:
        """The metric of the model quantized as ``plan``/``ranges`` on the evaluation images,
        and its gain over the recipe's quantized model (paired CI, paired test). ``engine``:
        a sibling engine with more recipe commands (:meth:`Engine.with_recipe`), measured on
        the same images."""
        if not self.metrics:
            return None
        if label in self.measured:
            return self.measured[label]
        base_scores, base = self._baseline()
        context = self.context_for(plan)
        scores, summary = self.score(label, context, plan, ranges, engine)
        cmp = compare("quantized", base_scores, label, scores, self.seed)
        out = {
            "context": context,
            "metric": summary.metric,
            "value": summary.value,
            "ci95": list(summary.ci95),
            "n": summary.n,
            "baseline": base.value,
            "baseline_ci95": list(base.ci95),
            "gain": cmp["difference"],
            "gain_ci95": cmp["ci95"],
            "p_value": cmp["p_value"],
            "test": cmp["test"],
        }
        self.measured[label] = out
        return out

    def cost_alone(self, label: str, plan: QuantPlan) -> dict[str, Any] | None:
        """The metric drop, against float, of the model quantized as ``plan`` (typically a
        few layers alone): what those layers cost by themselves."""
        if not self.metrics:
            return None
        native_scores, native = self.score("native", "fp_optimized", None)
        context = self.context_for(plan)
        scores, summary = self.score(label, context, plan)
        cmp = compare("native", native_scores, label, scores, self.seed)
        return {
            "context": context,
            "metric": summary.metric,
            "native": native.value,
            "value": summary.value,
            "drop": -cmp["difference"],
            "drop_ci95": [-cmp["ci95"][1], -cmp["ci95"][0]],
            "p_value": cmp["p_value"],
            "test": cmp["test"],
            "n": summary.n,
        }

    def output_snr(self, plan: QuantPlan, ranges: str = "calibration") -> dict[str, float]:
        """SNR (dB) at each float model output on the sweep images of the whole model
        quantized as ``plan`` (in its measurement context, :meth:`context_for`)."""
        ref = self.engine.outputs("fp_optimized", self.split)
        got = self.engine.outputs(self.context_for(plan), self.split, plan=plan, ranges=ranges)
        out = {}
        for name in self.sweep.outputs:
            r = ref[name].astype(np.float64)
            out[name] = snr_db(float((r**2).sum()), float(((got[name] - r) ** 2).sum()))
        return out

    @staticmethod
    def significant_gain(m: dict[str, Any] | None) -> bool:
        return bool(m and m["p_value"] < 0.05 and m["gain_ci95"][0] > 0)

    def remedy_severity(self, m: dict[str, Any] | None) -> str:
        """The severity of a measured problem by what its measured remedy buys: ``error``
        when it recovers significantly more than max_drop; ``info`` when its gain is not
        significant and a gain beyond max_drop is excluded (upper CI bound); else
        ``warning`` (including: not measured, or too few images to tell)."""
        if m is None:
            return "warning"
        if self.significant_gain(m) and m["gain"] > self.max_drop:
            return "error"
        if not self.significant_gain(m) and m["gain_ci95"][1] <= self.max_drop:
            return "info"
        return "warning"

    @staticmethod
    def metric_text(m: dict[str, Any] | None) -> str:
        if not m:
            return ""
        return (
            f"{m['metric']} {m['baseline']:.2f} → {m['value']:.2f} ({m['gain']:+.2f} points, "
            f"95% CI {m['gain_ci95'][0]:+.2f} … {m['gain_ci95'][1]:+.2f}, p = "
            f"{m['p_value']:.2g}, n = {m['n']}, {m['context']})"
        )

    # --- measurements ------------------------------------------------------------------------
    def tensor_statistics(self) -> None:
        """:meth:`calibration_statistics` and :meth:`evaluation_statistics`."""
        self.calibration_statistics()
        self.evaluation_statistics()

    def _quantized_outputs(self) -> list[str]:
        return [layer.output for layer in self.layers if layer.output in self.ranges]

    def calibration_statistics(self) -> None:
        """Histograms of every quantized tensor over the calibration images: what the ranges
        were calibrated on, and where clipping ranges are chosen."""
        engine = self.engine
        outs = self._quantized_outputs()
        inp = engine.input.name
        with self.timer("statistics_calibration"):
            for name in [inp, *outs]:
                lo, hi = self.ranges.get(name, (0.0, 0.0))
                self.cal_stats[name] = TensorStats(lo, hi, per_channel=False)
            cal = engine.images("calibration")
            for sub in _subsets(cal, STATS_CHUNK):
                batches = zip(
                    engine.batches(sub), engine.capture("fp_optimized", outs, sub), strict=True
                )
                for x, got in batches:
                    self.cal_stats[inp].add(x)
                    for name in outs:
                        self.cal_stats[name].add(got[name])

    def evaluation_statistics(self, quantized: bool = True) -> None:
        """Over the sweep images: statistics and per-channel ranges of every quantized tensor,
        convolution pre-activations, Concat parts under their own and the shared range, and
        (``quantized``) the on-layer SNR with everything quantized, float and quantized
        models captured side by side, :data:`STATS_CHUNK` images at a time."""
        engine = self.engine
        outs = self._quantized_outputs()
        pre = [t for layer in self.layers if (t := self.conv_preactivation(layer)) is not None]
        leaves = [leaf for tree in self.trees for leaf in tree.leaves]
        float_names = list(dict.fromkeys(outs + pre + leaves))
        inp = engine.input.name
        with self.timer("statistics_evaluation"):
            for name in [inp, *outs]:
                lo, hi = self.ranges.get(name, (0.0, 0.0))
                self.eval_stats[name] = TensorStats(lo, hi)
            self.pre_stats = {t: TensorStats(0.0, 1.0, bins=8) for t in pre if t not in outs}
            joint = self._joint_ranges()
            sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in [inp, *outs]}
            leaf_sums: dict[str, list[float]] = {leaf: [0.0, 0.0, 0.0] for leaf in joint}
            in_scheme = self.scheme(inp)
            for sub in _subsets(self.images, STATS_CHUNK):
                qs = engine.capture("quantized", outs, sub) if quantized else None
                for x, f in zip(
                    engine.batches(sub),
                    engine.capture("fp_optimized", float_names, sub),
                    strict=True,
                ):
                    q = next(qs) if qs is not None else None
                    self.eval_stats[inp].add(x)
                    if in_scheme is not None and inp in self.ranges:
                        sums[inp][0] += sum_sq(x)
                        sums[inp][1] += sum_sq(qdq(x, *self.ranges[inp], in_scheme) - x)
                    for name in outs:
                        ref = f[name]
                        self.eval_stats[name].add(ref)
                        if q is not None:
                            sums[name][0] += sum_sq(ref)
                            sums[name][1] += sum_sq(q[name] - ref)
                            if name not in self.pairs:
                                self.pairs[name] = _value_pairs(ref, q[name], self.seed)
                    for name, acc in self.pre_stats.items():
                        acc.add(f[name])
                    for leaf, (own, shared, scheme) in joint.items():
                        v = f[leaf]
                        leaf_sums[leaf][0] += sum_sq(v)
                        leaf_sums[leaf][1] += sum_sq(qdq(v, *own, scheme) - v)
                        leaf_sums[leaf][2] += sum_sq(qdq(v, *shared, scheme) - v)
            for name, (s, n) in sums.items():
                if s > 0 or n > 0:
                    self.accumulated[name] = snr_db(s, n)
            for leaf, (p, own, shared) in leaf_sums.items():
                self.leaf_snr[leaf] = {
                    "own_range_db": snr_db(p, own),
                    "shared_range_db": snr_db(p, shared),
                }

    def _joint_ranges(self) -> dict[str, tuple[tuple[float, float], tuple[float, float], Any]]:
        """Per Concat part: (its own range, the range of the output it is quantized in, the
        scheme), for Concats the plan quantizes."""
        out = {}
        for tree in self.trees:
            top = self.by_name.get(tree.concats[0])
            if top is None:
                continue
            scheme = self.plan.activation_scheme(top, top.output)
            if scheme is None or top.output not in self.ranges:
                continue
            for leaf in tree.leaves:
                if leaf in self.ranges:
                    out[leaf] = (self.ranges[leaf], self.ranges[top.output], scheme)
        return out

    def run_sweep(self, advance: Callable[[int], None] | None = None) -> None:
        """Every quantized layer alone (and the graph input alone), noise at the outputs."""
        variants = [Variant.alone(self.engine, layer) for layer in self.layers]
        if self.plan.activation_scheme(None, self.engine.input.name) is not None:
            variants.insert(0, Variant.input_alone(self.engine))
        with self.timer("sweep"):
            self.alone.update(self.sweep.run(variants, advance))

    def alone_snr(self, name: str) -> float | None:
        noise = self.alone.get(name)
        return noise.min_snr_db() if noise is not None else None

    def run_variants(self, variants: list[Variant]) -> dict[str, OutputNoise]:
        missing = [v for v in variants if v.key not in self.alone]
        base = [
            Variant.alone(self.engine, self.by_name[v.layers[0]])
            for v in missing
            if v.layers and v.layers[0] not in self.alone
        ]
        got = self.sweep.run(list({v.key: v for v in base + missing}.values()))
        self.alone.update({k: v for k, v in got.items() if k in {b.key for b in base}})
        return got

    # --- findings (layer_findings) -------------------------------------------------------
    def whole_model(self) -> list[Finding]:
        return lf.whole_model(self)

    def low_snr(self) -> Finding:
        return lf.low_snr(self)

    def wide_range(self) -> Finding:
        return lf.wide_range(self)

    def weight_range_imbalance(self) -> Finding:
        return lf.weight_range_imbalance(self)

    def bn_missing(self) -> Finding:
        return lf.bn_missing(self)

    def concat_output(self) -> list[Finding]:
        return lf.concat_output(self)

    def activation_function(self) -> Finding:
        return lf.activation_function(self)

    # --- evidence ----------------------------------------------------------------------------
    def layer_table(self) -> list[dict[str, Any]]:
        rows = []
        weights = self.remedies.get("weights", {})
        inp = self.engine.input.name
        if "<input>" in self.alone:
            rows.append(
                {
                    "name": "<input>",
                    "op_type": "input",
                    "output": inp,
                    "alone_snr_db": {o: _r(v) for o, v in self.alone["<input>"].snr_db().items()},
                    "alone_snr_min_db": _r(self.alone["<input>"].min_snr_db()),
                    "accumulated_snr_db": _r(self.accumulated.get(inp)),
                }
            )
        for layer in self.layers:
            noise = self.alone.get(layer.name)
            w = weights.get(layer.name)
            rows.append(
                {
                    "name": layer.name,
                    "op_type": layer.op_type,
                    "output": layer.output,
                    "fused_activation": layer.fused_activation,
                    "weight": layer.weight,
                    "alone_snr_db": {o: _r(v) for o, v in noise.snr_db().items()}
                    if noise
                    else None,
                    "alone_snr_min_db": _r(noise.min_snr_db()) if noise else None,
                    "accumulated_snr_db": _r(self.accumulated.get(layer.output)),
                    "weight_snr_db": {
                        "per_tensor": _r(w["snr_per_tensor_db"]),
                        "per_channel": _r(w["snr_per_channel_db"]),
                    }
                    if w
                    else None,
                }
            )
        return rows

    def tensor_table(self) -> dict[str, Any]:
        out = {}
        for name, stats in self.eval_stats.items():
            cal = self.cal_stats.get(name)
            scheme = self.scheme(name)
            entry: dict[str, Any] = {
                "calibrated_range": list(self.ranges[name]) if name in self.ranges else None,
                "bits": scheme.bits if scheme is not None else None,
                "evaluation": {**stats.summary(), "histogram": stats.report_histogram()},
                "accumulated_snr_db": _r(self.accumulated.get(name)),
            }
            if cal is not None and cal.count:
                entry["calibration"] = {
                    "min": cal.minimum,
                    "max": cal.maximum,
                    "percentiles": cal.summary()["percentiles"],
                    "histogram": cal.report_histogram(),
                }
            out[name] = entry
        return out

    def scatter_table(self, findings: list[Finding]) -> dict[str, Any]:
        """Float vs quantized values (everything quantized) of the tensors worth a look: those
        the findings name, then the lowest on-layer SNR, at most :data:`SCATTER_TENSORS`."""
        named: list[str] = []
        for f in findings:
            if f.severity in ("error", "warning"):
                ev = f.evidence
                for row in ev.get("flagged", []) + ev.get("candidates", []):
                    if not isinstance(row, dict):
                        continue
                    layer = self.by_name.get(row.get("layer", ""))
                    named.append(row.get("tensor") or (layer.output if layer else ""))
        by_snr = sorted(self.accumulated, key=lambda t: self.accumulated[t])
        chosen = [t for t in dict.fromkeys(named + by_snr) if t in self.pairs]
        return {
            t: {
                "float": np.round(self.pairs[t][0], 5),
                "quantized": np.round(self.pairs[t][1], 5),
                "accumulated_snr_db": _r(self.accumulated.get(t)),
            }
            for t in chosen[:SCATTER_TENSORS]
        }

    def cost(self) -> dict[str, Any]:
        if self._sweep is None:
            return {"timings_s": self.timer.seconds}
        c = self._sweep.cost
        return {
            "layers_per_chunk": self._sweep.chunked.layers_per_chunk,
            "chunks": len(self._sweep.chunked.chunks),
            "captured_tensors": len(self._sweep.chunked.boundary),
            "variants": c.variants,
            "variants_from_cache": c.from_store,
            "chunk_runs": c.chunk_runs,
            # by node count: the work of the variants in whole-model evaluations
            "variant_work_in_model_evaluations": round(c.model_evaluations, 2),
            "captures": c.captures,
            "capture_s": round(c.capture_s, 3),
            "build_s": round(c.build_s, 3),
            "sessions_s": round(c.sessions_s, 3),
            "run_s": round(c.run_s, 3),
            "timings_s": self.timer.seconds,
        }


def layer_checks(
    engine: Engine,
    task: Task,
    *,
    images: int = SWEEP_IMAGES,
    max_drop: float | None = None,
    seed: int | None = None,
    context: str = "int8",
    metrics: bool = True,
    sweep: bool = True,
    on_finding: Callable[[Finding], None] | None = None,
) -> LayerResult:
    """Run every per-layer check (DESIGN §4 step 4) on ``images`` evaluation images.

    ``context`` measures the metrics of remedies (``int8``: fused integer kernels, the fast
    path; ``quantized``: float emulation); ``metrics=False`` skips them (SNR only);
    ``sweep=False`` skips the per-layer sensitivity sweep (and ``layers.low_snr``).
    ``on_finding`` is called after each finding so that results can be saved as they come.
    Deterministic for a given ``seed`` (default: ``config.seed``)."""
    a = LayerAnalysis(
        engine, task, images, seed=seed, context=context, metrics=metrics, max_drop=max_drop
    )
    result = LayerResult()

    def add(finding: Finding) -> None:
        finding.evidence = _jsonable(finding.evidence)
        result.findings.append(finding)
        if on_finding:
            on_finding(finding)

    a.calibration_statistics()
    a.evaluation_statistics()
    if sweep:
        n = len(a.layers) + 1
        with engine.progress.task(f"per-layer sweep ({n} variants)", n) as advance:
            a.run_sweep(advance)
        add(a.low_snr())
    for finding in a.whole_model():
        add(finding)
    with a.timer("checks"):
        add(a.weight_range_imbalance())
        add(a.wide_range())
        add(a.bn_missing())
        for finding in a.concat_output():
            add(finding)
        add(a.activation_function())
    result.evidence = _jsonable(
        {
            "images": len(a.images),
            "context": context,
            "target": engine.target.name,
            "outputs": a.sweep.outputs,
            "findings": {f.id: f.severity for f in result.findings},
            "layers": a.layer_table(),
            "tensors": a.tensor_table(),
            "scatter": a.scatter_table(result.findings),
            "remedies": {**a.remedies, "metrics": a.measured},
            "metrics": a.metrics_note or "measured",
            "cost": a.cost(),
        }
    )
    return result


__all__ = ["LayerAnalysis", "LayerResult", "layer_checks", "split_name", "sweep_images"]
