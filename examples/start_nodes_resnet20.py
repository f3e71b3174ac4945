"""start_nodes on a real model: ResNet-20 (CIFAR-10) with its normalization inside the graph.

The export (examples/export_resnet20.py) takes normalized input; this script puts
``(x - mean) / std`` in front of it as Sub → Div nodes (the graph then takes 0..1 pixels, as
many exported models do), cuts the graph at the first Conv with ``start_nodes`` and runs the
pipeline check and the three-way test three ways: the host normalizing (it must reproduce the
full graph), the host not normalizing (the finding), the recipe folding the normalization into
the accelerator's graph (as Hailo's normalization command does).

    python examples/export_resnet20.py -o examples/models/resnet20_cifar10.onnx
    python examples/start_nodes_resnet20.py [--limit 2000]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import helper, numpy_helper

import quantdoctor
from quantdoctor.config import parse_config

HERE = Path(__file__).resolve().parent
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def with_normalization(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sub(mean) → Div(std) between the graph input and its consumers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    name = g.input[0].name
    for node in g.node:
        node.input[:] = ["normalized" if i == name else i for i in node.input]
    g.initializer.extend([
        numpy_helper.from_array(np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1), "norm_mean"),
        numpy_helper.from_array(np.asarray(STD, np.float32).reshape(1, 3, 1, 1), "norm_std"),
    ])
    nodes = [
        helper.make_node("Sub", [name, "norm_mean"], ["centered"], name="norm/Sub"),
        helper.make_node("Div", ["centered", "norm_std"], ["normalized"], name="norm/Div"),
    ]
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    onnx.checker.check_model(m)
    return m


def run(raw: dict[str, Any], label: str) -> None:
    report = quantdoctor.diagnose(
        parse_config(raw, base_dir=HERE), write=False, skip=("calibration", "layers")
    )
    found = next(f for f in report.findings if f.id == "pipeline.start_nodes_mismatch")
    ev = found.evidence
    contexts = "  ".join(f"{k} {v.value:.2f}" for k, v in report.contexts.items())
    print(f"\n{label}\n  {contexts}")
    print(f"  {found.id}: {found.severity}, likely cause {ev['likely_cause']}, input SNR "
          f"{ev['input_snr_db']:.1f} dB (per image min {ev['input_snr_db_per_image']['min']:.1f}),"
          f" output SNR {', '.join(f'{v:.1f}' for v in ev['output_snr_db'].values())} dB, "
          f"top-1 {ev['native']:.1f} vs {ev['fp_optimized']:.1f} on {ev['n']} images, "
          f"p = {ev['p_value']:.2g}")
    if found.recipe:
        print(f"  suggested: {found.recipe[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=HERE / "models/resnet20_cifar10.onnx")
    parser.add_argument("--limit", type=int, default=None, help="evaluation images (all)")
    args = parser.parse_args()
    normalized = args.model.with_name(args.model.stem + "_normalized.onnx")
    onnx.save(with_normalization(onnx.load(str(args.model))), normalized)
    base = yaml.safe_load((HERE / "resnet20_cifar10.yaml").read_text())
    base.update(model=str(normalized), start_nodes=["/conv1/Conv"])
    if args.limit:
        base["data"]["evaluation"]["limit"] = args.limit
    host = dict(base["preprocess"])
    bare = {k: v for k, v in host.items() if k not in ("mean", "std")}
    run({**base, "preprocess": host}, "host does (x - mean) / std (cut at /conv1/Conv):")
    run({**base, "preprocess": bare}, "host without the normalization:")
    recipe = [{"normalization": {"mean": MEAN, "std": STD}}, *base["recipe"]]
    run({**base, "preprocess": bare, "recipe": recipe},
        "normalization folded into the accelerator's graph (recipe normalization):")


if __name__ == "__main__":
    main()
