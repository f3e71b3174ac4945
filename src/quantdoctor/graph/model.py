"""Load an ONNX model, clean it (constant folding, BatchNorm folding) and describe its I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnx import helper, numpy_helper

from ..errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when the first dimension is a fixed number, else None."""
        d = self.shape[0] if self.shape else None
        return d if isinstance(d, int) and d > 0 else None


@dataclass(frozen=True)
class ModelInfo:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int


def load_model(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file (external data next to it is loaded too)."""
    if not path.is_file():
        raise ModelError(f"model file {path} not found; fix `model:` in the config")
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise ModelError(f"{path} is not a readable ONNX model ({err}); export it again") from None
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # the checker is strict; warn, ONNX Runtime decides
        log.warning("onnx.checker: %s", str(err).splitlines()[0])
    return model


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    t = vi.type.tensor_type
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(vi.name, tuple(dims), helper.tensor_dtype_to_np_dtype(t.elem_type))


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def inspect_model(model: onnx.ModelProto) -> ModelInfo:
    inits = {i.name for i in model.graph.initializer}
    inputs = [_tensor_info(i) for i in model.graph.input if i.name not in inits]
    outputs = [_tensor_info(o) for o in model.graph.output]
    return ModelInfo(inputs, outputs, opset_of(model))


def _fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold BatchNormalization into the Conv that feeds it; returns how many were folded."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    producer = {o: n for n in g.node for o in n.output}
    folded = []
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers.get(bn.input[0], 0) != 1:
            continue
        if conv.input[1] not in inits or not all(x in inits for x in bn.input[1:5]):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[x]) for x in bn.input[1:5])
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(w.shape[0])
        )
        k = gamma / np.sqrt(var + eps)
        w = w * k.reshape(-1, *([1] * (w.ndim - 1)))
        b = (b - mean) * k + beta
        wname, bname = conv.input[1] + "_bnfold", bn.output[0] + "_bias"
        g.initializer.extend(
            [
                numpy_helper.from_array(w.astype(np.float32), wname),
                numpy_helper.from_array(b.astype(np.float32), bname),
            ]
        )
        del conv.input[1:]
        conv.input.extend([wname, bname])
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        g.node.remove(bn)
    return len(folded)


def clean_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and graph clean-up with onnxslim, then BatchNorm folding.

    onnxslim failing on an exotic graph is not fatal: the unslimmed model is used."""
    try:
        import onnxslim

        slimmed = onnxslim.slim(model)
        if isinstance(slimmed, onnx.ModelProto):
            model = slimmed
    except Exception as err:
        log.warning("onnxslim could not simplify the model (%s); using it as given", err)
    if opset_of(model) < 13:
        # Per-channel QDQ (DequantizeLinear with axis) needs opset 13.
        try:
            model = onnx.version_converter.convert_version(model, 13)
        except Exception as err:
            log.warning("could not convert the model from opset %d to 13: %s", opset_of(model), err)
    folded = _fold_batchnorm(model)
    if folded:
        log.info("folded %d BatchNormalization nodes into Conv", folded)
    # Give every node a name: layers are addressed by name in recipes and reports.
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def check_input_matches(
    info: ModelInfo, hw: tuple[int, int] | None, layout: str, where: str = "preprocess"
) -> TensorInfo:
    """The model's single image input must take what the preprocessing produces."""
    if len(info.inputs) != 1:
        names = ", ".join(i.name for i in info.inputs)
        raise ModelError(
            f"the model has {len(info.inputs)} inputs ({names}); quantdoctor feeds one image "
            "input: cut the graph with start_nodes or export a single-input model"
        )
    inp = info.inputs[0]
    if inp.dtype != np.float32:
        raise ModelError(
            f"model input '{inp.name}' has dtype {inp.dtype}; quantdoctor feeds float32 "
            "images: export the model with a float32 input"
        )
    if len(inp.shape) != 4:
        raise ModelError(
            f"model input '{inp.name}' has shape {list(inp.shape)}; an image input needs 4 "
            "dimensions (NCHW or NHWC)"
        )
    if layout == "nchw":
        c, h, w = inp.shape[1], inp.shape[2], inp.shape[3]
    else:
        h, w, c = inp.shape[1], inp.shape[2], inp.shape[3]
    if isinstance(c, int) and c != 3:
        other = "nhwc" if layout == "nchw" else "nchw"
        raise ModelError(
            f"model input '{inp.name}' {list(inp.shape)} has {c} channels in the "
            f"{layout.upper()} layout, the preprocessing gives 3; set {where}.layout: {other} "
            f"if the model is channels-{'last' if other == 'nhwc' else 'first'}"
        )
    if hw is None:
        return inp  # images keep their own size: checked once they are decoded
    for want, got, axis in ((h, hw[0], "height"), (w, hw[1], "width")):
        if isinstance(want, int) and want != got:
            raise ModelError(
                f"model input '{inp.name}' {list(inp.shape)} takes {h}x{w} images but the "
                f"preprocessing produces {hw[0]}x{hw[1]} ({axis} differs); set "
                f"{where}.center_crop (or resize.size / letterbox.size) to [{h}, {w}]"
            )
    return inp


def input_hw(inp: TensorInfo, layout: str) -> tuple[int | str | None, int | str | None]:
    return (inp.shape[2], inp.shape[3]) if layout == "nchw" else (inp.shape[1], inp.shape[2])
