"""``quantdoctor export``: write the QDQ model that the ``int8`` context runs, its encodings
and the recipe it was built with.

>>> from quantdoctor import load_config
>>> from quantdoctor.commands.export import export_model
>>> result = export_model(load_config("doctor.yaml"), Path("model.qdq.onnx"))  # doctest: +SKIP
>>> result.model, result.encodings, result.recipe                              # doctest: +SKIP
(PosixPath('model.qdq.onnx'), PosixPath('model.encodings.json'), PosixPath('model.recipe.yaml'))

Three files, side by side:

- ``model.qdq.onnx`` — ``engine.model("int8")`` as it is (the engine applies the recipe; this
  module quantizes nothing itself), validated with ``onnx.checker`` (full check) first;
- ``model.encodings.json`` — per quantized tensor its scale, zero point, bits, signedness and
  axis, read back from the written graph (docs/encodings.md has the schema);
- ``model.recipe.yaml`` — the config's recipe and the target as resolved.

The output paths are checked before any work (a folder in the way, a missing or read-only
folder, an existing file without ``force``), and all three files are written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, numpy_helper

from .. import __version__
from ..config import DoctorConfig
from ..errors import QuantdoctorError
from ..files import check_output_file
from ..progress import Progress
from ..quant.qdq import FLOAT_SUFFIX
from ..report.findings import to_json_types

#: Version of the encodings.json layout (docs/encodings.md); bumped on incompatible change.
FORMAT_VERSION = 1
#: Suffix of the tensor that holds a dequantized value in quantdoctor's QDQ graphs.
DEQUANTIZED_SUFFIX = "__dequantized"
#: Q/DQ operator domains: ONNX's own and ONNX Runtime's contrib ops (4/16-bit at any opset).
QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
#: Integer element types of quantized tensors: (bits, signed).
INTEGER_TYPES: dict[int, tuple[int, bool]] = {
    TensorProto.INT4: (4, True),
    TensorProto.UINT4: (4, False),
    TensorProto.INT8: (8, True),
    TensorProto.UINT8: (8, False),
    TensorProto.INT16: (16, True),
    TensorProto.UINT16: (16, False),
    TensorProto.INT32: (32, True),
}
#: Layer ops whose input 1 is the weight and input 2 the bias.
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger")
_PROTOBUF_LIMIT = 2**31 - 1


# --- encodings read from a QDQ graph --------------------------------------------------------


@dataclass
class TensorEncoding:
    """How one tensor is quantized in a QDQ graph (one entry of encodings.json).

    ``name`` is the float tensor's name in the float model; ``graph_name`` the tensor that
    carries its dequantized value in the QDQ graph; ``form`` how the graph writes the
    quantization: ``qdq`` (QuantizeLinear/DequantizeLinear), ``fake_quant`` (the same
    rounding as float ops Div, Round, Add, Clip, Sub, Mul) or ``float_constant`` (a weight
    stored already dequantized, its values on the grid given here)."""

    name: str
    kind: str
    bits: int
    signed: bool
    symmetric: bool
    scale: list[float]
    zero_point: list[int]
    axis: int | None
    layer: str | None
    graph_name: str
    form: str
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The encodings.json entry (JSON types only)."""
        return to_json_types(dataclasses.asdict(self))


@dataclass
class _Graph:
    """Look-ups over one graph: constant values and types, producers, consumers."""

    model: onnx.ModelProto
    values: dict[str, np.ndarray] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    producer: dict[str, tuple[int, onnx.NodeProto]] = field(default_factory=dict)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Graph:
        g = cls(model)
        for init in model.graph.initializer:
            g.values[init.name] = numpy_helper.to_array(init)
            g.types[init.name] = init.data_type
        for position, node in enumerate(model.graph.node):
            for out in node.output:
                g.producer[out] = (position, node)
            for k, name in enumerate(node.input):
                g.consumers.setdefault(name, []).append((node, k))
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                g._constant(node)
        return g

    def _constant(self, node: onnx.NodeProto) -> None:
        for a in node.attribute:
            if a.name == "value":
                self.values[node.output[0]] = numpy_helper.to_array(a.t)
                self.types[node.output[0]] = a.t.data_type
            elif a.name in ("value_float", "value_floats"):
                self.values[node.output[0]] = np.asarray(
                    onnx.helper.get_attribute_value(a), np.float32
                )
                self.types[node.output[0]] = TensorProto.FLOAT
            elif a.name in ("value_int", "value_ints"):
                self.values[node.output[0]] = np.asarray(
                    onnx.helper.get_attribute_value(a), np.int64
                )
                self.types[node.output[0]] = TensorProto.INT64

    def only_consumer(self, name: str, op: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0][0].op_type == op and users[0][0].domain in ("", "ai.onnx"):
            return users[0][0]
        return None

    def position(self, node: onnx.NodeProto) -> int:
        return self.producer[node.output[0]][0] if node.output else 0


def _is_op(node: onnx.NodeProto, op: str) -> bool:
    return node.op_type == op and node.domain in QDQ_DOMAINS


def _strip(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if suffix and name.endswith(suffix) and name != suffix else name


def _qdq_type(g: _Graph, node: onnx.NodeProto) -> int | None:
    """The integer element type a QuantizeLinear produces / a DequantizeLinear consumes."""
    if len(node.input) > 2 and node.input[2] in g.types:
        return g.types[node.input[2]]
    output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    if node.op_type == "QuantizeLinear":
        return output_dtype or TensorProto.UINT8  # ONNX: uint8 without a zero point
    x = node.input[0]
    if x in g.types:
        return g.types[x]
    if x in g.producer and _is_op(g.producer[x][1], "QuantizeLinear"):
        return _qdq_type(g, g.producer[x][1])
    return TensorProto.UINT8


def _axis(node: onnx.NodeProto, scale: np.ndarray) -> int | None:
    """The quantization axis of a per-channel Q/DQ (ONNX's default is 1); None per tensor."""
    if scale.ndim == 0 or (scale.ndim == 1 and scale.size == 1 and not _has_axis(node)):
        return None
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _has_axis(node: onnx.NodeProto) -> bool:
    return any(a.name == "axis" for a in node.attribute)


def _params(
    g: _Graph, node: onnx.NodeProto
) -> tuple[np.ndarray, np.ndarray, int, bool, int | None] | None:
    """(scale, zero point, bits, signed, axis) of a Q/DQ node with constant parameters."""
    scale = g.values.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        return None
    etype = _qdq_type(g, node)
    if etype not in INTEGER_TYPES:
        return None
    bits, signed = INTEGER_TYPES[etype]
    if len(node.input) > 2 and node.input[2]:
        zp = g.values.get(node.input[2])
        if zp is None:
            return None
    else:
        zp = np.zeros(scale.shape, np.int64)
    return scale, np.asarray(zp), bits, signed, _axis(node, scale)


def _entry(
    name: str,
    kind: str,
    params: tuple[np.ndarray, np.ndarray, int, bool, int | None],
    layer: str | None,
    graph_name: str,
    form: str,
    nodes: list[str],
) -> TensorEncoding:
    scale, zp, bits, signed, axis = params
    zps = [int(z) for z in np.asarray(zp, np.int64).reshape(-1)]
    return TensorEncoding(
        name=name,
        kind=kind,
        bits=bits,
        signed=signed,
        symmetric=bool(signed and all(z == 0 for z in zps)),
        scale=[float(s) for s in np.asarray(scale, np.float32).reshape(-1)],
        zero_point=zps,
        axis=axis,
        layer=layer,
        graph_name=graph_name,
        form=form,
        nodes=nodes,
    )


def _parameter_kind(g: _Graph, dq: onnx.NodeProto) -> tuple[str, str | None]:
    """weight or bias, and the layer that uses it, for a DequantizeLinear of a constant."""
    for user, k in g.consumers.get(dq.output[0], []):
        if user.op_type in _WEIGHTED_OPS:
            return ("bias" if k == 2 else "weight"), user.name or None
    return ("bias" if g.types.get(dq.input[0]) == TensorProto.INT32 else "weight"), None


def _parameter_name(dq: onnx.NodeProto, layer: str | None) -> str:
    """The float initializer's name: quantdoctor writes ``<layer>__<name>__dequantized``;
    other tools' ``<name>_quantized`` inputs are recognized as well."""
    out = dq.output[0]
    if layer and out.startswith(f"{layer}__") and out.endswith(DEQUANTIZED_SUFFIX):
        return out[len(layer) + 2 : -len(DEQUANTIZED_SUFFIX)]
    return _strip(_strip(dq.input[0], "__quantized"), "_quantized")


def _fake_quant(g: _Graph, div: onnx.NodeProto) -> TensorEncoding | None:
    """A Div → Round → Add → Clip → Sub → Mul chain with constant scale, zero point and
    integer bounds (what qdq.py writes for 16-bit tensors of the integer-kernel model)."""
    if div.domain not in ("", "ai.onnx") or len(div.input) != 2 or div.input[1] not in g.values:
        return None
    chain = [div]
    for op in ("Round", "Add", "Clip", "Sub", "Mul"):
        nxt = g.only_consumer(chain[-1].output[0], op)
        if nxt is None:
            return None
        chain.append(nxt)
    _, rnd, add, clip, sub, mul = chain
    if len(clip.input) != 3:
        return None
    zp_name = add.input[1] if add.input[0] == rnd.output[0] else add.input[0]
    scale_name = mul.input[1] if mul.input[0] == sub.output[0] else mul.input[0]
    if sub.input[0] != clip.output[0] or sub.input[1] != zp_name or scale_name != div.input[1]:
        return None
    try:
        zp, lo, hi = (g.values[n] for n in (zp_name, clip.input[1], clip.input[2]))
    except KeyError:
        return None
    qmin, qmax = float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0])
    if qmin != round(qmin) or qmax != round(qmax) or qmax <= max(qmin, 0):
        return None
    signed = qmin < 0
    bits = int(qmax).bit_length() + (1 if signed else 0)
    if signed and (qmax != 2 ** (bits - 1) - 1 or not -(2 ** (bits - 1)) <= qmin <= -qmax):
        return None  # not a full (or narrow) signed integer range
    if not signed and (qmin != 0 or qmax != 2**bits - 1):
        return None
    scale = np.asarray(g.values[scale_name], np.float32)
    axis = None
    if scale.size > 1 and scale.ndim > 1:
        big = [i for i, d in enumerate(scale.shape) if d > 1]
        axis = big[0] if len(big) == 1 else None
    source = div.input[0]
    kind = "weight" if source in g.values else "activation"
    nodes = [n.name for n in chain]
    zp_int = np.rint(np.asarray(zp, np.float64)).astype(np.int64)
    return _entry(
        _strip(source, FLOAT_SUFFIX),
        kind,
        (scale, zp_int, bits, signed, axis),
        None,
        mul.output[0],
        "fake_quant",
        nodes,
    )


def _float_constants(
    g: _Graph, reference: onnx.ModelProto, notes: list[str]
) -> list[tuple[int, TensorEncoding]]:
    """Weights stored already dequantized (``<layer>__<name>__dequantized`` initializers, the
    4/16-bit weights of the integer-kernel model): their bits and scales come from the same
    tensor's DequantizeLinear in ``reference`` (the float-emulation variant), accepted only
    where dequantizing it reproduces the written constant exactly."""
    ref = _Graph.of(reference)
    found: list[tuple[int, TensorEncoding]] = []
    for name, value in g.values.items():
        if not name.endswith(DEQUANTIZED_SUFFIX) or name in g.producer:
            continue
        users = [(n, k) for n, k in g.consumers.get(name, []) if n.op_type in _WEIGHTED_OPS]
        if not users:
            continue
        dq = ref.producer.get(name, (0, None))[1]
        params = _params(ref, dq) if dq is not None and _is_op(dq, "DequantizeLinear") else None
        if params is None or dq is None or dq.input[0] not in ref.values:
            notes.append(f"{name}: a dequantized float constant without a matching "
                         "DequantizeLinear in the float-emulation model; no encoding written")
            continue
        scale, zp, _, _, axis = params
        q = ref.values[dq.input[0]].astype(np.float64)
        shape = [1] * q.ndim
        if axis is not None and np.asarray(scale).ndim == 1:
            shape[axis] = -1
        s = np.asarray(scale, np.float64).reshape(shape if axis is not None else ())
        z = np.asarray(zp, np.float64).reshape(shape if axis is not None else ())
        deq = ((q - z) * s).astype(np.float32)
        if deq.shape != value.shape or not np.allclose(deq, value, rtol=1e-6, atol=0.0):
            notes.append(f"{name}: the written constant is not on the grid of the "
                         "float-emulation model's DequantizeLinear; no encoding written")
            continue
        layer, k = users[0]
        kind = "bias" if k == 2 else "weight"
        entry = _entry(
            _parameter_name(dq, layer.name or None), kind, params, layer.name or None, name,
            "float_constant", [],
        )
        found.append((g.position(layer), entry))
    return found


def read_encodings(
    model: onnx.ModelProto,
    reference: onnx.ModelProto | None = None,
    notes: list[str] | None = None,
) -> list[TensorEncoding]:
    """Every quantized tensor of a QDQ graph, in graph order.

    Reads QuantizeLinear/DequantizeLinear nodes of the default and the ``com.microsoft``
    domain (a Q and its DQs are one activation entry; a DQ of a constant is a weight or
    bias) and fake-quant chains (Div, Round, Add, Clip, Sub, Mul). Weights stored already
    dequantized are described from ``reference`` (the float-emulation variant of the same
    model) when given. Q/DQ nodes that cannot be read (non-constant scales, non-integer
    types) are listed in ``notes``.

    >>> encodings = read_encodings(onnx.load("model.qdq.onnx"))   # doctest: +SKIP
    >>> encodings[0].name, encodings[0].bits, encodings[0].scale   # doctest: +SKIP
    ('input', 8, [0.003921568859368563])
    """
    notes = notes if notes is not None else []
    g = _Graph.of(model)
    found: list[tuple[int, TensorEncoding]] = []
    covered: set[str] = set()  # outputs of the DQs read with their Q
    for position, node in enumerate(model.graph.node):
        if _is_op(node, "QuantizeLinear"):
            params = _params(g, node)
            dqs = [
                n for n, _ in g.consumers.get(node.output[0], []) if _is_op(n, "DequantizeLinear")
            ]
            if params is None:
                notes.append(f"{node.name or node.output[0]}: QuantizeLinear with non-constant "
                             "or non-integer parameters; no encoding written")
                continue
            covered.update(n.output[0] for n in dqs)
            graph_name = dqs[0].output[0] if dqs else node.output[0]
            kind = "weight" if node.input[0] in g.values else "activation"
            found.append((position, _entry(
                _strip(node.input[0], FLOAT_SUFFIX), kind, params, None, graph_name, "qdq",
                [node.name, *(n.name for n in dqs)],
            )))
        elif node.op_type == "Div":
            entry = _fake_quant(g, node)
            if entry is not None:
                found.append((position, entry))
    for position, node in enumerate(model.graph.node):
        if not _is_op(node, "DequantizeLinear") or node.output[0] in covered:
            continue
        params = _params(g, node)
        if params is None:
            notes.append(f"{node.name or node.output[0]}: DequantizeLinear with non-constant "
                         "or non-integer parameters; no encoding written")
            continue
        if node.input[0] in g.values:
            kind, layer = _parameter_kind(g, node)
            name = _parameter_name(node, layer)
        else:  # an integer graph input, or a quantizer that is not a QuantizeLinear
            kind, layer = "activation", None
            name = _strip(node.output[0], DEQUANTIZED_SUFFIX)
        found.append((position, _entry(
            name, kind, params, layer, node.output[0], "qdq", [node.name]
        )))
    if reference is not None:
        found.extend(_float_constants(g, reference, notes))
    found.sort(key=lambda item: item[0])
    return [entry for _, entry in found]


def qdq_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of every QuantizeLinear/DequantizeLinear node (both domains), in graph order."""
    return [
        n.name
        for n in model.graph.node
        if _is_op(n, "QuantizeLinear") or _is_op(n, "DequantizeLinear")
    ]


def float_bias_layers(model: onnx.ModelProto) -> list[str]:
    """Conv/ConvTranspose/Gemm layers with a quantized input and weight but a float bias
    (kept float where int32 would overflow at the layer's scales, e.g. per-channel weights of
    near-dead channels). ONNX Runtime's WeightBiasQuantization optimizer quantizes such a
    bias to int32 itself, so a default session gives different outputs than the int8
    context, which runs with that optimizer disabled."""
    g = _Graph.of(model)

    def from_dq(name: str) -> onnx.NodeProto | None:
        node = g.producer.get(name, (0, None))[1]
        return node if node is not None and _is_op(node, "DequantizeLinear") else None

    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3:
            continue
        bias, dq_in = node.input[2], from_dq(node.input[0])
        if not bias or g.types.get(bias) != TensorProto.FLOAT or from_dq(node.input[1]) is None:
            continue
        if dq_in is not None and np.asarray(g.values.get(dq_in.input[1], [0, 0])).size == 1:
            found.append(node.name or node.output[0])
    return found


# --- the command ----------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    model: Path
    encodings: Path
    recipe: Path
    target: str
    #: quantized tensors in encodings.json
    tensors: int
    #: tensors per kind (activation, weight, bias) and per bit width
    by_kind: dict[str, int]
    by_bits: dict[int, int]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings): ``json.dumps(result.to_json())``."""
        return to_json_types(dataclasses.asdict(self))


def sidecar_paths(output: Path) -> tuple[Path, Path]:
    """encodings.json and recipe.yaml beside ``output``: ``model.qdq.onnx`` (or
    ``model.onnx``) → ``model.encodings.json``, ``model.recipe.yaml``."""
    name = output.name
    stem = name[: -len(".qdq.onnx")] if name.endswith(".qdq.onnx") else output.stem
    return output.with_name(f"{stem}.encodings.json"), output.with_name(f"{stem}.recipe.yaml")


def check_outputs(
    paths: Sequence[Path],
    force: bool,
    protected: Iterable[Path] = (),
    example: str = "model.qdq.onnx",
) -> None:
    """Fail before any work, with one sentence, when a file cannot be written: a folder in
    the way, a missing or read-only folder, an existing file without ``force``, or one of
    ``protected`` (the float model, the config) that would be overwritten."""
    keep = {p.resolve() for p in protected}
    for path in paths:
        if path.resolve() in keep:
            raise QuantdoctorError(
                f"{path} is an input of this export (the float model or the config); choose "
                "another -o file"
            )
        # a folder or device in the way, an existing file without --force, a missing,
        # read-only or full folder
        check_output_file(path, force, example=example)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(model: onnx.ModelProto) -> None:
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise QuantdoctorError(
            "the QDQ model is larger than 2 GB, which needs ONNX external data; quantdoctor "
            "export does not write that yet, so nothing was written"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # onnx raises ValidationError and shape-inference errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise QuantdoctorError(
            f"the QDQ model that quantdoctor built does not pass onnx.checker ({first}), so "
            "nothing was written; please report this bug with your config"
        ) from None


def encodings_document(
    entries: Sequence[TensorEncoding],
    config: DoctorConfig,
    target: str,
    model_file: str,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The encodings.json document (docs/encodings.md)."""
    float_model = Path(config.model)
    return {
        "format_version": FORMAT_VERSION,
        "quantdoctor_version": __version__,
        "target": target,
        "float_model": {"path": str(float_model), "sha256": _sha256(float_model)},
        "config": str(config.source) if config.source else None,
        "qdq_model": model_file,
        "tensors": [e.to_json() for e in entries],
        "notes": list(notes),
    }


def encodings_json(doc: dict[str, Any]) -> str:
    """encodings.json text: the metadata indented, one line per tensor (per-channel scales
    stay on their tensor's line, so the file reads and diffs per tensor)."""
    head = {k: v for k, v in doc.items() if k != "tensors"}
    lines = [json.dumps(t) for t in doc["tensors"]]
    body = json.dumps(head, indent=1)[:-2]  # without the closing "\n}"
    tensors = ",\n  ".join(lines)
    text = f'{body},\n "tensors": [\n  {tensors}\n ]\n}}\n' if lines else (
        f'{body},\n "tensors": []\n}}\n'
    )
    json.loads(text)  # the layout never changes the content
    return text


def recipe_text(config: DoctorConfig, target: Any, model_file: str) -> str:
    """recipe.yaml: a header comment, the config's recipe, the target as the config names it
    and as resolved."""
    dumped = config.model_dump(mode="json")
    when = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    where = config.source or "a config built in Python"
    body = {
        "recipe": dumped["recipe"],
        "target": {k: v for k, v in dumped["target"].items() if v is not None},
        "resolved_target": json.loads(json.dumps(dataclasses.asdict(target))),
    }
    header = (
        f"# Effective recipe of {where}, written by `quantdoctor export` (quantdoctor "
        f"{__version__}) on {when}\n"
        f"# for {model_file}. `recipe` and `target` can be pasted into a doctor.yaml; "
        "`resolved_target` is what the target means (bits, signedness, per-channel).\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def _stage(path: Path, data: bytes) -> Path:
    """``data`` in a temporary file beside ``path`` (renamed into place by the caller)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _write_all(files: dict[Path, bytes]) -> None:
    """Write the files as one step: each is staged in a temporary file beside its target,
    and only when all are staged are they renamed into place (a crash or a full disk never
    leaves half a file, nor a new model beside old encodings)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(path, data), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as err:
        reason = err.strerror or str(err)
        raise QuantdoctorError(
            f"cannot write {err.filename or 'the export files'}: {reason}"
        ) from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def export_model(
    config: DoctorConfig,
    output: Path,
    force: bool = False,
    *,
    target: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the int8 context's QDQ model to ``output`` (it must end with ``.onnx``) and its
    encodings.json and recipe.yaml beside it (see :func:`sidecar_paths`).

    ``force`` replaces existing files; ``target`` overrides the config's target profile
    (``hailo8`` or ``int8``). Everything is checked before the model is built, and nothing
    is written when a check fails (:class:`QuantdoctorError`, one sentence).
    """
    from ..config import TargetConfig
    from ..engine import Engine

    started = time.perf_counter()
    output = Path(output)
    if output.is_dir():
        raise QuantdoctorError(
            f"{output} is a folder; give a file name for -o, e.g. {output / 'model.qdq.onnx'}"
        )
    if output.suffix != ".onnx":
        raise QuantdoctorError(
            f"-o {output} must be an .onnx file (the QDQ model), e.g. model.qdq.onnx"
        )
    if target is not None and target not in ("hailo8", "int8"):
        raise QuantdoctorError(f"--target {target!r} is unknown; use hailo8 or int8")
    encodings_path, recipe_path = sidecar_paths(output)
    protected = [Path(config.model)] + ([config.source] if config.source else [])
    check_outputs([output, encodings_path, recipe_path], force, protected)

    if target is not None:
        config = config.model_copy(update={"target": TargetConfig(profile=target)})  # type: ignore[arg-type]
    engine = Engine(config, progress=progress)
    model = engine.model("int8")
    _check(model)
    data = model.SerializeToString()
    written = onnx.load_from_string(data)  # the encodings describe exactly these bytes
    notes: list[str] = []
    reference = engine.model("quantized") if engine.plan().uses_non_8bit() else None
    entries = read_encodings(written, reference, notes)
    float_biases = float_bias_layers(written)
    if float_biases:
        n = len(float_biases)
        notes.append(
            f"{n} layer{'s' if n > 1 else ''} with quantized input and weights "
            f"keep{'' if n > 1 else 's'} a float bias (e.g. {float_biases[0]}; int32 would "
            "overflow at its scales); ONNX Runtime's WeightBiasQuantization optimizer "
            "quantizes such biases itself, so create the session with "
            "disabled_optimizers=['WeightBiasQuantization'] to reproduce the int8 context "
            "exactly"
        )
    doc = encodings_document(entries, config, engine.target.name, output.name, notes)
    encodings_text = encodings_json(doc)
    files = {
        output: data,
        encodings_path: encodings_text.encode("utf-8"),
        recipe_path: recipe_text(config, engine.target, output.name).encode("utf-8"),
    }
    _write_all(files)
    return ExportResult(
        model=output,
        encodings=encodings_path,
        recipe=recipe_path,
        target=engine.target.name,
        tensors=len(entries),
        by_kind=dict(Counter(e.kind for e in entries)),
        by_bits=dict(sorted(Counter(e.bits for e in entries).items())),
        seconds=round(time.perf_counter() - started, 2),
        notes=notes,
    )
