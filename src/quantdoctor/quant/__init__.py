"""Targets, calibration observers, encodings and the QDQ builder. No model is executed here:
observers consume tensors that the engine captures."""

from .calibration import Ranges, calibrate
from .plan import LayerInfo, QuantPlan, find_layers
from .qdq import build_qdq, tensors_to_calibrate
from .target import PROFILES, QuantScheme, Target, resolve_target

__all__ = [
    "PROFILES",
    "LayerInfo",
    "QuantPlan",
    "QuantScheme",
    "Ranges",
    "Target",
    "build_qdq",
    "calibrate",
    "find_layers",
    "resolve_target",
    "tensors_to_calibrate",
]
