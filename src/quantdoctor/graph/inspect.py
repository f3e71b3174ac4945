"""Read what a model expects from its graph alone: input layout and size, the task and the
detection decoder its outputs fit, normalization done inside the graph, activations at the
outputs. ``quantdoctor init`` turns this into a commented doctor.yaml. No model is executed.

>>> from quantdoctor.graph import load_model
>>> guess = guess_model(load_model(Path("model.onnx")), name="model")   # doctest: +SKIP
>>> guess.task, guess.decoder, guess.layout, guess.input_hw             # doctest: +SKIP
('classification', 'classification', 'nchw', (224, 224))
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError
from .model import TensorInfo, check_input_matches, inspect_model

log = logging.getLogger(__name__)

#: Ops that only move or select values: an activation before them still decides the output.
_MOVE_OPS = frozenset(
    {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Split",
     "Gather", "Concat", "Cast", "MaxPool", "Expand", "DepthToSpace", "SpaceToDepth", "Pad",
     "Tile"}
)
#: Elementwise ops with a constant operand that, right at the input, normalize it.
_NORM_OPS = frozenset({"Sub", "Div", "Mul", "Add"})
#: Strides of the YOLO heads the built-in decoders know (P3-P5, and P3-P6 models).
STRIDE_SETS = ([8, 16, 32], [8, 16, 32, 64])
#: Input size assumed when the model's input size is dynamic.
DEFAULT_SIZE = {"classification": 224, "detection": 640}

_NAME_HINTS = (
    ("yolox", re.compile(r"yolo[-_ ]?x", re.I)),
    ("yolov8", re.compile(r"yolo[-_ ]?v?(8|9|10|11)(?!\d)", re.I)),
    ("yolov5", re.compile(r"yolo[-_ ]?v?5(?!\d)", re.I)),
)


@dataclass(frozen=True)
class InputNormalization:
    """``x * scale + offset`` per channel, computed by the first elementwise ops on the input
    (Sub/Div/Mul/Add with constants): the model normalizes its input itself."""

    ops: tuple[str, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @property
    def mean(self) -> list[float]:
        """The equivalent ``(x - mean) / std``'s mean."""
        return [-o / s for s, o in zip(self.scale, self.offset, strict=True)]

    @property
    def std(self) -> list[float]:
        return [1.0 / s for s in self.scale]

    @property
    def expects(self) -> str:
        """``0..255`` when the graph scales its input down itself (std or mean above 10: it
        takes raw pixels), else ``0..1``."""
        big = max(abs(v) for v in (*self.std, *self.mean))
        return "0..255" if big > 10 else "0..1"

    def describe(self) -> str:
        mean = ", ".join(f"{v:.4g}" for v in self.mean)
        std = ", ".join(f"{v:.4g}" for v in self.std)
        return f"{' → '.join(self.ops)}: (x - [{mean}]) / [{std}]"


@dataclass
class ModelGuess:
    """What the graph says about the pipeline; every guess carries its reason."""

    input: TensorInfo
    outputs: list[TensorInfo]
    output_shapes: dict[str, tuple[int | str | None, ...]]
    layout: str
    layout_reason: str
    input_hw: tuple[int, int]
    input_hw_reason: str
    task: str
    task_reason: str
    decoder: str  # classification | yolox | yolov5 | yolov8
    decoder_reason: str
    output: str  # the output that holds the scores / boxes
    num_classes: int | None
    strides: list[int]
    name_hint: str | None
    first_ops: list[str]
    normalization: InputNormalization | None
    input_transpose: list[int] | None
    output_activations: list[str]
    notes: list[str] = field(default_factory=list)


def name_hint(model: onnx.ModelProto, name: str = "") -> tuple[str | None, str]:
    """A YOLO family named by the file name, producer, graph name, doc string or metadata."""
    texts = [
        ("file name", name),
        ("graph name", model.graph.name),
        ("producer", model.producer_name),
        ("doc string", model.doc_string[:500]),
        *(("metadata", f"{p.key}={p.value}"[:500]) for p in model.metadata_props),
    ]
    for family, pattern in _NAME_HINTS:
        for where, text in texts:
            if text and pattern.search(text):
                return family, f"the {where} {text[:60]!r} names {family}"
    return None, ""


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant nodes by name (converted to numpy only when looked at)."""
    out = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = n.attribute[0].t
    return out


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def first_ops(model: onnx.ModelProto, input_name: str) -> list[str]:
    """Op types of the nodes that read the input directly."""
    return [n.op_type for n in _consumers(model).get(input_name, [])]


def input_normalization(
    model: onnx.ModelProto, input_name: str, layout: str
) -> tuple[InputNormalization | None, list[int] | None]:
    """The chain of constant Sub/Div/Mul/Add right after the input (through a Transpose or
    Cast), as one per-channel affine map; and the perm of a Transpose on the input."""
    consts, consumers = _constants(model), _consumers(model)
    scale, offset = np.ones(3), np.zeros(3)
    ops: list[str] = []
    transpose: list[int] | None = None
    channel_axis = 1 if layout == "nchw" else 3
    tensor = input_name
    while True:
        users = consumers.get(tensor, [])
        if len(users) != 1:
            break
        node = users[0]
        if node.op_type in ("Transpose", "Cast") and not ops:
            if node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                transpose = perm
                if perm is not None and len(perm) == 4:
                    channel_axis = perm.index(channel_axis)
            tensor = node.output[0]
            continue
        if node.op_type not in _NORM_OPS or len(node.input) != 2:
            break
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        proto = consts.get(other)
        if proto is None or int(np.prod(proto.dims)) not in (1, 3):
            break
        value = numpy_helper.to_array(proto)
        if not np.issubdtype(value.dtype, np.floating):
            break
        if value.size == 3:  # per channel only if it broadcasts onto the channel axis
            axis = 4 - value.ndim + list(value.shape).index(3)
            if value.ndim > 4 or axis != channel_axis:
                break
        c = value.astype(np.float64).reshape(-1)
        c = np.repeat(c, 3) if c.size == 1 else c
        first = node.input[0] == tensor
        if node.op_type == "Sub":
            if first:
                offset = offset - c
            else:  # c - x
                scale, offset = -scale, c - offset
        elif node.op_type == "Add":
            offset = offset + c
        elif node.op_type == "Mul":
            scale, offset = scale * c, offset * c
        elif node.op_type == "Div":
            if not first or np.any(c == 0):
                break
            scale, offset = scale / c, offset / c
        ops.append(node.op_type)
        tensor = node.output[0]
    if not ops or np.any(scale == 0):
        return None, transpose
    return InputNormalization(tuple(ops), tuple(scale.tolist()), tuple(offset.tolist())), transpose


def output_activations(model: onnx.ModelProto, output: str) -> list[str]:
    """Sigmoid/Softmax nodes that feed ``output`` through data-movement ops only (all
    branches of a Concat are followed: YOLO heads sigmoid only the score part)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found: set[str] = set()
    todo, seen = [output], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in ("Sigmoid", "Softmax", "LogSoftmax"):
            found.add(node.op_type)
        elif node.op_type in _MOVE_OPS:
            todo.extend(node.input if node.op_type == "Concat" else node.input[:1])
    return sorted(found)


def _layout(inp: TensorInfo) -> tuple[str, str]:
    shape = inp.shape
    second, last = shape[1], shape[3]
    if second in (1, 3) and last not in (1, 3):
        return "nchw", f"dimension 1 of the input is {second} (channels first)"
    if last in (1, 3) and second not in (1, 3):
        return "nhwc", f"the last dimension of the input is {last} (channels last)"
    return "nchw", f"cannot tell from {list(shape)}: assumed channels first (CHECK)"


def _concrete_output_shapes(
    model: onnx.ModelProto, inp: TensorInfo, layout: str, hw: tuple[int, int]
) -> dict[str, tuple[int | str | None, ...]]:
    """Output shapes with the input fixed to batch 1 at ``hw`` (ONNX shape inference), so that
    dynamic models still show their number of boxes; the declared shapes when that fails."""
    declared = {o.name: o.shape for o in inspect_model(model).outputs}
    if all(isinstance(d, int) for s in declared.values() for d in s[1:]):
        return declared
    fixed = copy.deepcopy(model)
    dims = [1, 3, *hw] if layout == "nchw" else [1, *hw, 3]
    for vi in fixed.graph.input:
        if vi.name == inp.name:
            for d, v in zip(vi.type.tensor_type.shape.dim, dims, strict=False):
                d.ClearField("dim_param")
                d.dim_value = v
    for vi in fixed.graph.output:  # let inference fill them in
        vi.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception as err:  # exotic ops: keep what the file declares
        log.info("shape inference failed: %s", err)
        return declared
    out = {o.name: o.shape for o in inspect_model(inferred).outputs}
    return {k: (v if len(v) else declared[k]) for k, v in out.items()}


def grid_anchors(hw: tuple[int, int], strides: list[int]) -> int:
    """Predictions of an anchor-free YOLO head (one per grid cell over all strides)."""
    return sum((hw[0] // s) * (hw[1] // s) for s in strides)


def _detection_decoder(
    shape: tuple[int | str | None, ...], hw: tuple[int, int], hint: str | None, hint_why: str
) -> tuple[str, str, int | None, list[int]]:
    """(decoder, reason, number of classes, strides) of a [N, a, b] detection output."""
    a, b = shape[1], shape[2]
    a = a if isinstance(a, int) else None
    b = b if isinstance(b, int) else None
    cells = {tuple(s): grid_anchors(hw, s) for s in STRIDE_SETS}

    def on_grid(n: int | None) -> bool:
        return n is not None and any(n in (c, 3 * c) for c in cells.values())

    # Which dimension holds the boxes: the one that fits the grid, else the longer one.
    if on_grid(a) != on_grid(b):
        boxes_last = on_grid(b)
    else:
        boxes_last = a is not None and b is not None and b > a
    if boxes_last and a is not None:  # [N, 4 + nc, boxes]
        strides = next((list(s) for s, n in cells.items() if n == b), [8, 16, 32])
        reason = (
            f"the output is [N, {a}, {b}] = [N, 4 + {a - 4} classes, {b} boxes]: YOLOv8 style "
            "(boxes last, no objectness)"
        )
        if hint and hint != "yolov8":
            reason += f"; {hint_why}, but only the YOLOv8 decoder reads this layout"
        return "yolov8", reason, a - 4, strides
    boxes, values = a, b
    nc = values - 5 if values is not None else None
    head = f"the output is [N, {boxes}, {values}] = [N, boxes, 5 + {nc} classes]"
    if boxes is not None:
        for s, n in cells.items():
            if boxes == n:
                why = (
                    f"{head}, and {boxes} boxes = one per grid cell at strides "
                    f"{list(s)} on {hw[0]}x{hw[1]}: anchor-free raw grid outputs (YOLOX)"
                )
                if hint and hint != "yolox":
                    why += f"; {hint_why}, but the box count decides"
                return "yolox", why, nc, list(s)
            if boxes == 3 * n:
                why = (
                    f"{head}, and {boxes} boxes = 3 anchors per grid cell at strides {list(s)} "
                    f"on {hw[0]}x{hw[1]}: decoded anchor-based boxes (YOLOv5)"
                )
                if hint and hint != "yolov5":
                    why += f"; {hint_why}, but the box count decides"
                return "yolov5", why, nc, list(s)
    if hint in ("yolox", "yolov5"):
        why = f"{head}; {hint_why} (the box count fits no known grid: CHECK)"
        return hint, why, nc, [8, 16, 32]
    return (
        "yolov5",
        f"{head}; the box count fits no known grid and nothing names the family: assumed "
        "decoded boxes (YOLOv5 style; CHECK, use yolox for raw grid outputs)",
        nc,
        [8, 16, 32],
    )


def guess_model(model: onnx.ModelProto, name: str = "") -> ModelGuess:
    """Guess layout, size, task and decoder of an image model from its graph.

    ``name`` (e.g. the file's stem) is one more place a YOLO family may be named."""
    info = inspect_model(model)
    if not info.inputs or not model.graph.node:
        raise ModelError("the file holds no ONNX graph (no inputs or no nodes); export it again")
    layout, layout_reason = "nchw", ""
    if len(info.inputs) == 1 and len(info.inputs[0].shape) == 4:
        layout, layout_reason = _layout(info.inputs[0])
        shape = info.inputs[0].shape
        if (shape[1] if layout == "nchw" else shape[3]) == 1:
            raise ModelError(
                f"model input '{info.inputs[0].name}' {list(shape)} takes 1-channel (greyscale) "
                "images; quantdoctor feeds 3-channel images: export the model with a 3-channel "
                "input (e.g. average the channels in a first 1x1 Conv)"
            )
    # The checks the engine makes later (one float32 4-D input, 3 channels), made now so that
    # init fails with the same clear sentence instead of writing a config that cannot run.
    inp = check_input_matches(info, None, layout)
    h, w = (inp.shape[2], inp.shape[3]) if layout == "nchw" else (inp.shape[1], inp.shape[2])
    hint, hint_why = name_hint(model, name)
    if not info.outputs:
        raise ModelError("the model has no outputs; export it again")
    rank = {o.name: len(o.shape) for o in info.outputs}
    first = info.outputs[0]
    # The task decides the default size of a dynamic input, so look at the ranks first.
    looks_detection = rank[first.name] == 3
    task = "detection" if looks_detection else "classification"
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        hw, hw_reason = (h, w), f"the model input is {h}x{w}"
    else:
        size = DEFAULT_SIZE[task]
        hw = (size, size)
        hw_reason = f"the input size is dynamic ({h}x{w}): assumed {size}x{size} (CHECK)"
    shapes = _concrete_output_shapes(model, inp, layout, hw)
    shape = shapes[first.name]
    norm, transpose = input_normalization(model, inp.name, layout)
    acts = output_activations(model, first.name)
    strides: list[int] = [8, 16, 32]
    notes: list[str] = []
    if len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1)):
        task = "classification"
        nc = shape[1] if isinstance(shape[1], int) else None
        decoder = "classification"
        task_reason = f"output '{first.name}' {describe_shape(shape)} holds one score per class"
        decoder_reason = task_reason
    elif len(shape) == 3:
        task = "detection"
        decoder, decoder_reason, nc, strides = _detection_decoder(shape, hw, hint, hint_why)
        task_reason = f"output '{first.name}' {describe_shape(shape)} holds boxes and class scores"
        if nc is not None and nc < 1:
            raise ModelError(
                f"output '{first.name}' {list(shape)} is too small for boxes and class scores; "
                "write doctor.yaml by hand with a python postprocess (README \"Detection\")"
            )
    else:
        outs = ", ".join(f"'{o.name}' {list(shapes[o.name])}" for o in info.outputs)
        raise ModelError(
            f"cannot tell the task from the model outputs ({outs}): quantdoctor's built-in "
            "decoders read one [N, classes] or [N, boxes, values] tensor; export the model with "
            "its decoding head, or write doctor.yaml by hand with a python postprocess"
        )
    if len(info.outputs) > 1:
        others = ", ".join(o.name for o in info.outputs[1:])
        notes.append(f"the model has {len(info.outputs)} outputs; '{first.name}' is decoded, "
                     f"{others} ignored")
    return ModelGuess(
        input=inp,
        outputs=info.outputs,
        output_shapes=shapes,
        layout=layout,
        layout_reason=layout_reason,
        input_hw=hw,
        input_hw_reason=hw_reason,
        task=task,
        task_reason=task_reason,
        decoder=decoder,
        decoder_reason=decoder_reason,
        output=first.name,
        num_classes=nc,
        strides=strides,
        name_hint=hint,
        first_ops=first_ops(model, inp.name),
        normalization=norm,
        input_transpose=transpose,
        output_activations=acts,
        notes=notes,
    )


def describe_shape(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


__all__ = [
    "InputNormalization",
    "ModelGuess",
    "describe_shape",
    "first_ops",
    "grid_anchors",
    "guess_model",
    "input_normalization",
    "name_hint",
    "output_activations",
]

