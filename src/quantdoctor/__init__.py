"""quantdoctor: why did my network lose accuracy when quantized, proved with measurements.

>>> import quantdoctor
>>> cfg = quantdoctor.load_config("doctor.yaml")     # doctest: +SKIP
>>> report = quantdoctor.evaluate(cfg)                # doctest: +SKIP
>>> report.contexts["int8"].value                      # doctest: +SKIP
>>> result, report = quantdoctor.fix(cfg, max_drop=0.5)  # doctest: +SKIP
>>> quantdoctor.export_model(cfg, Path("model.qdq.onnx"))  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .api import analyze, diagnose, evaluate  # noqa: E402
from .commands.export import export_model  # noqa: E402
from .commands.fix import fix  # noqa: E402
from .config import load_config  # noqa: E402

__all__ = [
    "__version__",
    "analyze",
    "diagnose",
    "evaluate",
    "export_model",
    "fix",
    "load_config",
]
