"""ONNX loading, cleaning and inspection. No model is executed here."""

from .model import (
    ModelInfo,
    TensorInfo,
    check_input_matches,
    clean_model,
    inspect_model,
    load_model,
)

__all__ = [
    "ModelInfo",
    "TensorInfo",
    "check_input_matches",
    "clean_model",
    "inspect_model",
    "load_model",
]
