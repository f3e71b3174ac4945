"""quantdoctor: why did my network lose accuracy when quantized, proved with measurements.

>>> import quantdoctor
>>> cfg = quantdoctor.load_config("doctor.yaml")     # doctest: +SKIP
>>> report = quantdoctor.evaluate(cfg)                # doctest: +SKIP
>>> report.contexts["int8"].value                      # doctest: +SKIP
"""

__version__ = "0.1.0"

from .api import analyze, diagnose, evaluate  # noqa: E402
from .config import load_config  # noqa: E402

__all__ = ["__version__", "analyze", "diagnose", "evaluate", "load_config"]
