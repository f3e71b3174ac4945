"""The engine: one place that turns (context, data split) into model outputs or captured
tensors, building each model and session once and caching outputs within a run.

>>> engine = Engine(load_config("doctor.yaml"))          # doctest: +SKIP
>>> engine.outputs("native")["logits"].shape              # doctest: +SKIP
(1000, 1000)
>>> engine.outputs("int8")                                # quantized with the recipe's plan
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..config import DoctorConfig, ImageSourceConfig, NormalizationCommand
from ..data import (
    ImageSet,
    Preprocessor,
    load_images,
    read_classification_source,
    read_detection_source,
)
from ..data.imageset import Decoded
from ..data.sources import ImageRecord, list_images
from ..errors import ConfigError, DataError, ModelError
from ..graph import ModelInfo, check_input_matches, clean_model, inspect_model, load_model
from ..graph.model import input_hw
from ..graph.transforms import apply_input_transforms, cut_end_nodes, host_input_transform
from ..progress import NullProgress, Progress
from ..quant import QuantPlan, Ranges, Target, build_qdq, calibrate, find_layers, resolve_target
from ..quant.plan import LayerInfo
from ..quant.qdq import tensors_to_calibrate
from .runner import OrtRunner

#: Contexts this version runs (DESIGN §2); external (device outputs) comes later.
CONTEXTS = ("native", "fp_optimized", "quantized", "int8")
#: ONNX Runtime sessions kept at once (least recently used dropped first): each holds its
#: model and memory, and a diagnose builds dozens (plans, captures); outputs stay cached.
MAX_SESSIONS = 8
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


def _plan_key(plan: QuantPlan) -> str:
    return hashlib.sha1(repr(plan).encode()).hexdigest()[:12]


class Engine:
    """Runs the contexts of one config. Everything expensive happens once per run: image
    decoding (per file), the float outputs, calibration, each QDQ model and session."""

    def __init__(
        self,
        config: DoctorConfig,
        progress: Progress | None = None,
        target: Target | None = None,
    ) -> None:
        self.config = config
        self.progress = progress or NullProgress()
        self.preprocessor = Preprocessor(config.preprocess)
        for index, name in config.planned_steps:
            raise ConfigError(
                f"recipe[{index}]: the '{name}' command is not implemented in this version of "
                "quantdoctor yet; remove it from the recipe"
            )
        if config.start_nodes:
            raise ConfigError(
                "start_nodes are not supported yet: export the model from its first layer on, "
                "or remove start_nodes"
            )
        #: The ONNX as given (cleaned): what the native context runs.
        self.native_model: onnx.ModelProto = clean_model(load_model(config.model))
        self.info: ModelInfo = inspect_model(self.native_model)
        self.input = check_input_matches(
            self.info, self.preprocessor.output_hw, config.preprocess.layout
        )
        self.transforms = config.input_transforms
        #: The model after the recipe's float transforms (fp_optimized): what is quantized.
        self.uncut_model = apply_input_transforms(
            self.native_model, self.transforms, config.preprocess.layout
        )
        self.float_model: onnx.ModelProto = (
            cut_end_nodes(self.uncut_model, config.end_nodes)
            if config.end_nodes
            else self.uncut_model
        )
        #: Without transforms or cut, fp_optimized is native: computed once.
        self.fp_is_native = not self.transforms and not config.end_nodes
        self.target = target or resolve_target(config.target)
        self.layers: list[LayerInfo] = find_layers(self.float_model, self.target)
        self.batch_size = self.input.fixed_batch or config.batch_size or 16
        self._decoded: dict[Path, Decoded | str] = {}
        self._splits: dict[str, ImageSet] = {}
        self._class_names: list[str] | None = None
        self.data_notes: list[str] = []
        #: the most recently used sessions (each holds its model and ORT's memory)
        self._runners: OrderedDict[tuple[str, str, str], OrtRunner] = OrderedDict()
        self._outputs: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
        self._range_sets: dict[str, Ranges] = {}
        self._qdq_models: dict[tuple[str, str, bool], onnx.ModelProto] = {}

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
                labeled = read_detection_source(src.path, src.labels, src.class_names)
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
            with self.progress.task(f"decoding {split} images", len(records)) as advance:
                images = load_images(
                    records,
                    self.preprocessor,
                    cache=self._decoded,
                    progress=advance,
                    what=f"{split} images",
                )
            if len(images) == 0:
                raise DataError(f"no readable {split} images")
            self._check_size(images, split)
            self._splits[split] = images
        return self._splits[split]

    def _check_size(self, images: ImageSet, split: str) -> None:
        h, w = input_hw(self.input, self.config.preprocess.layout)
        got = images.pixels.shape[1:3]
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
        the recipe's input transforms applied on the host."""
        host_norm = variant.host_normalization
        transforms = self.transforms if variant.transforms is None else variant.transforms
        for start in range(0, len(images), self.batch_size):
            x = self.preprocessor.finish(
                images.pixels[start : start + self.batch_size],
                color=variant.color,
                mean=True if host_norm else None,
                std=True if host_norm else None,
            )
            if context == "native" and transforms:
                x = host_input_transform(x, transforms, self.config.preprocess.layout)
            yield x

    # --- quantization ----------------------------------------------------------------------
    def plan(self) -> QuantPlan:
        """The recipe's quantization plan (target + per-layer precision)."""
        plan = QuantPlan(self.target)
        for command in self.config.precisions:
            plan = plan.set_precision(command.layers, command.precision)
        return plan

    def ranges(self, name: str = "calibration") -> Ranges:
        """Activation ranges by name; ``calibration`` (the default) is calibrated lazily on the
        calibration split with the float model, others come from :meth:`add_ranges`."""
        if name not in self._range_sets:
            if name != "calibration":
                raise KeyError(f"no ranges named {name!r}; add them with add_ranges")
            self._range_sets[name] = self.calibrate(self.images("calibration"))
        return self._range_sets[name]

    def add_ranges(self, name: str, ranges: Ranges) -> None:
        """Register alternative ranges (e.g. calibrated on held-out images) for quantized
        contexts: ``engine.outputs("quantized", ranges="holdout")``. Re-registering a name
        drops what was built and computed with the old ranges."""
        if name in self._range_sets:
            self._qdq_models = {k: v for k, v in self._qdq_models.items() if k[1] != name}
            stale = f"|{name}"
            for key in [k for k in self._runners if k[0].endswith(stale)]:
                del self._runners[key]
            self._outputs = {k: v for k, v in self._outputs.items() if not k[0].endswith(stale)}
        self._range_sets[name] = ranges

    def has_split(self, name: str) -> bool:
        """Whether a split is registered (or built in and loadable)."""
        return name in self._splits or name in ("evaluation", "calibration")

    def calibrate(self, images: ImageSet) -> Ranges:
        """Activation ranges of every quantizable tensor over ``images`` (the recipe's
        calibration method; any image set, e.g. held-out evaluation images)."""
        cal = self.config.calibration
        names = tensors_to_calibrate(self.float_model, self.layers)
        with self.progress.task(
            f"calibrating ({cal.method}, {len(images)} images)", len(images)
        ) as advance:
            if cal.method == "minmax":
                batches = list(self.capture_minmax("fp_optimized", names, images, advance))
                return calibrate(lambda: batches, names, "minmax")

            def source() -> Iterator[dict[str, np.ndarray]]:
                yield from self.capture("fp_optimized", names, images)

            return calibrate(source, names, cal.method, cal.percentile)

    # --- models ----------------------------------------------------------------------------
    def _model_key(self, context: str, plan: QuantPlan | None, ranges: str) -> str:
        if context == "native" or (context == "fp_optimized" and self.fp_is_native):
            return "native"
        if context == "fp_optimized":
            return "fp_optimized"
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}; known: {', '.join(CONTEXTS)}")
        return f"{context}|{_plan_key(plan or self.plan())}|{ranges}"

    def model(
        self, context: str, plan: QuantPlan | None = None, ranges: str = "calibration"
    ) -> onnx.ModelProto:
        """The ONNX model a context runs (the QDQ model for ``quantized`` and ``int8``)."""
        key = self._model_key(context, plan, ranges)
        if key == "native":
            return self.native_model
        if key == "fp_optimized":
            return self.float_model
        plan = plan or self.plan()
        # The integer-kernel variant differs only where tensors are not 8-bit.
        integer = context == "int8" and plan.uses_non_8bit()
        key = (_plan_key(plan), ranges, integer)
        if key not in self._qdq_models:
            self._qdq_models[key] = build_qdq(
                self.float_model, plan, self.ranges(ranges), self.layers,
                for_integer_kernels=integer,
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
            _OPTIMIZATION[context],
            extra,
            reduced_outputs=reduced,
        )
        return self._runners[key]

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
        changes what the host feeds (pipeline hypotheses)."""
        key = (self._model_key(context, plan, ranges), split, variant.name)
        if key not in self._outputs:
            images = self.images(split)
            runner = self._runner(context, plan, ranges)
            parts: list[dict[str, np.ndarray]] = []
            what = "" if variant is DECLARED else f" ({variant.name})"
            with self.progress.task(
                f"running {context}{what} on {len(images)} {split} images", len(images)
            ) as advance:
                for x in self.batches(images, context, variant):
                    parts.append(runner.run(x))
                    advance(len(x))
            self._outputs[key] = {
                n: np.concatenate([p[n] for p in parts]) for n in runner.output_names
            }
        return self._outputs[key]

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
        for x in self.batches(images, context, variant):
            yield runner.run(x, names)

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
        for x in self.batches(images, context):
            got = runner.run(x, outs)
            if advance:
                advance(len(x))
            yield {
                n: np.concatenate([got[f"{n}__min"].ravel(), got[f"{n}__max"].ravel()])
                for n in names
            }
