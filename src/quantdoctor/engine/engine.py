"""The engine: one place that turns (context, data split) into model outputs or captured
tensors, building each model and session once and caching outputs within a run.

>>> engine = Engine(load_config("doctor.yaml"))          # doctest: +SKIP
>>> engine.outputs("native")["logits"].shape              # doctest: +SKIP
(1000, 1000)
>>> engine.outputs("int8")                                # quantized with the recipe's plan
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..config import (
    CalibrationCommand,
    DoctorConfig,
    ImageSourceConfig,
    NormalizationCommand,
    parse_config,
)
from ..data import (
    ImageSet,
    Preprocessor,
    load_images,
    read_classification_source,
    read_detection_source,
)
from ..data.imageset import DecodeCache
from ..data.preprocess import ImageMeta
from ..data.sources import ImageRecord, list_images
from ..errors import ConfigError, DataError, ModelError
from ..graph import ModelInfo, check_input_matches, clean_model, inspect_model, load_model
from ..graph.cut import StartCut, check_cut_input, cut_start_nodes
from ..graph.model import input_hw
from ..graph.transforms import apply_input_transforms, cut_end_nodes
from ..progress import NullProgress, Progress
from ..quant import QuantPlan, Ranges, Target, build_qdq, find_layers, resolve_target
from ..quant.imported import ImportedQuantization, imported_weights_model, read_quantized_model
from ..quant.plan import LayerInfo
from ..quant.qdq import FLOAT_SUFFIX
from ..quant.remedies import (
    FloatModelEdit,
    PlanEdit,
    RangeEdit,
    Remedy,
    make_remedy,
)
from ..quant.target import PROFILES
from .disk_cache import DiskCache, content_key, files_key
from .executors import HostBatcher, RayExecutor, make_executor
from .external import ExternalOutputs, OutputSpec, external_key, output_specs, read_external
from .memory import release_free_memory
from .recipe import RecipeBackend, RemedyRecord
from .runner import OrtRunner, batches_at_once, run_in_order, session_threads

#: Contexts (DESIGN §2); external's outputs are read from files (config external), not run.
CONTEXTS = ("native", "fp_optimized", "quantized", "int8", "external")
#: ONNX Runtime sessions kept at once (least recently used dropped first): each holds its
#: model and its arena (on Lite0, batch 16: about 150 MB float, 480 MB float emulation of
#: QDQ), and a diagnose builds dozens (plans, captures); outputs stay cached, and a session
#: is rebuilt in a fraction of a second.
MAX_SESSIONS = 3
_OPTIMIZATION = {"native": "all", "fp_optimized": "all", "quantized": "emulate", "int8": "all"}


@dataclass(frozen=True)
class InputVariant:
    """A change to what the host feeds the model, to test a hypothesis about the pipeline
    (``name`` identifies it in caches and reports).

    ``color`` overrides the channel order; ``host_normalization=False`` drops the host's
    mean/std; ``transforms`` replaces the recipe's input transforms that the native context
    applies on the host (e.g. one normalization more or less)."""

    name: str
    color: str | None = None
    host_normalization: bool = True
    transforms: tuple[NormalizationCommand | str, ...] | None = None


DECLARED = InputVariant("declared")


@dataclass
class EngineCosts:
    """What an engine (and its siblings) ran and how long it took, for ``--profile``: the
    seconds and images of every model pass by context, of captures and of decoding, and how
    many outputs came from the cache across runs or were rows of a larger split's outputs."""

    decode_s: float = 0.0
    decoded_images: int = 0
    run_s: dict[str, float] = field(default_factory=dict)
    run_images: dict[str, int] = field(default_factory=dict)
    capture_s: float = 0.0
    captured_images: int = 0
    outputs_from_disk: int = 0
    outputs_from_rows: int = 0

    def add_run(self, context: str, seconds: float, images: int) -> None:
        self.run_s[context] = self.run_s.get(context, 0.0) + seconds
        self.run_images[context] = self.run_images.get(context, 0) + images

    def to_dict(self) -> dict[str, object]:
        return {
            "decode_s": round(self.decode_s, 3),
            "decoded_images": self.decoded_images,
            "run_s": {k: round(v, 3) for k, v in sorted(self.run_s.items())},
            "run_images": dict(sorted(self.run_images.items())),
            "capture_s": round(self.capture_s, 3),
            "captured_images": self.captured_images,
            "outputs_from_disk": self.outputs_from_disk,
            "outputs_from_rows": self.outputs_from_rows,
        }


def _plan_key(plan: QuantPlan) -> str:
    return hashlib.sha1(repr(plan).encode()).hexdigest()[:12]


def model_fingerprint(model: onnx.ModelProto) -> str:
    """A content hash of a model (caches are keyed by content, not by names)."""
    return hashlib.sha1(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def _images_key(split: str, images: ImageSet) -> str:
    """A split by content (its files), so that engines sharing caches never mix up two
    image sets registered under one name."""
    digest = hashlib.sha1("\n".join(map(str, images.paths)).encode()).hexdigest()[:12]
    return f"{split}:{digest}"


def _plain(value: object) -> object:
    """JSON-able copy of a summary (numpy scalars and arrays as Python numbers and lists)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist")
                                 else str(v)))


def _sampling_key(config: DoctorConfig) -> str:
    """What the images of the built-in splits are drawn from (folders, limits, seed)."""
    return json.dumps([config.data.model_dump(mode="json"), config.seed], sort_keys=True)


def ranges_fingerprint(ranges: Ranges) -> str:
    return hashlib.sha1(repr(sorted(ranges.items())).encode()).hexdigest()[:16]


class Engine:
    """Runs the contexts of one config. Everything expensive happens once per run: image
    decoding (per file), the float outputs, calibration, each QDQ model and session."""

    def __init__(
        self,
        config: DoctorConfig,
        progress: Progress | None = None,
        target: Target | None = None,
        native_model: onnx.ModelProto | None = None,
    ) -> None:
        self.config = config
        self.progress = progress or NullProgress()
        self.preprocessor = Preprocessor(config.preprocess)
        #: what the host feeds the full graph (native): another one when start_nodes cut it
        self.native_preprocessor = Preprocessor(config.full_graph_preprocess)
        #: The ONNX as given (cleaned): what the native context runs.
        self.native_model: onnx.ModelProto = (
            native_model if native_model is not None else clean_model(load_model(config.model))
        )
        hw, layout = self.preprocessor.output_hw, config.preprocess.layout
        self.native_input = check_input_matches(
            inspect_model(self.native_model), hw, self.native_preprocessor.config.layout,
            where="native_preprocess" if config.start_nodes else "preprocess",
        )
        #: the start-node cut: the accelerator's graph, and the part the host does instead
        self.start_cut: StartCut | None = (
            cut_start_nodes(self.native_model, config.start_nodes, config.end_nodes)
            if config.start_nodes
            else None
        )
        deployed = self.native_model if self.start_cut is None else self.start_cut.model
        self.info: ModelInfo = inspect_model(deployed)
        self.input = (
            self.native_input
            if self.start_cut is None
            else check_cut_input(self.start_cut, hw, layout)
        )
        self.transforms = config.input_transforms
        #: the input transforms the native context applies on the host: none with start_nodes
        #: (there the full graph's cut-off part does what the host and the transforms do)
        self.native_transforms = [] if self.start_cut else self.transforms
        #: The model after the recipe's float transforms (fp_optimized): what is quantized.
        self.uncut_model = apply_input_transforms(deployed, self.transforms, layout)
        self.float_model: onnx.ModelProto = (
            cut_end_nodes(self.uncut_model, config.end_nodes)
            if config.end_nodes
            else self.uncut_model
        )
        self.target = target or resolve_target(config.target)
        #: the quantization of a QDQ model made elsewhere (``quantized_model``), if given
        self.imported: ImportedQuantization | None = None
        self._requantize_weights = False
        if config.quantized_model is not None:
            started = time.perf_counter()
            self.imported = read_quantized_model(
                config.quantized_model, self.native_model,
                find_layers(self.float_model, PROFILES["int8"]),
            )
            self.target = self.imported.target()
            # per-channel weights asked for (fix's candidate): the file's per-tensor weight
            # scales give way to per-channel ones computed from the weights
            self._requantize_weights = bool(
                config.target.weights and config.target.weights.per_channel
                and not self.target.weights.per_channel
            )
            if self._requantize_weights:
                self.target = replace(
                    self.target, weights=replace(self.target.weights, per_channel=True)
                )
            import_seconds = time.perf_counter() - started
        self.layers: list[LayerInfo] = find_layers(self.float_model, self.target)
        self.batch_size = self.input.fixed_batch or config.batch_size or 16
        hw = self.preprocessor.output_hw
        #: model-pass batches (and sweep variants) run at once (engine/runner.py)
        self.batches_at_once = batches_at_once(
            self.batch_size * 3 * hw[0] * hw[1] * 4 if hw else None
        )
        #: where inference and the sweep run: None here (the default), or a Ray cluster
        self.executor: RayExecutor | None = make_executor(config.executor)
        self._decoded: DecodeCache = {}
        #: decoded images, ranges and outputs across runs (None: off), keyed by content
        self.disk: DiskCache | None = DiskCache.from_environment()
        self._splits: dict[str, ImageSet] = {}
        self._class_names: list[str] | None = None
        self.data_notes: list[str] = []
        #: what was run and how long it took (shared with sibling engines)
        self.costs = EngineCosts()
        #: the most recently used sessions (each holds its model and memory)
        self._runners: OrderedDict[tuple[str, str, str], OrtRunner] = OrderedDict()
        self._outputs: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
        #: which pixels each cached output set is of: (the split's stored pixels, its rows)
        self._output_rows: dict[
            tuple[str, str, str, str], tuple[weakref.ref[np.ndarray], np.ndarray | None]
        ] = {}
        #: the external context's outputs by what they are read from and the split's files
        self._external: dict[tuple[str, str], ExternalOutputs] = {}
        self._range_sets: dict[str, Ranges] = {}
        self._qdq_models: dict[tuple[str, str, str, bool], onnx.ModelProto] = {}
        #: corrected models by what they were computed from (see quantization_source)
        self._corrections: dict[str, tuple[onnx.ModelProto, dict]] = {}
        #: What each recipe command did, in the order applied (for the report).
        self.recipe_log: list[RemedyRecord] = []
        self.remedies: list[Remedy] = [
            make_remedy(name, command, index) for index, name, command in config.remedy_steps
        ]
        if not any(r.command == "calibration" for r in self.remedies):
            self.remedies.insert(0, make_remedy("calibration", CalibrationCommand(), -1))
        for remedy in self.remedies:
            remedy.validate(self.layers, self.target)  # before any expensive work
            if self.imported is not None and remedy.stage == "float" and remedy.index >= 0:
                raise ConfigError(
                    f"recipe[{remedy.index}]: {remedy.command} changes the float weights that "
                    f"the scales of quantized_model ({config.quantized_model.name}) were "
                    "computed for; remove it, or quantize with quantdoctor (without "
                    "quantized_model)"
                )
        self._apply_float_stage()
        #: Without transforms, cut or float edits, fp_optimized is native: computed once.
        self.fp_is_native = (
            not self.transforms
            and not config.end_nodes
            and not config.start_nodes
            and not any(r.stage == "float" for r in self.recipe_log)
        )
        self._fingerprints = {"native": model_fingerprint(self.native_model)}
        self._fingerprints["float"] = (
            self._fingerprints["native"]
            if self.fp_is_native
            else model_fingerprint(self.float_model)
        )
        #: the float model that quantized contexts quantize: fp_optimized, or with the
        #: weights of quantized_model where its tool changed them
        self._quant_base = (self.float_model, self._fingerprints["float"])
        if self.imported is not None and self.imported.changed_weights:
            base = imported_weights_model(self.float_model, self.imported, self.layers)
            self._quant_base = (base, model_fingerprint(base))
        self._plan = self._apply_plan_stage()
        if self.imported is not None:
            self._plan = self._match_imported_tensors(self._plan, import_seconds)
        #: the model that is quantized with the recipe's plan (bias correction), lazily
        self._corrected: tuple[onnx.ModelProto, str] | None = None

    def with_recipe(self, steps: Sequence[dict]) -> Engine:
        """A sibling engine whose recipe has ``steps`` appended (recipe lines as mappings,
        e.g. ``[{"equalization": {}}]``), to measure a remedy before recommending it. It
        shares this engine's decoded images, splits and content-keyed caches, so whatever
        both compute (the float outputs) is computed once."""
        raw = self.config.model_dump(mode="json", exclude={"source"})
        raw["recipe"] = raw["recipe"] + list(steps)
        config = parse_config(raw).model_copy(update={"source": self.config.source})
        sibling = Engine(config, self.progress, self.target, native_model=self.native_model)
        self.share_caches(sibling)
        if config.calibration.size != self.config.calibration.size:
            # another calibration set: its own calibration split (decoded images stay shared)
            sibling._splits = {k: v for k, v in self._splits.items() if k != "calibration"}
        return sibling

    def with_calibration_images(self, images: ImageSet) -> Engine:
        """A sibling engine that calibrates (and bias-corrects) on ``images`` instead of the
        calibration split, sharing everything else (``fix --calibrate-from-evaluation``)."""
        sibling = self.with_recipe([])
        sibling._splits = dict(self._splits)  # its own calibration split; caches stay shared
        sibling._splits["calibration"] = images
        return sibling

    def share_caches(self, other: Engine) -> None:
        """Let ``other`` (same model and preprocessing) use this engine's decoded images,
        content-keyed caches of models, sessions and outputs, and, when it samples the same
        images (same ``data`` and ``seed``), its splits."""
        other._decoded = self._decoded
        other.disk = self.disk
        other.costs = self.costs
        other.executor = self.executor
        if _sampling_key(other.config) == _sampling_key(self.config):
            other._splits = self._splits
            other._class_names = self._class_names
            other.data_notes = self.data_notes
        other._outputs = self._outputs
        other._output_rows = self._output_rows
        other._external = self._external
        other._runners = self._runners
        other._qdq_models = self._qdq_models
        other._corrections = self._corrections

    # --- the recipe ------------------------------------------------------------------------
    def _stage(self, stage: str) -> list[Remedy]:
        return [r for r in self.remedies if r.stage == stage]

    def _record(self, remedy: Remedy, started: float, summary: dict) -> None:
        self.recipe_log.append(
            RemedyRecord(remedy.index, remedy.command, remedy.stage,
                         time.perf_counter() - started, summary)
        )

    def _apply_float_stage(self) -> None:
        """Float-equivalent model edits (equalization): they become fp_optimized."""
        for remedy in self._stage("float"):
            started = time.perf_counter()
            edit = remedy.apply(RecipeBackend(self, None))
            assert isinstance(edit, FloatModelEdit) and edit.float_equivalent
            self.float_model = edit.model
            self.layers = find_layers(self.float_model, self.target)
            self._record(remedy, started, edit.summary)

    def _apply_plan_stage(self) -> QuantPlan:
        """Plan edits (per-layer precision, clipped weights), in recipe order, from the
        target's default plan or quantized_model's."""
        plan = (
            QuantPlan(self.target)
            if self.imported is None
            else self.imported.plan(self.target, self.layers,
                                    weight_scales=not self._requantize_weights)
        )
        for remedy in self._stage("plan"):
            started = time.perf_counter()
            edit = remedy.apply(RecipeBackend(self, None, plan))
            assert isinstance(edit, PlanEdit)
            plan = edit.plan
            self._record(remedy, started, edit.summary)
        return plan

    def _match_imported_tensors(self, plan: QuantPlan, import_seconds: float) -> QuantPlan:
        """quantized_model's quantized tensors, not the builder's own choice: tensors the
        builder would quantize and the file does not are left float; tensors the file
        quantizes and the builder cannot are listed (the report says so)."""
        assert self.imported is not None
        begun = time.perf_counter()
        theirs = set(self.imported.activations)
        qdq = build_qdq(self._quant_base[0], plan, self.imported.ranges(), self.layers)
        ours = {
            n.input[0].removesuffix(FLOAT_SUFFIX)
            for n in qdq.graph.node
            if n.op_type == "QuantizeLinear" and n.name.endswith("__QuantizeLinear")
            and not n.input[0].endswith(("__quantized", "_quantized"))
        }
        extra = sorted(ours - theirs)
        summary = self.imported.summary()
        summary.update(
            tensors_left_float=extra[:20], tensors_left_float_count=len(extra),
            not_reproduced=sorted(theirs - ours)[:20],
            not_reproduced_count=len(theirs - ours),
            target=self.target.description,
        )
        if self._requantize_weights:
            summary["weights"] = "quantized anew per channel (target.weights.per_channel)"
        self.recipe_log.insert(0, RemedyRecord(
            -1, "quantized_model", "plan", import_seconds + time.perf_counter() - begun, summary
        ))
        return plan.disable_tensors(extra) if extra else plan

    def quantization_source(self, plan: QuantPlan) -> tuple[onnx.ModelProto, str]:
        """The float model that a plan's QDQ model is built from, with its fingerprint: the
        bias-corrected model for the recipe's plan when the recipe corrects biases, else
        fp_optimized (with quantized_model's weights where its tool changed them)."""
        corrections = self._stage("correction")
        if not corrections or _plan_key(plan) != _plan_key(self._plan):
            return self._quant_base
        if self._corrected is None:
            model = self._quant_base[0]
            ranges = self.ranges("calibration")
            images = self.images("calibration")
            # what a correction computes depends on these and on the corrections before it:
            # siblings (fix's candidates, a finding's measured remedy) reuse the prefix they
            # share (AdaRound and fine-tuning take minutes)
            key = "|".join((self._quant_base[1], _plan_key(self._plan),
                            ranges_fingerprint(ranges), _images_key("calibration", images)))
            for remedy in corrections:
                started = time.perf_counter()
                params = json.dumps(remedy.params.model_dump(mode="json"), sort_keys=True)
                key = hashlib.sha1(f"{key}|{remedy.command}:{params}".encode()).hexdigest()
                if key in self._corrections:
                    model, summary = self._corrections[key]
                    self._record(remedy, started, {**summary, "reused": True})
                    continue
                edit = remedy.apply(RecipeBackend(self, images, self._plan, ranges, model))
                assert isinstance(edit, FloatModelEdit)
                model = edit.model
                self._corrections[key] = (model, edit.summary)
                self._record(remedy, started, edit.summary)
            self._corrected = (model, model_fingerprint(model))
        return self._corrected

    # --- data ------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        self.images("evaluation")
        return self._class_names

    def _sample(self, records: list[ImageRecord], limit: int | None) -> list[ImageRecord]:
        if limit is None or limit >= len(records):
            return records
        rng = np.random.default_rng(self.config.seed)
        keep = np.sort(rng.choice(len(records), size=limit, replace=False))
        return [records[i] for i in keep]

    def _records(self, split: str) -> list[ImageRecord]:
        data = self.config.data
        if split == "evaluation":
            src = data.evaluation
            if src is None:
                raise ConfigError(
                    "data.evaluation is not set; give a folder of labelled images "
                    "(data.evaluation.path and labels)"
                )
            if self.config.task == "detection":
                labeled = read_detection_source(
                    src.path, src.labels, src.class_names,
                    exif_orientation=self.config.preprocess.exif_orientation,
                )
            else:
                labeled = read_classification_source(src.path, src.labels, src.class_names)
            self._class_names = labeled.class_names
            self.data_notes = labeled.notes
            return self._sample(labeled.records, src.limit)
        if split == "calibration":
            src = data.calibration
            size = self.config.calibration.size
            if src is None:
                # No calibration set given: calibrate on a seeded sample of evaluation images.
                return self._sample(self._records("evaluation"), size)
            return self._sample(self._source_records(src), min(size, src.limit or size))
        raise ValueError(f"unknown split {split!r}")

    @staticmethod
    def _source_records(src: ImageSourceConfig) -> list[ImageRecord]:
        return [ImageRecord(p) for p in list_images(src.path)]

    def images(self, split: str = "evaluation") -> ImageSet:
        """The decoded, resized images of a split (decoded once per file per run).

        Built-in splits are ``evaluation`` and ``calibration``; checks may register more
        with :meth:`add_split` (e.g. held-out halves)."""
        if split not in self._splits:
            records = self._records(split)
            stored = self._images_from_disk(records)
            started, known = time.perf_counter(), len(self._decoded)
            with self.progress.task(f"decoding {split} images", len(records)) as advance:
                images = load_images(
                    records,
                    self.preprocessor,
                    cache=self._decoded,
                    progress=advance,
                    what=f"{split} images",
                )
            self.costs.decode_s += time.perf_counter() - started
            self.costs.decoded_images += len(self._decoded) - known
            if len(images) == 0:
                raise DataError(f"no readable {split} images")
            if stored is not None:
                self._images_to_disk(stored, images)
            self._check_size(images, split)
            self._splits[split] = images
        return self._splits[split]

    # --- the cache across runs (engine/disk_cache.py) ----------------------------------------
    def _disk_key(self, kind: str, *parts: object) -> str:
        import onnxruntime

        return content_key(kind, __version__, onnxruntime.__version__, *parts)

    def float_result_key(self, kind: str, images: ImageSet, *parts: object) -> str | None:
        """The cache-across-runs key of something computed from the float model
        (fp_optimized) on ``images`` as the host feeds them, plus ``parts`` (what else it
        depends on), or None when the cache is off."""
        if self.disk is None:
            return None
        return self._disk_key(
            kind, self._fingerprints["float"], files_key(images.paths),
            self._host_pipeline_key(), self.batch_size, *parts,
        )

    def _images_from_disk(self, records: list[ImageRecord]) -> str | None:
        """Put a split's stored decoded pixels into the decode cache; returns the key to store
        them under when they were not stored yet (None: stored, or no cache)."""
        if self.disk is None:
            return None
        settings = self.preprocessor.geometry_key
        key = self._disk_key("images", files_key([r.path for r in records]), settings)
        found = self.disk.get("images", key)
        if found is None:
            return key
        metas = found["metas"]
        for i, path in enumerate(found["paths"]):
            m = metas[i]
            self._decoded[Path(str(path)), settings] = (found["pixels"][i], ImageMeta(
                (int(m[0]), int(m[1])), (float(m[2]), float(m[3])), (int(m[4]), int(m[5]))))
        for path, reason in zip(found["failed"], found["reasons"], strict=True):
            self._decoded[Path(str(path)), settings] = str(reason)
        return None

    def _images_to_disk(self, key: str, images: ImageSet) -> None:
        assert self.disk is not None
        metas = np.array([[*m.orig_hw, *m.scale_hw, *m.pad_tl] for m in images.metas],
                         dtype=np.float64).reshape(-1, 6)
        self.disk.put("images", key, {
            "pixels": images.pixels,
            "paths": np.array([str(p) for p in images.paths], dtype=str),
            "metas": metas,
            "failed": np.array([str(p) for p, _ in images.failures], dtype=str),
            "reasons": np.array([r for _, r in images.failures], dtype=str),
        })

    def _check_size(self, images: ImageSet, split: str) -> None:
        h, w = input_hw(self.input, self.config.preprocess.layout)
        got = images.hw
        if (isinstance(h, int) and h != got[0]) or (isinstance(w, int) and w != got[1]):
            raise ModelError(
                f"model input '{self.input.name}' takes {h}x{w} images but the {split} "
                f"images are {got[0]}x{got[1]} (e.g. {images.paths[0]}); set "
                f"preprocess.resize.size: [{h}, {w}] (or center_crop / letterbox)"
            )

    def add_split(self, name: str, images: ImageSet) -> None:
        """Register an image set (e.g. a subset of another split) under a split name."""
        if name in self._splits and self._splits[name] is not images:
            raise ValueError(f"split {name!r} already exists")
        self._check_size(images, name)
        self._splits[name] = images

    def batches(
        self,
        images: ImageSet,
        context: str = "fp_optimized",
        variant: InputVariant = DECLARED,
    ) -> Iterator[np.ndarray]:
        """Model-input batches (float32): the host preprocessing, plus, for the native context,
        the recipe's input transforms applied on the host (with start_nodes: the full
        graph's preprocessing, ``native_preprocess``, and no transforms)."""
        yield from self.batcher(context, variant)(images)

    def batcher(
        self, context: str = "fp_optimized", variant: InputVariant = DECLARED
    ) -> HostBatcher:
        """What :meth:`batches` does to a split's pixels, as a small picklable object (the
        same on a Ray worker)."""
        native = context == "native"
        pre = self.native_preprocessor if native else self.preprocessor
        transforms = self.native_transforms if variant.transforms is None else variant.transforms
        return HostBatcher(
            pre, self.batch_size, variant.color, variant.host_normalization,
            tuple(transforms) if native and transforms else (), pre.config.layout,
        )

    def _host_key(self, context: str, variant: InputVariant) -> str:
        """What the host applies beyond the preprocessing (see :meth:`batches`), for the
        outputs' cache key: a sibling with another normalization runs the same native model
        on other inputs."""
        transforms = self.native_transforms if variant.transforms is None else variant.transforms
        if context != "native" or not transforms:
            return ""
        return hashlib.sha1(repr(list(transforms)).encode()).hexdigest()[:12]

    # --- quantization ----------------------------------------------------------------------
    def plan(self) -> QuantPlan:
        """The recipe's quantization plan (target, per-layer precision, clipped weights)."""
        return self._plan

    def ranges(self, name: str = "calibration") -> Ranges:
        """Activation ranges by name; ``calibration`` (the default) is the recipe's: calibrated
        lazily on the calibration split with the float model, then clipped as the recipe
        says; others come from :meth:`add_ranges`."""
        if name not in self._range_sets:
            if name != "calibration":
                raise KeyError(f"no ranges named {name!r}; add them with add_ranges")
            self._range_sets[name] = (
                self.calibrate(self.images("calibration"), record=True)
                if self.imported is None
                else self._imported_ranges()
            )
        return self._range_sets[name]

    def _imported_ranges(self) -> Ranges:
        """quantized_model's ranges, then the recipe's range edits (activation clipping) on
        the calibration images; the recipe's calibration commands are not applied."""
        assert self.imported is not None
        ranges = self.imported.ranges()
        for remedy in self._stage("calibration"):
            if remedy.index >= 0:
                self._record(remedy, time.perf_counter(), {
                    "skipped": "the ranges come from quantized_model "
                    f"({self.imported.path.name})"
                })
        edits = self._stage("ranges")
        if edits:
            ranges, _ = self._apply_range_stages(edits, self.images("calibration"), ranges,
                                                 record=True)
        return ranges

    def _apply_range_stages(
        self, remedies: list[Remedy], images: ImageSet, ranges: Ranges, record: bool,
        advance: Callable[[int], None] | None = None,
    ) -> tuple[Ranges, list[dict]]:
        """Calibration and range edits in order, on ``images``: the ranges and each
        command's summary."""
        summaries = []
        for remedy in remedies:
            started = time.perf_counter()
            edit = remedy.apply(RecipeBackend(self, images, self._plan, ranges))
            assert isinstance(edit, RangeEdit)
            ranges = dict(edit.ranges) if edit.replace_all else {**ranges, **edit.ranges}
            summaries.append(edit.summary)
            if record:
                self._record(remedy, started, edit.summary)
            if advance:
                advance(1)
        return ranges, summaries

    def add_ranges(self, name: str, ranges: Ranges) -> None:
        """Register alternative ranges (e.g. calibrated on held-out images) for quantized
        contexts: ``engine.outputs("quantized", ranges="holdout")``. Re-registering a name
        drops what was built and computed with the old ranges."""
        if name in self._range_sets:
            # drop what was built and computed with the old ranges (memory)
            stale = ranges_fingerprint(self._range_sets[name])
            if stale != ranges_fingerprint(ranges):
                # in place: sibling engines share these caches
                for key in [k for k in self._qdq_models if k[2] == stale]:
                    del self._qdq_models[key]
                for key in [k for k in self._runners if k[0].endswith(stale)]:
                    del self._runners[key]
                for key in [k for k in self._outputs if k[0].endswith(stale)]:
                    del self._outputs[key]
        self._range_sets[name] = ranges

    def has_split(self, name: str) -> bool:
        """Whether a split is registered (or built in and loadable)."""
        return name in self._splits or name in ("evaluation", "calibration")

    def calibrate(self, images: ImageSet, record: bool = False) -> Ranges:
        """Activation ranges of every quantizable tensor over ``images`` (any image set, e.g.
        held-out evaluation images): the recipe's calibration method, then its range edits
        (activation clipping) measured on the same images. ``record``: log what each command
        did (the recipe's own calibration)."""
        stages = self._stage("calibration") + self._stage("ranges")
        disk_key = None
        if self.disk is not None:
            disk_key = self._disk_key(
                "ranges", self._fingerprints["float"], _plan_key(self._plan),
                files_key(images.paths), self._host_pipeline_key(), self.batch_size,
                [(r.command, r.params.model_dump(mode="json")) for r in stages],
            )
            found = self.disk.get("ranges", disk_key)
            if found is not None:
                summaries = json.loads(str(found["summaries"]))
                if record:
                    for remedy, summary in zip(stages, summaries, strict=True):
                        self._record(remedy, time.perf_counter(),
                                     {**summary, "reused": "from the cache across runs"})
                return {str(n): (float(lo), float(hi)) for n, lo, hi in
                        zip(found["names"], found["lo"], found["hi"], strict=True)}
        cal = self.config.calibration
        with self.progress.task(
            f"calibrating ({cal.method}, {len(images)} images)", len(stages)
        ) as advance:
            ranges, summaries = self._apply_range_stages(stages, images, {}, record, advance)
        if self.disk is not None and disk_key is not None:
            names = sorted(ranges)
            self.disk.put("ranges", disk_key, {
                "names": np.array(names, dtype=str),
                "lo": np.array([ranges[n][0] for n in names], np.float64),
                "hi": np.array([ranges[n][1] for n in names], np.float64),
                "summaries": np.array(json.dumps(_plain(summaries))),
            })
        return ranges

    # --- models ----------------------------------------------------------------------------
    def _ranges_key(self, name: str) -> str:
        return ranges_fingerprint(self.ranges(name))

    def _model_key(self, context: str, plan: QuantPlan | None, ranges: str) -> str:
        """A context's model by content: the float model's fingerprint, and for quantized
        contexts that of the source model, the plan and the ranges."""
        if context == "native" or (context == "fp_optimized" and self.fp_is_native):
            return f"native:{self._fingerprints['native']}"
        if context == "fp_optimized":
            return f"fp_optimized:{self._fingerprints['float']}"
        if context == "external":
            raise ValueError("the external context has no model: its outputs are read from files")
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}; known: {', '.join(CONTEXTS)}")
        plan = plan or self.plan()
        _, source = self.quantization_source(plan)
        return f"{context}|{source}|{_plan_key(plan)}|{self._ranges_key(ranges)}"

    def model(
        self, context: str, plan: QuantPlan | None = None, ranges: str = "calibration"
    ) -> onnx.ModelProto:
        """The ONNX model a context runs (the QDQ model for ``quantized`` and ``int8``)."""
        if context == "native" or (context == "fp_optimized" and self.fp_is_native):
            return self.native_model
        if context == "fp_optimized":
            return self.float_model
        self._model_key(context, plan, ranges)  # validates the context
        plan = plan or self.plan()
        source, source_key = self.quantization_source(plan)
        # The integer-kernel variant differs only where tensors are not 8-bit.
        integer = context == "int8" and plan.uses_non_8bit()
        key = (source_key, _plan_key(plan), self._ranges_key(ranges), integer)
        if key not in self._qdq_models:
            self._qdq_models[key] = build_qdq(
                source, plan, self.ranges(ranges), self.layers, for_integer_kernels=integer,
            )
        return self._qdq_models[key]

    def _runner(
        self,
        context: str,
        plan: QuantPlan | None,
        ranges: str,
        extra: Sequence[str] = (),
        reduced: Sequence[str] = (),
    ) -> OrtRunner:
        key = (self._model_key(context, plan, ranges), ",".join(extra), ",".join(reduced))
        if key in self._runners:
            self._runners.move_to_end(key)
            return self._runners[key]
        while len(self._runners) >= MAX_SESSIONS:
            self._runners.popitem(last=False)  # outputs stay cached; sessions are rebuilt
        self._runners[key] = OrtRunner(
            self.model(context, plan, ranges),
            self._optimization(context, plan),
            extra,
            # model passes run batches side by side; captures one at a time on every core
            threads=None if extra or reduced else session_threads(self.batches_at_once),
            reduced_outputs=reduced,
        )
        return self._runners[key]

    def release_memory(self) -> None:
        """Give the memory freed so far back to the system (after a step: its captures)."""
        release_free_memory()

    def _optimization(self, context: str, plan: QuantPlan | None) -> str:
        """How ONNX Runtime runs a context's model. A plan with float activations has nothing
        for the integer kernels to fuse, and with fusion on ONNX Runtime keeps each weight's
        DequantizeLinear for it, so the float convolutions cannot pre-pack their weights:
        such a model runs as emulation (its weights' DequantizeLinear folded once), the same
        float arithmetic 3x faster (Lite0, weights only: 198 against 63 images/s)."""
        if context == "int8" and not (plan or self.plan()).quantize_activations:
            return "emulate"
        return _OPTIMIZATION[context]

    # --- outputs and tensors ---------------------------------------------------------------
    def outputs(
        self,
        context: str,
        split: str = "evaluation",
        plan: QuantPlan | None = None,
        ranges: str = "calibration",
        variant: InputVariant = DECLARED,
    ) -> dict[str, np.ndarray]:
        """All model outputs of a context over a split, computed once and cached.

        ``plan`` changes what is quantized (default: the recipe's plan); ``ranges`` names the
        activation ranges to use (default: calibrated on the calibration split); ``variant``
        changes what the host feeds (pipeline hypotheses). ``external`` reads files instead
        (:meth:`external`; rows of images without a dump are NaN)."""
        if context == "external":
            return self.external(split).outputs
        images = self.images(split)
        key = (
            self._model_key(context, plan, ranges),
            _images_key(split, images),
            variant.name,
            self._host_key(context, variant),
        )
        if key not in self._outputs:
            self._outputs_from_rows(key, images)
        disk_key = None
        if key not in self._outputs and self.disk is not None:
            disk_key = self._disk_key(
                "outputs", key, files_key(images.paths), self._host_pipeline_key(),
                self.batch_size,
            )
            found = self.disk.get("outputs", disk_key)
            if found is not None:
                self._outputs[key] = found
                self.costs.outputs_from_disk += 1
        if key not in self._outputs and self.executor is not None:
            started = time.perf_counter()
            what = "" if variant is DECLARED else f" ({variant.name})"
            with self.progress.task(
                f"running {context}{what} on {len(images)} {split} images (Ray)", len(images)
            ) as advance:
                self._outputs[key] = self.executor.outputs(
                    key[0], self.model(context, plan, ranges), self._optimization(context, plan),
                    key[1], images.pixels, self.batcher(context, variant), advance,
                )
            self.costs.add_run(context, time.perf_counter() - started, len(images))
            if self.disk is not None and disk_key is not None:
                self.disk.put("outputs", disk_key, self._outputs[key])
        if key not in self._outputs:
            started = time.perf_counter()
            runner = self._runner(context, plan, ranges)
            parts: list[dict[str, np.ndarray]] = []
            what = "" if variant is DECLARED else f" ({variant.name})"
            with self.progress.task(
                f"running {context}{what} on {len(images)} {split} images", len(images)
            ) as advance:
                batches = self.batches(images, context, variant)
                for got, n in run_in_order(runner.run, batches, self.batches_at_once):
                    parts.append(got)
                    advance(n)
            self._outputs[key] = {
                n: np.concatenate([p[n] for p in parts]) for n in runner.output_names
            }
            self.costs.add_run(context, time.perf_counter() - started, len(images))
            del parts
            release_free_memory()
            if self.disk is not None and disk_key is not None:
                self.disk.put("outputs", disk_key, self._outputs[key])
        self._output_rows.setdefault(key, (weakref.ref(images.stored), images.rows))
        return self._outputs[key]

    def _outputs_from_rows(self, key: tuple[str, str, str, str], images: ImageSet) -> None:
        """Take a subset's outputs from the cached outputs of a split that holds all of its
        images (the same pixels, model, variant and host): ONNX Runtime computes each image
        of a batch on its own, so the rows are the same numbers (checked on EfficientNet-Lite0
        in float, emulation and int8), and e.g. the direct test's scoring images and the
        sweep's images cost no model pass after the evaluation split's."""
        rows = np.arange(len(images)) if images.rows is None else images.rows
        for other, (stored, other_rows) in self._output_rows.items():
            if other[0] != key[0] or other[2:] != key[2:] or other not in self._outputs:
                continue
            if stored() is not images.stored:
                continue
            n = len(images.stored)
            where = np.full(n, -1, dtype=np.int64)
            held = np.arange(n) if other_rows is None else other_rows
            where[held] = np.arange(len(held))
            at = where[rows]
            if len(at) and (at >= 0).all():
                parent = self._outputs[other]
                self._outputs[key] = {name: value[at] for name, value in parent.items()}
                self.costs.outputs_from_rows += 1
                return

    def _host_pipeline_key(self) -> str:
        """What the host does around the model (part of every stored output's key); with
        start_nodes the full graph is fed otherwise (native_preprocess, no transforms)."""
        return json.dumps([
            self.config.preprocess.model_dump(mode="json"),
            [t if isinstance(t, str) else t.model_dump(mode="json") for t in self.transforms],
            self.native_preprocessor.config.model_dump(mode="json"),
            [t if isinstance(t, str) else t.model_dump(mode="json")
             for t in self.native_transforms],
        ], sort_keys=True)

    def external(self, split: str = "evaluation") -> ExternalOutputs:
        """The external context's outputs over a split, read from ``config.external`` and
        checked against the deployed model's outputs (names, per-image shapes), read once
        per run; ``present`` says which images have a dump."""
        config = self.config.external
        if config is None:
            raise ConfigError(
                "the external context needs `external: {path: folder_of_dumps/}` in the config "
                "(README 'The config file: every key')"
            )
        images = self.images(split)
        key = (external_key(config), _images_key(split, images))
        if key not in self._external:
            specs = output_specs(self.float_model)
            if not all(s.known for s in specs):  # open dimensions: as the float model gives them
                got = self.outputs("fp_optimized", split)
                specs = [OutputSpec(s.name, tuple(got[s.name].shape[1:])) for s in specs]
            with self.progress.task(
                f"reading external outputs of {len(images)} {split} images", len(images)
            ) as advance:
                self._external[key] = read_external(config, specs, images, split, advance)
        return self._external[key]

    def capture(
        self,
        context: str,
        names: Sequence[str],
        images: ImageSet,
        plan: QuantPlan | None = None,
        ranges: str = "calibration",
        variant: InputVariant = DECLARED,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Intermediate tensors by name, batch by batch (not cached: they are large). In a
        quantized context a quantized tensor's name holds its dequantized value and
        ``<name>__float`` the value before quantization."""
        runner = self._runner(context, plan, ranges, extra=tuple(names))
        # One batch at a time: captured tensors are large (every layer's output), and memory
        # bounds the run more than these passes' time does.
        for x in self.batches(images, context, variant):
            started = time.perf_counter()
            got = runner.run(x, names)
            self.costs.capture_s += time.perf_counter() - started
            self.costs.captured_images += len(x)
            yield got
            del got
            release_free_memory()  # the batch's tensors are dropped: their pages go back

    def float_features(self, name: str, images: ImageSet) -> np.ndarray:
        """Per image, the float model's (fp_optimized) tensor ``name`` as one vector [N, D],
        averaged over its spatial dimensions where it has more than 4096 values per image
        (the calibration check's features); kept in the cache across runs."""
        key = self.float_result_key("features", images, name)
        if key is not None and self.disk is not None:
            found = self.disk.get("features", key)
            if found is not None and "features" in found:
                return found["features"]
        parts = []
        for batch in self.capture("fp_optimized", [name], images):
            x = batch[name]
            if x.ndim > 2 and int(np.prod(x.shape[1:])) > 4096:
                x = x.mean(axis=tuple(range(2, x.ndim)))
            parts.append(x.reshape(len(x), -1).astype(np.float32))
        out = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        if key is not None and self.disk is not None:
            self.disk.put("features", key, {"features": out})
        return out

    def capture_minmax(
        self,
        context: str,
        names: Sequence[str],
        images: ImageSet,
        advance: Callable[[int], None] | None = None,
        plan: QuantPlan | None = None,
        ranges: str = "calibration",
    ) -> Iterator[dict[str, np.ndarray]]:
        """Per batch, ``{name: [min, max]}`` of each named tensor, reduced inside the graph."""
        runner = self._runner(context, plan, ranges, reduced=tuple(names))
        outs = [f"{n}__{r}" for n in names for r in ("min", "max")]
        # One batch at a time: without an arena, a run holds every activation of its batch.
        for x in self.batches(images, context):
            started = time.perf_counter()
            got = runner.run(x, outs)
            self.costs.capture_s += time.perf_counter() - started
            n = len(x)
            self.costs.captured_images += n
            if advance:
                advance(n)
            yield {
                n: np.concatenate([got[f"{n}__min"].ravel(), got[f"{n}__max"].ravel()])
                for n in names
            }
