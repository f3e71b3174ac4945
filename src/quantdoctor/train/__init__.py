"""The trainable copy of the quantized model (extra ``quantdoctor[train]``: PyTorch).

quantdoctor's counterpart of Hailo's ``runner.get_keras_model()``: a torch module that
computes exactly what the ``quantized`` context computes (fake quantization with ONNX
Runtime's numerics at the QDQ model's quantization points, straight-through gradients,
optionally learnable LSQ scales), verified against ONNX Runtime before use, and written
back into quantdoctor's QDQ graph after training. The ONNX graph is interpreted node by
node (no onnx2torch: it needs torchvision, which pulls a CUDA build of torch).

This package imports without torch; its functions say how to install it.

>>> import quantdoctor, torch
>>> from quantdoctor.engine.engine import Engine
>>> from quantdoctor.train import to_torch, from_torch
>>> engine = Engine(quantdoctor.load_config("doctor.yaml"))      # doctest: +SKIP
>>> module = to_torch(engine)                # verified; quant mode  # doctest: +SKIP
>>> opt = torch.optim.SGD(module.parameters(), lr=1e-4)           # doctest: +SKIP
>>> for x in engine.batches(engine.images("calibration")):        # doctest: +SKIP
...     loss = module(torch.from_numpy(x))["logits"].square().mean()
...     opt.zero_grad(); loss.backward(); opt.step()
>>> qdq = from_torch(module, engine)        # an onnx.ModelProto   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import QuantdoctorError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import onnx

    from ..engine.engine import Engine
    from ..quant import QuantPlan
    from ..report import Finding, Report
    from .convert import Verification
    from .interpreter import QuantizedTorchModel

INSTALL_HINT = (
    "the trainable copy needs PyTorch, which is not installed: pip install 'quantdoctor[train]'"
)

__all__ = [
    "QuantizedTorchModel",
    "Verification",
    "bn_missing_layers",
    "from_torch",
    "require_torch",
    "save_trained_weights",
    "to_torch",
    "torch_available",
]


def torch_available() -> bool:
    """Whether PyTorch imports (imported here when it does: only gradient remedies ask)."""
    try:
        importlib.import_module("torch")
    except ImportError:
        return False
    return True


def require_torch() -> None:
    """Raise :class:`QuantdoctorError` (one sentence: how to install) without torch."""
    try:
        importlib.import_module("torch")
    except ImportError:
        raise QuantdoctorError(INSTALL_HINT) from None


def to_torch(
    engine: Engine,
    plan: QuantPlan | None = None,
    *,
    learnable_scales: bool = False,
    verify_split: str | None = "calibration",
    batchnorm: Sequence[str] | None = None,
) -> QuantizedTorchModel:
    """See :func:`quantdoctor.train.convert.to_torch`."""
    require_torch()
    from .convert import to_torch as impl

    return impl(
        engine,
        plan,
        learnable_scales=learnable_scales,
        verify_split=verify_split,
        batchnorm=batchnorm,
    )


def bn_missing_layers(
    source: Engine | Finding | Report, *, unnormalized_only: bool = False, images: int = 64
) -> list[str]:
    """See :func:`quantdoctor.train.batchnorm.bn_missing_layers`."""
    require_torch()
    from .batchnorm import bn_missing_layers as impl

    return impl(source, unnormalized_only=unnormalized_only, images=images)


def from_torch(module: QuantizedTorchModel, engine: Engine | None = None) -> onnx.ModelProto:
    """See :func:`quantdoctor.train.convert.from_torch`."""
    require_torch()
    from .convert import from_torch as impl

    return impl(module, engine)


def save_trained_weights(module: QuantizedTorchModel, path: str | Path) -> Path:
    """See :func:`quantdoctor.train.convert.save_trained_weights`."""
    require_torch()
    from .convert import save_trained_weights as impl

    return impl(module, path)


def __getattr__(name: str) -> Any:
    if name == "QuantizedTorchModel":
        require_torch()
        from .interpreter import QuantizedTorchModel

        return QuantizedTorchModel
    if name == "Verification":
        require_torch()
        from .convert import Verification

        return Verification
    raise AttributeError(name)
