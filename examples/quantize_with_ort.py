"""Quantize a config's float model with ONNX Runtime's own `quantize_static` (QDQ format),
calibrated on the config's calibration images with its host preprocessing: the model a user
arrives with when ONNX Runtime did the quantization. Diagnose it with `quantized_model:`.

    python examples/quantize_with_ort.py examples/yolox_nano_coco128.yaml -o yolox.ort.qdq.onnx
    python examples/quantize_with_ort.py examples/efficientnet_lite0.yaml -o lite0.ort.qdq.onnx \
        --per-channel

An opset below 13 is converted first (per-channel DequantizeLinear needs opset 13).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

import quantdoctor
from quantdoctor.engine import Engine


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: Iterator[np.ndarray]) -> None:
        self.name = name
        self.items = (x[i : i + 1] for x in batches for i in range(len(x)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.items, None)
        return None if x is None else {self.name: x}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--per-channel", action="store_true", help="per-channel weights")
    ap.add_argument("--images", type=int, default=64, help="calibration images (default 64)")
    ap.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    args = ap.parse_args()

    config = quantdoctor.load_config(args.config)
    engine = Engine(config)
    images = engine.images("calibration")
    images = images.subset(range(min(args.images, len(images))))
    model = onnx.load(str(config.model))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "float.onnx"
        if opset < 13:
            model = version_converter.convert_version(model, 13)
        onnx.save(model, str(source))
        quantize_static(
            str(source),
            str(args.output),
            _Reader(engine.input.name, engine.batches(images, "native")),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=args.per_channel,
            calibrate_method={"minmax": CalibrationMethod.MinMax,
                              "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[args.method],
        )
    print(f"wrote {args.output} (ONNX Runtime quantize_static, QDQ, {args.method}, "
          f"{'per-channel' if args.per_channel else 'per-tensor'} weights, {len(images)} "
          "calibration images)")


if __name__ == "__main__":
    main()
