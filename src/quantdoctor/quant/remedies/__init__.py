"""Remedies: one module per recipe command, registered by name (see :mod:`.base`). Each
decides an edit (float model, ranges, plan) from tensors it asks the engine for; only the
engine runs models. To add one: a module here with a :class:`~.base.Remedy` subclass under
``@register``, imported below, and its command in the config schema."""

from . import (  # noqa: F401 - importing registers each remedy
    activation_clipping,
    bias_correction,
    calibration,
    equalization,
    gradient,
    quantization_param,
    trained_weights,
    weights_clipping,
)
from .base import (
    REMEDIES,
    STAGES,
    Edit,
    FloatModelEdit,
    PlanEdit,
    RangeEdit,
    Remedy,
    RemedyBackend,
    make_remedy,
    match_layers,
    register,
)

__all__ = [
    "REMEDIES",
    "STAGES",
    "Edit",
    "FloatModelEdit",
    "PlanEdit",
    "RangeEdit",
    "Remedy",
    "RemedyBackend",
    "make_remedy",
    "match_layers",
    "register",
]
