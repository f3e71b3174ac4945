"""The doctor.yaml schema (DESIGN §3), validated with pydantic.

Errors name the field path, the bad value and what is allowed::

    >>> from quantdoctor.config import parse_config
    >>> parse_config({"model": "m.onnx", "metrik": "top1"})
    Traceback (most recent call last):
    ...
    quantdoctor.errors.ConfigError: config: unknown field 'metrik' ...
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
Precision = Literal["a8_w8", "a16_w16", "a8_w4", "a16_w8"]


class _Strict(BaseModel):
    # no .inf/.nan anywhere: each would validate and then run into garbage or a crash
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: a std this small becomes 0 in float32 (the model's arithmetic): refused like 0
_TINY_STD = 1e-30


def _pair(value: Any) -> Any:
    """Accept ``224`` or ``[224, 224]`` for a (height, width) pair."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return value


class ImageSourceConfig(_Strict):
    """A folder of images (searched recursively) and, for evaluation, its labels."""

    path: Path
    labels: Path | None = None
    class_names: Path | None = None
    limit: int | None = Field(default=None, gt=0)


class DataConfig(_Strict):
    calibration: ImageSourceConfig | None = None
    evaluation: ImageSourceConfig | None = None


class ResizeConfig(_Strict):
    short_side: int | None = Field(default=None, gt=0)
    size: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = None
    interpolation: Interpolation = "bilinear"

    _pair_size = field_validator("size", mode="before")(_pair)

    @model_validator(mode="after")
    def _one_of(self) -> ResizeConfig:
        if (self.short_side is None) == (self.size is None):
            raise ValueError("give exactly one of short_side or size")
        return self


class LetterboxConfig(_Strict):
    size: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]
    anchor: Literal["center", "top_left"] = "center"
    pad: int = Field(default=114, ge=0, le=255)
    interpolation: Interpolation = "bilinear"

    _pair_size = field_validator("size", mode="before")(_pair)


class PreprocessConfig(_Strict):
    """What the host does before the accelerator, in this order."""

    exif_orientation: bool = Field(
        default=True,
        description=(
            "Turn images upright by their EXIF orientation tag (PIL.ImageOps.exif_transpose, "
            "as Ultralytics and OpenCV do): what the camera's user saw and labelled. false "
            "keeps the stored pixel order, as Image.open(path).convert('RGB') (torchvision's "
            "ImageFolder) does; use it when the deployed pipeline ignores the tag."
        ),
    )
    color: Literal["rgb", "bgr"] = "rgb"
    resize: ResizeConfig | None = None
    center_crop: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = None
    letterbox: LetterboxConfig | None = None
    scale: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: Literal["nchw", "nhwc"] = "nchw"

    _pair_crop = field_validator("center_crop", mode="before")(_pair)

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _per_channel(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [float(value)] * 3
        return value

    @field_validator("mean", "std")
    @classmethod
    def _three(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) != 3:
            raise ValueError(f"expected 3 values (one per channel), got {len(value)}")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(abs(v) < _TINY_STD for v in value):
            raise ValueError(f"std must not contain 0 (nor values under {_TINY_STD:g})")
        return value

    @model_validator(mode="after")
    def _geometry(self) -> PreprocessConfig:
        if self.letterbox is not None and (self.resize or self.center_crop):
            raise ValueError("use letterbox alone, or resize/center_crop, not both")
        return self


class NativePreprocessConfig(_Strict):
    """What the host feeds the FULL graph when start_nodes cut it (the native context runs
    the full graph): the keys given replace those of ``preprocess``; ``mean`` and ``std``
    are none unless given (the cut-off part of the graph normalizes); the geometry (resize,
    crop, letterbox, EXIF orientation) is always preprocess's: both see the same images."""

    color: Literal["rgb", "bgr"] | None = None
    scale: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: Literal["nchw", "nhwc"] | None = None

    _per_channel = field_validator("mean", "std", mode="before")(
        PreprocessConfig._per_channel.__func__  # type: ignore[attr-defined]
    )
    _three = field_validator("mean", "std")(
        PreprocessConfig._three.__func__  # type: ignore[attr-defined]
    )
    _nonzero = field_validator("std")(
        PreprocessConfig._nonzero.__func__  # type: ignore[attr-defined]
    )

    def apply_to(self, preprocess: PreprocessConfig) -> PreprocessConfig:
        """The full graph's preprocessing: ``preprocess`` without mean/std, then these keys."""
        given = {k: getattr(self, k) for k in self.model_fields_set}
        return preprocess.model_copy(update={"mean": None, "std": None, **given})


class PostprocessConfig(_Strict):
    """What the host does after the accelerator. Built-in types: classification, yolox,
    yolov5, yolov8; or python with ``function: "file.py:name"``."""

    type: Literal["classification", "yolox", "yolov5", "yolov8", "python"] = "classification"
    function: str | None = None
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    output: str | None = None  # which model output holds the scores/boxes (default: the first)
    # detection decoders
    conf_threshold: float = Field(default=0.001, ge=0, le=1)  # low: mAP needs the full PR curve
    iou_threshold: float = Field(default=0.65, gt=0, le=1)
    max_detections: int = Field(default=100, gt=0)
    class_agnostic: bool = False
    strides: list[int] = Field(default_factory=lambda: [8, 16, 32])

    @model_validator(mode="after")
    def _python_needs_function(self) -> PostprocessConfig:
        if self.type == "python" and not self.function:
            raise ValueError("type python needs function: 'file.py:function_name'")
        return self


class SchemeOverride(_Strict):
    bits: Literal[4, 8, 16] | None = None
    signed: bool | None = None
    symmetric: bool | None = None
    per_channel: bool | None = None


class ActivationSchemeOverride(SchemeOverride):
    bits: Literal[8, 16] | None = None  # no integer engine runs 4-bit activations


class TargetConfig(_Strict):
    profile: Literal["hailo8", "int8"] = "hailo8"
    activations: ActivationSchemeOverride | None = None
    weights: SchemeOverride | None = None


class CalibrationCommand(_Strict):
    """How activation ranges are found: minmax, an exact percentile, the range of least
    quantization MSE, or TensorRT's KL-divergence (entropy) method."""

    method: Literal["minmax", "percentile", "mse", "entropy"] = "minmax"
    size: int = Field(default=64, gt=0)
    percentile: float = Field(default=99.99, gt=50.0, le=100.0)


class QuantizationParamCommand(_Strict):
    layers: list[str] = Field(min_length=1)
    precision: Precision


class CalibrationStep(_Strict):
    calibration: CalibrationCommand


class NormalizationCommand(_Strict):
    """``(x - mean) / std`` folded into the model as its first layer (the model then takes
    un-normalized input), in the channel order the model receives."""

    mean: list[float]
    std: list[float]

    _three = field_validator("mean", "std", mode="before")(PreprocessConfig._per_channel.__func__)

    @field_validator("mean", "std")
    @classmethod
    def _len(cls, value: list[float]) -> list[float]:
        if len(value) != 3:
            raise ValueError(f"expected 3 values (one per channel), got {len(value)}")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: list[float]) -> list[float]:
        if any(abs(v) < _TINY_STD for v in value):
            raise ValueError(f"std must not contain 0 (nor values under {_TINY_STD:g})")
        return value


class NormalizationStep(_Strict):
    normalization: NormalizationCommand


class InputConversionStep(_Strict):
    """A channel conversion folded into the model: the host feeds one order, the model
    converts it to the order it was trained on."""

    input_conversion: Literal["bgr_to_rgb", "rgb_to_bgr"]


class QuantizationParamStep(_Strict):
    quantization_param: QuantizationParamCommand


class ClippingCommand(_Strict):
    """Clip the ranges of the matched layers: ``percentile`` with ``values: [low, high]``
    percentiles, ``manual`` with ``values: [low, high]`` bounds, or ``mse`` (no values)."""

    layers: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    mode: Literal["percentile", "manual", "mse"] = "percentile"
    values: list[float] | None = None

    @model_validator(mode="after")
    def _values_fit_mode(self) -> ClippingCommand:
        if self.mode == "mse":
            if self.values:
                raise ValueError("mode mse takes no values; remove values or use manual")
            return self
        if self.values is None or len(self.values) != 2:
            got = "none" if self.values is None else f"{len(self.values)}"
            raise ValueError(f"mode {self.mode} needs values: [low, high] (2 numbers), got {got}")
        lo, hi = self.values
        if not lo < hi:
            raise ValueError(f"values must be in increasing order [low, high], got [{lo}, {hi}]")
        if self.mode == "percentile" and not (lo >= 0 and hi <= 100):
            raise ValueError(f"percentiles must lie in [0, 100], got [{lo}, {hi}]")
        return self


class ActivationClippingStep(_Strict):
    activation_clipping: ClippingCommand


class WeightsClippingStep(_Strict):
    weights_clipping: ClippingCommand


class EqualizationCommand(_Strict):
    """Cross-layer equalization of consecutive Conv/Gemm pairs (``layers``: fnmatch patterns
    on node names; default all pairs)."""

    layers: list[str] | None = None


def _none_is_empty(value: Any) -> Any:
    """``equalization:`` with nothing after it means the defaults (``{}``)."""
    return {} if value is None else value


class EqualizationStep(_Strict):
    equalization: EqualizationCommand = EqualizationCommand()

    _empty = field_validator("equalization", mode="before")(_none_is_empty)


class BiasCorrectionCommand(_Strict):
    """Empirical bias correction, layer by layer on calibration images (``layers``: fnmatch
    patterns; default every layer with weights)."""

    layers: list[str] | None = None


class BiasCorrectionStep(_Strict):
    bias_correction: BiasCorrectionCommand = BiasCorrectionCommand()

    _empty = field_validator("bias_correction", mode="before")(_none_is_empty)


class AdaroundCommand(_Strict):
    """AdaRound (Nagel et al. 2020): each layer's weight rounding (up or down) learned, layer
    by layer in graph order, to reproduce the float layer's output on the calibration images
    from the quantized upstream. Needs ``quantdoctor[train]``."""

    layers: list[str] | None = None
    iterations: int = Field(default=1000, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-2, gt=0)
    regularization: float = Field(default=0.01, ge=0)


class AdaroundStep(_Strict):
    adaround: AdaroundCommand = AdaroundCommand()

    _empty = field_validator("adaround", mode="before")(_none_is_empty)


class FinetuneCommand(_Strict):
    """Label-free fine-tuning of the quantized model's weights and biases (fake quantization,
    straight-through gradients) to reproduce the float model's outputs on the calibration
    images (distillation, as Hailo's finetune). ``dataset_size``: how many calibration
    images (default all). Needs ``quantdoctor[train]``."""

    epochs: int = Field(default=4, gt=0)
    dataset_size: int | None = Field(default=None, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=8, gt=0)


class FinetuneStep(_Strict):
    finetune: FinetuneCommand = FinetuneCommand()

    _empty = field_validator("finetune", mode="before")(_none_is_empty)


class TrainedWeightsCommand(_Strict):
    """Quantize the weights of another float ONNX model of the same graph (e.g. trained with
    quantization-aware training through ``quantdoctor.train``; written by
    ``quantdoctor.train.save_trained_weights``) instead of the model's own; the native and
    fp_optimized contexts keep the original model."""

    model: Path


class TrainedWeightsStep(_Strict):
    trained_weights: TrainedWeightsCommand


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return str(key)
    if isinstance(value, BaseModel):
        kinds = {
            CalibrationStep: "calibration",
            QuantizationParamStep: "quantization_param",
            NormalizationStep: "normalization",
            InputConversionStep: "input_conversion",
            ActivationClippingStep: "activation_clipping",
            WeightsClippingStep: "weights_clipping",
            EqualizationStep: "equalization",
            BiasCorrectionStep: "bias_correction",
            AdaroundStep: "adaround",
            FinetuneStep: "finetune",
            TrainedWeightsStep: "trained_weights",
        }
        return kinds.get(type(value))
    return None


RecipeStep = Annotated[
    Union[  # noqa: UP007 - pydantic's tagged union syntax
        Annotated[CalibrationStep, Tag("calibration")],
        Annotated[QuantizationParamStep, Tag("quantization_param")],
        Annotated[NormalizationStep, Tag("normalization")],
        Annotated[InputConversionStep, Tag("input_conversion")],
        Annotated[ActivationClippingStep, Tag("activation_clipping")],
        Annotated[WeightsClippingStep, Tag("weights_clipping")],
        Annotated[EqualizationStep, Tag("equalization")],
        Annotated[BiasCorrectionStep, Tag("bias_correction")],
        Annotated[AdaroundStep, Tag("adaround")],
        Annotated[FinetuneStep, Tag("finetune")],
        Annotated[TrainedWeightsStep, Tag("trained_weights")],
    ],
    Discriminator(
        _step_kind,
        custom_error_type="recipe_command",
        custom_error_message=(
            "each recipe entry is one command: {calibration: ...}, {quantization_param: ...}, "
            "{normalization: {mean, std}}, {input_conversion: bgr_to_rgb}, "
            "{activation_clipping: ...}, {weights_clipping: ...}, {equalization: {}}, "
            "{bias_correction: {}}, {adaround: {}}, {finetune: {}} or "
            "{trained_weights: {model: trained.onnx}}"
        ),
    ),
]


#: dtypes an external dump may hold (integers are dequantized with scale and zero_point)
ExternalDtype = Literal[
    "float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32"
]


class ExternalQuantization(_Strict):
    """How one output's integer dump is dequantized: ``(q - zero_point) * scale``."""

    scale: float = Field(gt=0)
    zero_point: float = 0.0


class ExternalConfig(_Strict):
    """The external context: outputs produced elsewhere (e.g. on the device), read from files
    (``path``: a folder with one .npy/.npz per image, or one .npz keyed by image file name).
    ``dtype``: what the dumps must hold; ``scale``/``zero_point`` (or ``per_output``) dequantize
    them as ``(q - zero_point) * scale``."""

    path: Path
    dtype: ExternalDtype | None = None
    scale: float | None = Field(default=None, gt=0)
    zero_point: float | None = None
    per_output: dict[str, ExternalQuantization] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _zero_point_needs_scale(self) -> ExternalConfig:
        if self.zero_point is not None and self.scale is None:
            raise ValueError("zero_point needs scale: give both (or neither, for float dumps)")
        return self


class ExecutorConfig(_Strict):
    """Where the parallel work runs: ``local`` (this process, the default) or ``ray`` (a Ray
    cluster at ``address``: ``auto`` — started with ``ray start --head`` on this machine, else
    a local one — ``ray://host:port`` or ``host:port``)."""

    type: Literal["local", "ray"] = "local"
    address: str = "auto"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if value != "auto" and not re.fullmatch(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+", value):
            raise ValueError(
                f"{value!r} is not a Ray address; use auto, ray://host:port or host:port"
            )
        return value


class ReportConfig(_Strict):
    dir: Path = Path("report")


class DoctorConfig(_Strict):
    """The whole doctor.yaml. Paths are absolute after :func:`load_config`."""

    model: Path
    task: Literal["classification", "detection"] = "classification"
    start_nodes: list[str] = Field(default_factory=list)
    end_nodes: list[str] = Field(default_factory=list)
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    # How to decode the FULL graph's outputs when end_nodes cut it (the native context runs
    # the full graph); defaults to ``postprocess``.
    native_postprocess: PostprocessConfig | None = None
    # What the host feeds the FULL graph when start_nodes cut it (the native context runs
    # the full graph); defaults to ``preprocess`` without mean/std.
    native_preprocess: NativePreprocessConfig | None = None
    metric: Literal["top1", "top5", "map", "map50"] | None = None
    reference_accuracy: float | None = Field(default=None, ge=0, le=100)
    target: TargetConfig = TargetConfig()
    #: A QDQ model of ``model`` made by another tool (ONNX Runtime, NNCF, AIMET, a vendor):
    #: its quantization (ranges, weight scales, bits, conventions) replaces the target's
    #: calibration; the recipe's other commands apply on top of it.
    quantized_model: Path | None = Field(
        default=None,
        description="A QDQ ONNX of the same float model made by another tool; its "
        "quantization is diagnosed instead of quantdoctor's own calibration.",
    )
    recipe: list[RecipeStep] = Field(default_factory=list)
    report: ReportConfig = ReportConfig()
    external: ExternalConfig | None = None
    executor: ExecutorConfig = ExecutorConfig()
    max_drop: float = Field(default=1.0, ge=0)
    seed: int = Field(default=0, ge=0)
    batch_size: int | None = Field(default=None, gt=0)
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _task_fits(self) -> DoctorConfig:
        allowed = {"classification": ("top1", "top5"), "detection": ("map", "map50")}[self.task]
        if self.metric is None:
            object.__setattr__(self, "metric", allowed[0])
        elif self.metric not in allowed:
            raise ValueError(
                f"metric {self.metric!r} does not fit task {self.task}; use {' or '.join(allowed)}"
            )
        post = self.postprocess.type
        fits = (
            ("classification", "python")
            if self.task == "classification"
            else ("yolox", "yolov5", "yolov8", "python")
        )
        if "type" in self.postprocess.model_fields_set and post not in fits:
            raise ValueError(
                f"postprocess.type {post!r} does not fit task {self.task}; use one of "
                f"{', '.join(fits)}"
            )
        if self.task == "detection" and "type" not in self.postprocess.model_fields_set:
            raise ValueError("detection needs postprocess.type: yolox, yolov5, yolov8 or python")
        return self

    @model_validator(mode="after")
    def _native_preprocess_needs_start_nodes(self) -> DoctorConfig:
        if self.native_preprocess is not None and not self.start_nodes:
            raise ValueError(
                "native_preprocess says what the full graph takes when start_nodes cut it; "
                "without start_nodes it has no effect: remove it or set start_nodes"
            )
        return self

    @property
    def full_graph_preprocess(self) -> PreprocessConfig:
        """What the host feeds the full graph (the native context): ``preprocess``, or with
        start_nodes, ``preprocess`` without mean/std and with native_preprocess's keys."""
        if not self.start_nodes:
            return self.preprocess
        return (self.native_preprocess or NativePreprocessConfig()).apply_to(self.preprocess)

    @field_validator("target", mode="before")
    @classmethod
    def _profile_name(cls, value: Any) -> Any:
        return {"profile": value} if isinstance(value, str) else value

    @field_validator("external", mode="before")
    @classmethod
    def _external_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value  # external: dumps/

    @property
    def calibration(self) -> CalibrationCommand:
        """The recipe's calibration command (the last one wins, as when applied; the default
        one when absent)."""
        found = [s.calibration for s in self.recipe if isinstance(s, CalibrationStep)]
        return found[-1] if found else CalibrationCommand()

    @property
    def input_transforms(self) -> list[NormalizationCommand | str]:
        """The recipe's float input transforms in order (normalization, input_conversion)."""
        out: list[NormalizationCommand | str] = []
        for step in self.recipe:
            if isinstance(step, NormalizationStep):
                out.append(step.normalization)
            elif isinstance(step, InputConversionStep):
                out.append(step.input_conversion)
        return out

    @property
    def precisions(self) -> list[QuantizationParamCommand]:
        return [s.quantization_param for s in self.recipe if isinstance(s, QuantizationParamStep)]

    @property
    def remedy_steps(self) -> list[tuple[int, str, BaseModel]]:
        """(index, command name, command) of the recipe's remedy commands, in recipe order:
        everything but the input transforms (normalization, input_conversion)."""
        out = []
        for i, step in enumerate(self.recipe):
            if isinstance(step, (NormalizationStep, InputConversionStep)):
                continue
            name = next(iter(type(step).model_fields))
            out.append((i, name, getattr(step, name)))
        return out


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts and parts[-1] == f".{item}":
            continue  # the tagged-union layer repeats the recipe command's name
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts)


def _format_errors(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        path = _field_path(tuple(e["loc"]))
        if not path:  # a rule across fields: the message names them
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
            continue
        if e["type"] == "extra_forbidden":
            lines.append(
                f"{where}: unknown field '{path}'; check the spelling (`quantdoctor init` "
                "writes a complete doctor.yaml; README 'Start here')"
            )
            continue
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{…}"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {path} = {shown}: {msg}")
    return "\n".join(lines)


def parse_config(raw: Any, base_dir: Path | None = None, where: str = "config") -> DoctorConfig:
    """Validate a mapping as a doctor config; relative paths resolve against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings at the top level, got {raw!r}")
    try:
        cfg = DoctorConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None
    return _resolve_paths(cfg, base_dir) if base_dir is not None else cfg


def _resolve_paths(cfg: DoctorConfig, base: Path) -> DoctorConfig:
    def res(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

    def source(s: ImageSourceConfig | None) -> ImageSourceConfig | None:
        if s is None:
            return None
        return s.model_copy(
            update={"path": res(s.path), "labels": res(s.labels), "class_names": res(s.class_names)}
        )

    data = DataConfig(
        calibration=source(cfg.data.calibration), evaluation=source(cfg.data.evaluation)
    )
    recipe = [
        TrainedWeightsStep(trained_weights=TrainedWeightsCommand(model=res(s.trained_weights.model)))
        if isinstance(s, TrainedWeightsStep)
        else s
        for s in cfg.recipe
    ]
    return cfg.model_copy(
        update={
            "model": res(cfg.model),
            "quantized_model": res(cfg.quantized_model),
            "data": data,
            "recipe": recipe,
            "report": ReportConfig(dir=res(cfg.report.dir)),
            "external": None
            if cfg.external is None
            else cfg.external.model_copy(update={"path": res(cfg.external.path)}),
        }
    )


def load_config(path: str | Path) -> DoctorConfig:
    """Read and validate doctor.yaml.

    >>> cfg = load_config("doctor.yaml")  # doctest: +SKIP
    >>> cfg.model, cfg.target.profile      # doctest: +SKIP
    (PosixPath('/abs/model.onnx'), 'hailo8')
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; create one with `quantdoctor init`")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', err)}") from None
    cfg = parse_config(raw, base_dir=path.parent.resolve(), where=str(path))
    return cfg.model_copy(update={"source": path.resolve()})
