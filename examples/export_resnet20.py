"""Export a pretrained ResNet-20 for CIFAR-10 to ONNX.

What it does
    Defines ResNet-20 for CIFAR-10 (He et al. 2016, "Deep Residual Learning for Image
    Recognition", section 4.2): a 3x3 stem convolution with 16 channels, three stages of three
    BasicBlocks with 16/32/64 channels (stride 2 at the start of stages 2 and 3), a
    BatchNorm after every convolution, ReLU, global average pooling and ``Linear(64, 10)``.
    Shortcuts are "option A": the identity, subsampled with stride 2 (``x[:, :, ::2, ::2]``)
    and zero-padded in the channel dimension where a stage changes width, so the shortcuts
    have no parameters. It loads the pretrained weights, puts the model in eval mode and
    exports it with the TorchScript-based ONNX exporter (opset 17, BatchNorm folded into the
    convolutions), then tidies the graph with :func:`simplify` (``--raw`` skips that). The
    graph has one input ``input`` of shape ``[N, 3, 32, 32]`` (float32, dynamic batch ``N``)
    and one output ``logits`` of shape ``[N, 10]`` (pre-softmax).

Preprocessing the model expects
    RGB, ``x / 255``, then per channel ``(x - mean) / std`` with mean (0.485, 0.456, 0.406)
    and std (0.229, 0.224, 0.225), NCHW. Class order: airplane, automobile, bird, cat, deer,
    dog, frog, horse, ship, truck.

Weights and licence
    ``resnet20-12fca82f.th`` from akamaster/pytorch_resnet_cifar10 (BSD-2-Clause), a
    checkpoint ``{'best_prec1', 'state_dict'}`` whose keys carry a ``module.`` prefix
    (it was saved from ``nn.DataParallel``). It is not part of this repository: by default it
    is read from ``$QUANTDOCTOR_DATA/cifar10/resnet20-12fca82f.th``, where
    ``QUANTDOCTOR_DATA`` defaults to ``../shared/data`` relative to the repository root. The
    architecture code below is written for this project.

How to run
    pip install -e '.[examples]'   # installs torch
    python examples/export_resnet20.py -o resnet20_cifar10.onnx [--weights PATH] [--raw]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 32
NUM_CLASSES = 10
OPSET = 17

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA_DIR = pathlib.Path(os.environ.get("QUANTDOCTOR_DATA", REPO_ROOT.parent / "shared" / "data"))
DEFAULT_WEIGHTS = DATA_DIR / "cifar10" / "resnet20-12fca82f.th"


def build_model(num_blocks: tuple[int, int, int] = (3, 3, 3)) -> torch.nn.Module:
    """Return an untrained CIFAR ResNet (ResNet-20 for the default ``num_blocks``)."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class BasicBlock(nn.Module):
        """conv3x3-BN-ReLU-conv3x3-BN, plus an option-A (parameter-free) shortcut, then ReLU."""

        def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.stride = stride
            self.extra_channels = planes - in_planes

        def shortcut(self, x: torch.Tensor) -> torch.Tensor:
            if self.stride != 1:
                x = x[:, :, :: self.stride, :: self.stride]
            if self.extra_channels > 0:
                # Zero channels split evenly before and after, as in the reference code
                # (F.pad pads the last dimension first: W, H, then C).
                half = self.extra_channels // 2
                x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
            return x

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class CifarResNet(nn.Module):
        def __init__(self, num_blocks: tuple[int, int, int], num_classes: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            in_planes = 16
            stages = []
            for planes, blocks, stride in zip((16, 32, 64), num_blocks, (1, 2, 2), strict=True):
                layers = []
                for i in range(blocks):
                    layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                    in_planes = planes
                stages.append(nn.Sequential(*layers))
            self.layer1, self.layer2, self.layer3 = stages
            self.linear = nn.Linear(64, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
            return self.linear(x)

    return CifarResNet(num_blocks, NUM_CLASSES)


def load_model(weights: pathlib.Path = DEFAULT_WEIGHTS) -> torch.nn.Module:
    """Return ResNet-20 with the pretrained CIFAR-10 weights, in eval mode."""
    import torch

    weights = pathlib.Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"ResNet-20 weights not found: {weights} "
            "(pass --weights or set QUANTDOCTOR_DATA to the shared data folder)"
        )
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("state_dict", checkpoint)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    model = build_model()
    # The checkpoint has no BatchNorm num_batches_tracked buffers; BatchNorm's loader fills
    # them in for state dicts without version metadata, so strict loading still succeeds.
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Tidy the TorchScript exporter's output in place; returns ``model``.

    * Folds every node whose inputs are all constants (the legacy exporter builds the pads of
      each ``F.pad``/``nn.ZeroPad2d`` from a ConstantOfShape/Slice/Transpose/Cast chain that
      its own constant folding skips) into an initializer.
    * Fuses a zero ``Pad`` of the spatial axes into the ``pads`` of the ``Conv`` it feeds
      (ONNX allows asymmetric pads), as TensorFlow/TFLite do for "SAME" padding.
    * Drops nodes, initializers and value_info that are no longer used.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    initializers = list(graph.initializer)
    nodes = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(name in consts for name in inputs)):
            values = ReferenceEvaluator(node).run(None, {name: consts[name] for name in inputs})
            for name, value in zip(node.output, values, strict=True):
                consts[name] = np.asarray(value)
                initializers.append(numpy_helper.from_array(consts[name], name))
        else:
            nodes.append(node)

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    fused = set()
    for pad in nodes:
        if pad.op_type != "Pad" or len(pad.input) < 2 or pad.output[0] in graph_outputs:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
        pads = consts.get(pad.input[1])
        value = consts.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
        users = consumers.get(pad.output[0], [])
        if (
            attrs.get("mode", b"constant") != b"constant"
            or (len(pad.input) > 3 and pad.input[3])
            or pads is None
            or value is None
            or np.any(np.asarray(value) != 0)
            or pads.shape != (8,)
            or np.any(pads[[0, 1, 4, 5]] != 0)
            or len(users) != 1
            or users[0].op_type != "Conv"
            or users[0].input[0] != pad.output[0]
        ):
            continue
        conv = users[0]
        conv_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        if conv_attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue
        old = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept)
        conv.attribute.append(onnx.helper.make_attribute("pads", [int(p) for p in new]))
        conv.input[0] = pad.input[0]
        fused.add(id(pad))
    nodes = [node for node in nodes if id(node) not in fused]

    used = {name for node in nodes for name in node.input} | graph_outputs
    produced = {name for node in nodes for name in node.output}
    del graph.node[:]
    graph.node.extend(nodes)
    kept_inits = [t for t in initializers if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    kept_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    onnx.checker.check_model(model)
    return model


def export(
    path: pathlib.Path, weights: pathlib.Path = DEFAULT_WEIGHTS, *, raw: bool = False
) -> pathlib.Path:
    """Export the pretrained ResNet-20 to ``path`` (ONNX, opset 17, dynamic batch).

    ``raw=True`` keeps the exporter's graph as is (no :func:`simplify`).
    """
    import onnx
    import torch

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(weights)
    dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        )
    if not raw:
        onnx.save(simplify(onnx.load(str(path))), str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-o",
        "--output",
        type=pathlib.Path,
        default=pathlib.Path("resnet20_cifar10.onnx"),
        help="where to write the ONNX model (default: %(default)s)",
    )
    parser.add_argument(
        "--weights",
        type=pathlib.Path,
        default=DEFAULT_WEIGHTS,
        help="ResNet-20 checkpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="keep the exporter's graph as is (explicit pads computation for the shortcuts)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    out = export(args.output, weights=args.weights, raw=args.raw)
    elapsed = time.perf_counter() - start
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.2f} MB) in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
