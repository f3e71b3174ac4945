"""User-facing errors: one clear sentence (what, where, how to fix); the CLI exits with code 2."""

from __future__ import annotations


class QuantdoctorError(Exception):
    """Bad input or an unusable model/data set. The message is shown to the user as is."""


class ConfigError(QuantdoctorError):
    """doctor.yaml is missing, unparsable or invalid."""


class DataError(QuantdoctorError):
    """Images or labels cannot be found, read or parsed."""


class ModelError(QuantdoctorError):
    """The ONNX model cannot be loaded, or does not fit the declared pipeline."""
