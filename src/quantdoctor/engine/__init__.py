"""ONNX Runtime sessions per context, batching, caches and tensor capture. Checks ask the
engine for outputs and tensors; only this package runs models."""

from .engine import CONTEXTS, DECLARED, Engine, InputVariant
from .runner import OrtRunner

__all__ = ["CONTEXTS", "DECLARED", "Engine", "InputVariant", "OrtRunner"]
