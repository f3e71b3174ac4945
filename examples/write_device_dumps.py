"""Write a config's int8 context outputs as "device dumps", one file per evaluation image, to
try the external context (the outputs of a real device enter the three-way test the same way).

    python examples/write_device_dumps.py examples/resnet20_cifar10.yaml -o dumps/int8 \
        --config-out dumps/int8.yaml
    quantdoctor evaluate dumps/int8.yaml          # external == int8 exactly

    # a "device" whose pipeline feeds the channels swapped: evaluation.external_mismatch
    python examples/write_device_dumps.py examples/resnet20_cifar10.yaml -o dumps/swapped \
        --swap-channels --config-out dumps/swapped.yaml
    # 10% of the files missing (listed, left out of the paired tests); uint8 dumps with the
    # output's scale and zero point (dequantized when read)
    python examples/write_device_dumps.py examples/resnet20_cifar10.yaml -o dumps/partial \
        --drop 0.1 --uint8 --config-out dumps/partial.yaml

Dumps mirror the evaluation folder (``<class>/<image stem>.npy``; ``.npz`` with one array per
output name for models with several outputs); ``--single-npz`` writes one ``.npz`` keyed by
the image's path under the evaluation folder instead. ``--uint8`` stores each output as the
integers of its output quantizer (the QDQ model's last DequantizeLinear) and prints the
scale and zero point; read back, they give the int8 context's outputs bit for bit.
``--config-out`` writes the config (paths made absolute) with ``external:`` pointing at the
dumps; without it the ``external:`` lines to add are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import numpy_helper

import quantdoctor
from quantdoctor.engine import DECLARED, Engine, InputVariant


def output_quantizers(model: onnx.ModelProto) -> dict[str, tuple[float, int, np.dtype]]:
    """Per graph output, the (scale, zero point, integer dtype) of the DequantizeLinear that
    produces it (per-tensor)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for o in model.graph.output:
        node = producer.get(o.name)
        if node is None or node.op_type != "DequantizeLinear":
            raise SystemExit(f"output {o.name} is not dequantized in the QDQ model: no --uint8")
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        if scale.size != 1:
            raise SystemExit(f"output {o.name} is quantized per channel: no --uint8")
        out[o.name] = (float(scale.reshape(())), int(zero.reshape(())), zero.dtype)
    return out


def quantize(x: np.ndarray, scale: float, zero: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.clip(np.rint(x / np.float32(scale)) + zero, info.min, info.max).astype(dtype)
    # the int8 context's outputs lie on this grid: read back, they are the same floats
    back = ((q.astype(np.float64) - zero) * np.float32(scale)).astype(np.float32)
    if not np.array_equal(back, x):
        raise SystemExit("the outputs are not on their quantizer's grid; write floats instead")
    return q


def dump_name(path: Path, root: Path | None) -> str:
    """The image's path under the evaluation folder without its suffix (``cat/0001``)."""
    try:
        rel = path.relative_to(root) if root is not None else Path(path.name)
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True, help="folder (or .npz file)")
    ap.add_argument("--swap-channels", action="store_true",
                    help="run the int8 model with the input channels swapped (another pipeline)")
    ap.add_argument("--drop", type=float, default=0.0,
                    help="leave out this fraction of the images (seeded)")
    ap.add_argument("--uint8", action="store_true",
                    help="store the output quantizer's integers (with scale and zero point)")
    ap.add_argument("--single-npz", action="store_true",
                    help="one .npz keyed by image path instead of one file per image")
    ap.add_argument("--config-out", type=Path, help="write the config with external: set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = quantdoctor.load_config(args.config)
    engine = Engine(cfg)
    images = engine.images("evaluation")
    variant = DECLARED
    if args.swap_channels:
        variant = InputVariant(
            "device_swapped_channels", color="bgr" if cfg.preprocess.color == "rgb" else "rgb"
        )
    outputs = engine.outputs("int8", variant=variant)
    quantizers = output_quantizers(engine.model("int8")) if args.uint8 else {}
    if quantizers:
        outputs = {k: quantize(v, *quantizers[k]) for k, v in outputs.items()}

    n = len(images)
    rng = np.random.default_rng(args.seed)
    dropped = set(rng.choice(n, size=round(args.drop * n), replace=False).tolist())
    root = cfg.data.evaluation.path if cfg.data.evaluation else None
    names = list(outputs)
    single: dict[str, np.ndarray] = {}
    for i, path in enumerate(images.paths):
        if i in dropped:
            continue
        name = dump_name(path, root)
        if args.single_npz:
            for k in names:
                single[name if len(names) == 1 else f"{name}/{k}"] = outputs[k][i]
            continue
        target = args.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if len(names) == 1:
            np.save(target.with_suffix(".npy"), outputs[names[0]][i])
        else:
            np.savez(target.with_suffix(".npz"), **{k: outputs[k][i] for k in names})
    where = args.out
    if args.single_npz:
        where = args.out.with_suffix(".npz")
        where.parent.mkdir(parents=True, exist_ok=True)
        np.savez(where, **single)
    how = [k for k, on in (("input channels swapped", args.swap_channels),
                           ("uint8 with scale and zero point", bool(quantizers)),
                           (f"{len(dropped)} left out", bool(dropped))) if on]
    print(f"wrote the int8 outputs of {n - len(dropped)} of {n} images to {where}"
          + (f" ({'; '.join(how)})" if how else ""))

    external: dict[str, Any] = {"path": str(where.resolve())}
    if quantizers:
        external["dtype"] = str(next(iter(quantizers.values()))[2])
        if len(quantizers) == 1:
            scale, zero, _ = next(iter(quantizers.values()))
            external.update(scale=scale, zero_point=zero)
        else:
            external["per_output"] = {
                k: {"scale": s, "zero_point": z} for k, (s, z, _) in quantizers.items()
            }
    if args.config_out:
        raw = cfg.model_dump(mode="json", exclude={"source"})
        raw["external"] = external
        args.config_out.parent.mkdir(parents=True, exist_ok=True)
        args.config_out.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"wrote {args.config_out}: quantdoctor evaluate {args.config_out}")
    else:
        print(yaml.safe_dump({"external": external}, sort_keys=False), end="")


if __name__ == "__main__":
    main()
