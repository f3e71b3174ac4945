"""Hardware quantization schemes (DESIGN §2 "Target").

>>> t = resolve_target(TargetConfig(profile="hailo8", weights={"per_channel": True}))
>>> t.weights.per_channel, t.activations.bits
(True, 8)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from onnx import TensorProto

from ..config import SchemeOverride, TargetConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class QuantScheme:
    """How one kind of tensor is quantized."""

    bits: int = 8
    signed: bool = False
    symmetric: bool = False
    per_channel: bool = False

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        # Symmetric signed uses the narrow range [-127, 127] so that +/- are balanced.
        return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def onnx_type(self) -> int:
        return {
            (4, True): TensorProto.INT4,
            (4, False): TensorProto.UINT4,
            (8, True): TensorProto.INT8,
            (8, False): TensorProto.UINT8,
            (16, True): TensorProto.INT16,
            (16, False): TensorProto.UINT16,
        }[(self.bits, self.signed)]

    def with_bits(self, bits: int) -> QuantScheme:
        return replace(self, bits=bits)


#: Per-layer precision modes: (activation bits, weight bits).
PRECISIONS = {"a8_w8": (8, 8), "a16_w16": (16, 16), "a8_w4": (8, 4), "a16_w8": (16, 8)}


@dataclass(frozen=True)
class Target:
    """A hardware's quantization scheme. ``fused_activations`` are computed inside the layer
    before its output is quantized (no quantizer between a Conv and its ReLU)."""

    name: str
    activations: QuantScheme
    weights: QuantScheme
    precisions: tuple[str, ...]
    fused_activations: tuple[str, ...] = ("Relu", "Clip")
    description: str = ""
    bias_bits: int = 32
    #: Whether the hardware can quantize weights per channel at all (a remedy that switches
    #: it on is offered only where it can).
    allows_per_channel_weights: bool = True
    extra: dict[str, str] = field(default_factory=dict)


PROFILES: dict[str, Target] = {
    "hailo8": Target(
        name="hailo8",
        activations=QuantScheme(bits=8, signed=False, symmetric=False, per_channel=False),
        weights=QuantScheme(bits=8, signed=True, symmetric=True, per_channel=False),
        precisions=("a8_w8", "a16_w16", "a8_w4"),
        fused_activations=(
            "Relu",
            "Clip",
            "LeakyRelu",
            "PRelu",
            "Sigmoid",
            "HardSigmoid",
            "HardSwish",
            "Tanh",
            "Elu",
            "Selu",
        ),
        description=(
            "Hailo-8 approximation: uint8 asymmetric per-tensor activations, int8 symmetric "
            "per-tensor weights, optional a16_w16 / a8_w4 layers; not bit-exact"
        ),
        allows_per_channel_weights=False,
    ),
    "int8": Target(
        name="int8",
        activations=QuantScheme(bits=8, signed=False, symmetric=False, per_channel=False),
        weights=QuantScheme(bits=8, signed=True, symmetric=True, per_channel=True),
        precisions=("a8_w8", "a16_w8", "a16_w16", "a8_w4"),
        description=(
            "generic INT8 (ONNX Runtime / TensorRT / TFLite style): per-channel symmetric int8 "
            "weights, asymmetric 8-bit activations"
        ),
    ),
}


def _override(scheme: QuantScheme, o: SchemeOverride | None, where: str) -> QuantScheme:
    if o is None:
        return scheme
    out = replace(scheme, **{k: v for k, v in o.model_dump().items() if v is not None})
    if where == "weights" and not out.symmetric:
        raise ConfigError(
            "target.weights: symmetric: false is not supported (weights are quantized "
            "symmetrically, zero point 0, as Hailo and ONNX Runtime's integer kernels do); "
            "remove it"
        )
    if out.symmetric and not out.signed and where == "weights":
        raise ConfigError("target.weights: symmetric weights must be signed (signed: true)")
    return out


def resolve_target(cfg: TargetConfig) -> Target:
    base = PROFILES[cfg.profile]
    weights = _override(base.weights, cfg.weights, "weights")
    return replace(
        base,
        activations=_override(base.activations, cfg.activations, "activations"),
        weights=weights,
        # asking for per-channel weights says the hardware has them
        allows_per_channel_weights=base.allows_per_channel_weights or weights.per_channel,
    )
