"""What every remedy is: a small class registered under its recipe command name that decides
an *edit* from tensors it asks the engine for; the engine applies the edit and rebuilds what
changed. Remedies never run a model (NNCF's algorithm/backend split).

Three kinds of edit (DESIGN §2 "Remedy"):

- :class:`FloatModelEdit` — new weights/biases (equalization, bias correction). A
  float-equivalent edit (equalization) becomes part of ``fp_optimized``; one that changes
  the float function on purpose (bias correction) applies only to the model that is
  quantized.
- :class:`RangeEdit` — activation ranges (calibration method, activation clipping).
- :class:`PlanEdit` — the quantization plan (per-layer precision, clipped weight ranges).

A remedy declares its ``stage``; the engine applies stages in the order of a quantization
flow (float transforms → plan → calibration → ranges → correction), and the commands of one
stage in recipe order::

    @register
    class MyClipping(Remedy):
        command = "my_clipping"
        stage = "ranges"

        def apply(self, backend: RemedyBackend) -> RangeEdit:
            ...
"""

from __future__ import annotations

import difflib
import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import onnx

from ...errors import ConfigError
from ..calibration import Ranges
from ..plan import LayerInfo, QuantPlan
from ..target import Target

Stage = Literal["float", "plan", "calibration", "ranges", "correction"]
#: The order in which the engine applies the stages.
STAGES: tuple[Stage, ...] = ("float", "plan", "calibration", "ranges", "correction")


@dataclass
class FloatModelEdit:
    """A new float model (same graph interface). ``float_equivalent``: it computes the same
    function as before (checked by the pipeline step: fp_optimized must match native)."""

    model: onnx.ModelProto
    float_equivalent: bool
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RangeEdit:
    """Activation ranges to set (tensor name → (lo, hi)); ``replace_all``: these are the whole
    set (a calibration), else they update the current ranges."""

    ranges: Ranges
    replace_all: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanEdit:
    """A new quantization plan."""

    plan: QuantPlan
    summary: dict[str, Any] = field(default_factory=dict)


Edit = FloatModelEdit | RangeEdit | PlanEdit

#: ``on_layer(layer, quantized_preactivation_mean) -> bias change or None`` (bias correction).
LayerCallback = Callable[[LayerInfo, np.ndarray], "np.ndarray | None"]


class RemedyBackend(Protocol):
    """What a remedy may ask the engine for (the engine implements it over the calibration
    images and the recipe's state so far)."""

    @property
    def target(self) -> Target: ...
    @property
    def float_model(self) -> onnx.ModelProto: ...
    @property
    def layers(self) -> list[LayerInfo]: ...
    @property
    def plan(self) -> QuantPlan: ...
    @property
    def ranges(self) -> Ranges: ...

    def tensors_to_calibrate(self) -> list[str]:
        """Every tensor that gets an activation range."""
        ...

    def float_tensors(self, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """The named tensors of the float model, batch by batch over the calibration images
        (one model pass per call)."""
        ...

    def tensor_bytes(self, names: Sequence[str]) -> dict[str, int]:
        """The size in bytes of each named float tensor over all calibration images."""
        ...

    def float_minmax(self, names: Sequence[str]) -> Ranges:
        """Min and max of the named float tensors over the calibration images (reduced inside
        the graph: fast)."""
        ...

    def preactivation(self, layer: LayerInfo) -> str:
        """The tensor a layer computes before its fused activation (its node's output)."""
        ...

    def task(self, description: str, total: int) -> AbstractContextManager[Callable[..., None]]:
        """A progress bar for long work: ``with backend.task("...", n) as advance:``."""
        ...

    def input_batches(self) -> Iterator[np.ndarray]:
        """The calibration images as model inputs (float32), batch by batch."""
        ...

    def trainable_copy(self) -> Any:
        """The torch copy (``quantdoctor.train``'s ``QuantizedTorchModel``, quant mode) of the
        float model so far quantized with the plan and ranges so far, checked in float against
        fp_optimized (the gradient remedies train it; needs ``quantdoctor[train]``)."""
        ...

    def walk_quantized(self, layers: Sequence[LayerInfo], on_layer: LayerCallback) -> None:
        """Walk the quantized model in graph order over the calibration images; at each of
        ``layers`` call ``on_layer`` with the per-channel mean of its quantized
        pre-activation output (upstream changes applied); a returned array is added to the
        layer's bias before the walk goes on."""
        ...


class Remedy(ABC):
    """One recipe command. ``params`` is the command's validated config (pydantic model);
    ``index`` its position in the recipe (for messages)."""

    command: ClassVar[str]
    stage: ClassVar[Stage]
    #: A one-line description for reports.
    description: ClassVar[str] = ""

    def __init__(self, params: Any, index: int) -> None:
        self.params = params
        self.index = index

    @property
    def where(self) -> str:
        return f"recipe[{self.index}].{self.command}"

    def unavailable(self, target: Target) -> str | None:
        """Why this remedy cannot run on ``target`` (None: it can)."""
        return None

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        """Raise :class:`ConfigError` for parameters that cannot work on this model/target
        (before any expensive work)."""
        reason = self.unavailable(target)
        if reason:
            raise ConfigError(f"{self.where}: not available on target {target.name}: {reason}")

    @abstractmethod
    def apply(self, backend: RemedyBackend) -> Edit:
        """Decide the edit from the tensors the backend gives."""


REMEDIES: dict[str, type[Remedy]] = {}


def register(cls: type[Remedy]) -> type[Remedy]:
    """Class decorator: make a remedy available under its recipe command name."""
    if cls.command in REMEDIES:
        raise ValueError(f"remedy {cls.command!r} registered twice")
    REMEDIES[cls.command] = cls
    return cls


def make_remedy(command: str, params: Any, index: int) -> Remedy:
    try:
        cls = REMEDIES[command]
    except KeyError:
        raise ConfigError(
            f"recipe[{index}]: '{command}' is not a remedy of this version; known: "
            f"{', '.join(sorted(REMEDIES))}"
        ) from None
    return cls(params, index)


def match_layers(
    patterns: Sequence[str],
    layers: Sequence[LayerInfo],
    where: str,
    keep: Callable[[LayerInfo], bool] = lambda layer: True,
    what: str = "layer",
) -> list[LayerInfo]:
    """The layers (graph order) whose node or output name matches any fnmatch pattern and
    that ``keep`` accepts. A pattern that matches none of them is an error naming it and the
    closest names: a remedy must never silently do nothing."""
    eligible = [layer for layer in layers if keep(layer)]
    out: list[LayerInfo] = []
    for pattern in patterns:
        hits = [
            layer
            for layer in eligible
            if fnmatch.fnmatchcase(layer.name, pattern)
            or fnmatch.fnmatchcase(layer.output, pattern)
        ]
        if not hits:
            names = [layer.name for layer in eligible]
            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.3)
            hint = (
                f"closest: {', '.join(close)}"
                if close
                else f"e.g. {', '.join(names[:3])}"
                if names
                else f"the model has no such {what}"
            )
            raise ConfigError(
                f"{where}: layers pattern {pattern!r} matches no {what} of the model ({hint}); "
                "patterns are fnmatch patterns on node or output names, as `quantdoctor "
                "analyze` lists them"
            )
        out += [layer for layer in hits if layer not in out]
    order = {layer.name: k for k, layer in enumerate(layers)}
    return sorted(out, key=lambda layer: order[layer.name])
