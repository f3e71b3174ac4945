"""The exported QDQ model against the int8 context, side by side on the same images: bare
ONNX Runtime (default session options) and OpenVINO's runtime run the file that `export`
writes; the table gives top-1 agreement with the int8 context and the top-1 of each.

    python benchmarks/export_agreement.py examples/efficientnet_lite0.yaml
    python benchmarks/export_agreement.py examples/efficientnet_lite0.yaml \\
        --step '{equalization: {}}' --step '{bias_correction: {}}' --limit 500
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import yaml

import quantdoctor
from quantdoctor.commands.export import export_model
from quantdoctor.engine import Engine
from quantdoctor.tasks import make_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--step", action="append", default=[], help="recipe line(s) to add")
    parser.add_argument("--limit", type=int, default=None, help="evaluation images")
    parser.add_argument("--target", default=None, help="hailo8 | int8 (default: the config's)")
    args = parser.parse_args()
    config = quantdoctor.load_config(args.config)
    if args.step or args.limit or args.target:
        raw = config.model_dump(mode="json", exclude={"source"})
        if args.target:
            raw["target"] = {"profile": args.target}
        raw["recipe"] += [yaml.safe_load(s) for s in args.step]
        if args.limit:
            raw["data"]["evaluation"]["limit"] = args.limit
        folder = Path(tempfile.mkdtemp())
        path = folder / "doctor.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        config = quantdoctor.load_config(path)
    out = Path(tempfile.mkdtemp()) / "model.qdq.onnx"
    t0 = time.perf_counter()
    result = export_model(config, out)
    print(f"exported {out} in {time.perf_counter() - t0:.1f} s; "
          f"onnx.checker: {onnx.checker.check_model(onnx.load(out), full_check=True) or 'ok'}")
    engine = Engine(config)
    task = make_task(config)
    images = engine.images("evaluation")
    ref = engine.outputs("int8")
    name = next(iter(ref))
    batches = list(engine.batches(images, "int8"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    bare = np.concatenate([session.run([name], {engine.input.name: x})[0] for x in batches])
    rows = [("int8 context", ref[name]), ("bare ONNX Runtime", bare)]
    try:
        import openvino as ov

        compiled = ov.Core().compile_model(str(out), "CPU")
        port = compiled.outputs[0]
        vino = np.concatenate([compiled(x)[port] for x in batches])
        rows.append(("OpenVINO", vino))
    except ImportError:
        print("openvino not installed: pip install -e '.[dev]'")
    top = ref[name].argmax(1)
    print(f"{len(images)} images, {result.tensors} quantized tensors, target {result.target}")
    for label, got in rows:
        value = task.score({name: got}, images).value
        agree = 100 * np.mean(got.argmax(1) == top)
        print(f"  {label:18s} top-1 {value:6.2f}   agreement with int8 context {agree:6.2f}%   "
              f"max |diff| {np.abs(got - ref[name]).max():.3g}")


if __name__ == "__main__":
    main()
