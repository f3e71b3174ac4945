"""Run parts of the float model: a per-layer sweep that never recomputes what did not change.

>>> sweep = LayerSweep(engine, engine.images("evaluation").subset(range(64)))  # doctest: +SKIP
>>> noise = sweep.run([Variant.alone(engine, layer) for layer in engine.layers])  # doctest: +SKIP
>>> noise[engine.layers[3].name].snr_db()                # {model output: dB}  # doctest: +SKIP
{'logits': 31.7}

Why: a sensitivity sweep ("only layer *i* quantized, SNR at every model output") done with
one whole-model QDQ session per layer costs a session (0.1-0.5 s on EfficientNet-Lite0) and
a full, slower-than-float evaluation per layer. Instead the float model is split once into
consecutive chunks of a few layers (topological order). One float pass captures every tensor
that crosses a chunk boundary. A :class:`Variant` (a layer quantized alone, with a clipped
range, per-channel weights, 16 bits …) rebuilds only its layer's chunk, with the same QDQ
builder as the whole model, runs it on the captured float inputs, and then runs only the
float chunks downstream that its change reaches. A chain network thus costs about half a float
evaluation per layer, plus one capture pass and small sessions.

Quantizing a tensor that is already quantized with the same parameters changes nothing, so
the passthrough quantizers (Reshape, MaxPool …) that the whole-model builder adds after a
layer in *later* chunks can be left out: the result is the whole-model ``plan.only([layer])``
result up to float summation order.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..data import ImageSet
from ..errors import ModelError
from ..quant import LayerInfo, QuantPlan, Ranges, build_qdq
from ..stats import MAX_SNR_DB, snr_db
from .memory import release_free_memory
from .runner import session_threads
from .sessions import make_session

if TYPE_CHECKING:
    from .engine import Engine

#: Captured float tensors kept in memory between two calls of :meth:`LayerSweep.run` (and
#: processed together) up to this many bytes; beyond it they are captured again per call.
MEMORY_BUDGET = 1 << 30


def literal(name: str) -> str:
    """An fnmatch pattern that matches ``name`` only (plans address layers by pattern)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (If/Loop body) reads from the enclosing scope."""
    produced = {o for n in graph.node for o in n.output}
    produced |= {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used |= set(_node_inputs(node))
    return used - produced


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs including the outer-scope names its subgraphs use."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            names += sorted(_subgraph_names(attr.g))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                names += sorted(_subgraph_names(g))
    return names


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto:
    """The tensor of a Constant node (any of its value attributes), named as its output."""
    from onnx.reference import ReferenceEvaluator

    value = ReferenceEvaluator(node).run(None, {})[0]
    return numpy_helper.from_array(np.asarray(value), node.output[0])


@dataclass
class Chunk:
    """Consecutive nodes (topological order) holding a few whole layers."""

    index: int
    nodes: list[onnx.NodeProto]
    #: Non-constant tensors it reads from outside (graph inputs or earlier chunks).
    inputs: list[str]
    #: Tensors it produces that later chunks read, and graph outputs.
    outputs: list[str]
    layers: list[LayerInfo]


class ChunkedModel:
    """A model split into :class:`Chunk` s of about ``layers_per_chunk`` layers; a layer (its
    node through its fused activation) never straddles two chunks.

    ``layers_per_chunk`` defaults to about √(layers)/2, at least 3: small chunks keep each
    variant's session and its recomputed share small, larger ones keep the number of
    session calls down on deep models."""

    def __init__(
        self,
        model: onnx.ModelProto,
        layers: Sequence[LayerInfo],
        layers_per_chunk: int | None = None,
    ) -> None:
        g = model.graph
        self.model = model
        self.constants: dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
        nodes = []
        for node in g.node:
            if node.op_type == "Constant" and len(node.output) == 1:
                self.constants[node.output[0]] = _constant_value(node)
            else:
                nodes.append(node)
        self.graph_inputs = [i.name for i in g.input if i.name not in self.constants]
        self.graph_outputs = [o.name for o in g.output]
        self.layers = list(layers)
        n_layers = max(len(self.layers), 1)
        per_chunk = layers_per_chunk or max(3, round(math.sqrt(n_layers) / 2))
        self.layers_per_chunk = per_chunk

        position = {n.name: k for k, n in enumerate(nodes)}
        producer_pos = {o: k for k, n in enumerate(nodes) for o in n.output}
        # A cut after position p is forbidden while a layer's node and its fused activation
        # lie on both sides of it.
        blocked = np.zeros(len(nodes) + 1, dtype=bool)
        starts: dict[int, LayerInfo] = {}
        for layer in self.layers:
            if layer.name not in position:
                continue
            start, end = position[layer.name], producer_pos.get(layer.output, position[layer.name])
            blocked[start + 1 : end + 1] = True
            starts[start] = layer
        groups: list[list[int]] = []
        current: list[int] = []
        count = 0
        for k in range(len(nodes)):
            if count >= per_chunk and current and not blocked[k]:
                groups.append(current)
                current, count = [], 0
            current.append(k)
            count += k in starts
        if current:
            groups.append(current)

        self.chunk_of_tensor: dict[str, int] = {}
        for c, group in enumerate(groups):
            for k in group:
                for o in nodes[k].output:
                    self.chunk_of_tensor[o] = c
        readers: dict[str, set[int]] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for c, group in enumerate(groups):
            for k in group:
                for i in _node_inputs(nodes[k]):
                    readers.setdefault(i, set()).add(c)
                    self.consumers.setdefault(i, []).append(nodes[k])
        outs = set(self.graph_outputs)
        self.chunks: list[Chunk] = []
        layer_by_node = {layer.name: layer for layer in self.layers}
        for c, group in enumerate(groups):
            chunk_nodes = [nodes[k] for k in group]
            produced = {o for n in chunk_nodes for o in n.output}
            inputs: list[str] = []
            for n in chunk_nodes:
                for i in _node_inputs(n):
                    if i not in produced and i not in self.constants and i not in inputs:
                        inputs.append(i)
            outputs = [
                o
                for n in chunk_nodes
                for o in n.output
                if o and (o in outs or any(r > c for r in readers.get(o, ())))
            ]
            chunk_layers = [layer_by_node[n.name] for n in chunk_nodes if n.name in layer_by_node]
            self.chunks.append(Chunk(c, chunk_nodes, inputs, outputs, chunk_layers))
        self.n_nodes = sum(len(c.nodes) for c in self.chunks)
        self.chunk_of_layer = {
            layer.name: self.chunk_of_tensor[layer.output]
            for layer in self.layers
            if layer.output in self.chunk_of_tensor
        }
        self._types = self._tensor_types(model)

    @staticmethod
    def _tensor_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shapes are a help for ONNX Runtime, not a requirement
            inferred = model
        g = inferred.graph
        return {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}

    @property
    def boundary(self) -> list[str]:
        """Tensors that cross a chunk boundary (to capture), graph inputs excluded."""
        seen: list[str] = []
        for chunk in self.chunks:
            for i in chunk.inputs:
                if i not in self.graph_inputs and i not in seen:
                    seen.append(i)
        return seen

    def reach(self, changed: Sequence[str]) -> set[str]:
        """Every tensor whose value depends on one of ``changed`` (included)."""
        seen = set(changed)
        todo = list(changed)
        while todo:
            for node in self.consumers.get(todo.pop(), ()):
                for o in node.output:
                    if o and o not in seen:
                        seen.add(o)
                        todo.append(o)
        return seen

    def submodel(
        self, first: int, last: int, dtypes: dict[str, np.dtype] | None = None
    ) -> onnx.ModelProto:
        """Chunks ``first`` … ``last`` as a model: inputs are what they read from outside,
        outputs what later chunks read (and graph outputs). ``dtypes`` gives the element type
        of inputs that shape inference could not type."""
        chunks = self.chunks[first : last + 1]
        nodes = [n for c in chunks for n in c.nodes]
        produced = {o for n in nodes for o in n.output}
        inputs: list[str] = []
        for c in chunks:
            inputs += [i for i in c.inputs if i not in produced and i not in inputs]
        later = self.chunks[last + 1 :]
        later_reads = {i for c in later for i in c.inputs}
        outs = set(self.graph_outputs)
        outputs = [o for n in nodes for o in n.output if o and (o in outs or o in later_reads)]
        used = {i for n in nodes for i in _node_inputs(n)}
        inits = [self.constants[name] for name in sorted(used) if name in self.constants]
        graph = helper.make_graph(
            [_copy(n) for n in nodes],
            f"{self.model.graph.name}_chunks_{first}_{last}",
            [self._input_info(name, dtypes) for name in inputs],
            [helper.make_empty_tensor_value_info(name) for name in outputs],
            inits,
        )
        sub = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        sub.ir_version = self.model.ir_version
        sub.functions.extend(self.model.functions)
        return sub

    def _input_info(self, name: str, dtypes: dict[str, np.dtype] | None) -> onnx.ValueInfoProto:
        vi = self._types.get(name)
        if vi is not None and vi.type.tensor_type.elem_type:
            return vi
        if dtypes is None or name not in dtypes:
            raise ModelError(f"cannot tell the element type of tensor {name!r}")
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[name]))
        return helper.make_tensor_value_info(name, elem, None)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


class _Session:
    """An ONNX Runtime session over a chunk model with several inputs; a model with a fixed
    batch gets it (rows repeated, then cut), as :class:`OrtRunner` does for whole models."""

    def __init__(
        self,
        model: onnx.ModelProto,
        emulate: bool,
        fixed_batch: int | None,
        threads: int | None = None,
    ) -> None:
        # Many small sessions take turns: idle worker threads must not spin.
        self.session = make_session(
            model, emulate=emulate, spinning=False, threads=threads, what="a part of the model"
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.fixed_batch = fixed_batch

    def run(self, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        fixed = self.fixed_batch
        feed = {k: feeds[k] for k in self.input_names}
        if fixed is None or n == fixed:
            return dict(zip(self.output_names, self.session.run(None, feed), strict=True))
        # A partial last batch of a fixed-batch model: pad the batch-major inputs.
        padded = {
            k: np.concatenate([v, np.repeat(v[-1:], fixed - n, axis=0)])
            if v.ndim and v.shape[0] == n
            else v
            for k, v in feed.items()
        }
        outs = self.session.run(None, padded)
        return {
            k: (v[:n] if v.ndim and v.shape[0] == fixed else v)
            for k, v in zip(self.output_names, outs, strict=True)
        }


@dataclass(frozen=True)
class Variant:
    """One change of the float model confined to a few layers: ``plan`` and ``ranges`` (None:
    the engine's calibrated ranges) apply to the chunks of ``layers``; ``input`` marks the
    quantization of the graph input alone (a pseudo-layer)."""

    key: str
    layers: tuple[str, ...]
    plan: QuantPlan
    ranges: Ranges | None = None
    input: bool = False

    @classmethod
    def alone(
        cls,
        engine: Engine,
        layer: LayerInfo,
        plan: QuantPlan | None = None,
        ranges: Ranges | None = None,
        key: str | None = None,
    ) -> Variant:
        """``layer`` quantized alone (its weights and its output) under ``plan`` (default: the
        engine's plan), everything else float."""
        base = plan or engine.plan()
        return cls(key or layer.name, (layer.name,), base.only([literal(layer.name)]), ranges)

    @classmethod
    def input_alone(cls, engine: Engine, key: str = "<input>") -> Variant:
        """Only the graph input quantized (8-bit inputs on the accelerator)."""
        return cls(key, (), engine.plan().disable_layers(["*"]), None, input=True)


@dataclass
class OutputNoise:
    """Per model output and per image: Σ reference² and Σ (variant − reference)²."""

    outputs: list[str]
    signal: dict[str, list[np.ndarray]] = field(default_factory=dict)
    noise: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, output: str, ref: np.ndarray, got: np.ndarray) -> None:
        n = len(ref) if ref.ndim else 1
        r = ref.reshape(n, -1).astype(np.float64)
        d = got.reshape(n, -1).astype(np.float64) - r
        self.signal.setdefault(output, []).append(np.einsum("ij,ij->i", r, r))
        self.noise.setdefault(output, []).append(np.einsum("ij,ij->i", d, d))

    def _sums(self, output: str) -> tuple[float, float]:
        return float(np.concatenate(self.signal[output]).sum()), float(
            np.concatenate(self.noise[output]).sum()
        )

    def snr_db(self) -> dict[str, float]:
        """SNR (dB) of each output over all images: 10·log10(Σ signal / Σ noise)."""
        return {o: snr_db(*self._sums(o)) for o in self.outputs if o in self.signal}

    def min_snr_db(self) -> float:
        values = list(self.snr_db().values())
        return min(values) if values else MAX_SNR_DB

    def per_image_snr_db(self, output: str) -> np.ndarray:
        s, n = np.concatenate(self.signal[output]), np.concatenate(self.noise[output])
        return snr_db(s, n)


@dataclass
class _Built:
    """A variant's QDQ chunks (``first`` … ``last``) and the tensors it changes directly."""

    model: onnx.ModelProto
    first: int
    last: int
    changed: list[str]


@dataclass
class SweepCost:
    """Where a sweep's time went (seconds) and how much it ran."""

    capture_s: float = 0.0
    build_s: float = 0.0
    sessions_s: float = 0.0
    run_s: float = 0.0
    captures: int = 0
    variants: int = 0
    #: variants whose noise came from the cache across runs (not run)
    from_store: int = 0
    chunk_runs: int = 0
    #: Σ over chunk runs of (nodes in the chunk × images in the batch), and the same for one
    #: whole-model evaluation of the images: their ratio is the variants' work in
    #: whole-model evaluations.
    node_images: int = 0
    model_node_images: int = 0

    @property
    def total_s(self) -> float:
        return self.capture_s + self.build_s + self.sessions_s + self.run_s

    @property
    def model_evaluations(self) -> float:
        """The nodes the variants ran, in whole-model evaluations of the images."""
        return self.node_images / self.model_node_images if self.model_node_images else 0.0


class LayerSweep:
    """Variants of the float model on ``images``, each run on captured float tensors from
    its own chunk onwards (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        images: ImageSet,
        layers_per_chunk: int | None = None,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        self.engine = engine
        self.images = images
        self.chunked = ChunkedModel(engine.float_model, engine.layers, layers_per_chunk)
        self.memory_budget = memory_budget
        self.cost = SweepCost()
        floats = {o.name for o in engine.float_model.graph.output if _is_float(o)}
        self.outputs = [o for o in self.chunked.graph_outputs if o in floats]
        self._fixed = engine.input.fixed_batch
        self._float_sessions: dict[int, _Session] = {}
        self._cached: list[dict[str, np.ndarray]] | None = None
        self._dtypes: dict[str, np.dtype] = {}
        #: what a Ray executor ships this sweep under (once per sweep)
        self._key = uuid.uuid4().hex
        #: variants run at once, each in sessions of ``cpu_threads() // parallel`` threads
        self.parallel = getattr(engine, "batches_at_once", 1)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)  # not picklable (Ray ships the sweep)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def _session_threads(self) -> int:
        return session_threads(self.parallel)

    def _count(self, **add: float) -> None:
        with self._lock:
            for name, value in add.items():
                setattr(self.cost, name, getattr(self.cost, name) + value)

    # --- float tensors -------------------------------------------------------------------
    def _capture(self) -> Iterator[list[dict[str, np.ndarray]]]:
        """Groups of captured batches (boundary tensors, graph input and outputs); kept for
        the next call when all of them fit in the memory budget."""
        if self._cached is not None:
            yield self._cached
            return
        engine = self.engine
        names = list(dict.fromkeys(self.chunked.boundary + self.outputs))
        group: list[dict[str, np.ndarray]] = []
        size = 0
        complete = True
        start = time.perf_counter()
        batches = zip(
            engine.batches(self.images),
            engine.capture("fp_optimized", names, self.images),
            strict=True,
        )
        for x, captured in batches:
            captured = dict(captured)
            captured[engine.input.name] = x
            group.append(captured)
            self._dtypes.update({k: v.dtype for k, v in captured.items()})
            size += sum(v.nbytes for v in captured.values())
            if size > self.memory_budget:
                complete = False
                self.cost.capture_s += time.perf_counter() - start
                yield group
                start = time.perf_counter()
                group, size = [], 0
        self.cost.capture_s += time.perf_counter() - start
        self.cost.captures += 1
        if group:
            if complete:
                self._cached = group
            yield group

    # --- sessions ------------------------------------------------------------------------
    def _float_session(self, index: int) -> _Session:
        if index not in self._float_sessions:
            with self._lock:  # variants run in threads share the float chunks' sessions
                if index not in self._float_sessions:
                    start = time.perf_counter()
                    model = self.chunked.submodel(index, index, self._dtypes)
                    self._float_sessions[index] = _Session(
                        model, False, self._fixed, self._session_threads
                    )
                    self.cost.sessions_s += time.perf_counter() - start
        return self._float_sessions[index]

    def _span(self, variant: Variant) -> tuple[int, int, list[str]]:
        """First and last chunk a variant rebuilds, and the tensors it changes directly."""
        ch = self.chunked
        if variant.input:
            changed = list(ch.graph_inputs)
            idx = [c.index for c in ch.chunks if any(i in changed for i in c.inputs)]
        else:
            layers = {layer.name: layer for layer in ch.layers}
            unknown = [n for n in variant.layers if n not in ch.chunk_of_layer]
            if unknown or not variant.layers:
                raise ValueError(f"variant {variant.key!r}: unknown layers {unknown}")
            idx = [ch.chunk_of_layer[n] for n in variant.layers]
            changed = []
            for name in variant.layers:
                node = next(nd for c in ch.chunks for nd in c.nodes if nd.name == name)
                changed += [o for o in node.output if o] + [layers[name].output]
        return min(idx), max(idx), changed

    def _variant_model(self, variant: Variant) -> _Built:
        """The variant's QDQ chunks, the chunk span and the tensors it changes directly."""
        first, last, changed = self._span(variant)
        start = time.perf_counter()
        sub = self.chunked.submodel(first, last, self._dtypes)
        plan = variant.plan
        if variant.input:
            # only the real graph input: other inputs of these chunks are float tensors here
            others = [i.name for i in sub.graph.input if i.name not in self.chunked.graph_inputs]
            plan = plan.disable_tensors(others)
        layers = [layer for c in self.chunked.chunks[first : last + 1] for layer in c.layers]
        ranges = variant.ranges if variant.ranges is not None else self.engine.ranges()
        qdq = build_qdq(sub, plan, ranges, layers)
        self._count(build_s=time.perf_counter() - start)
        return _Built(qdq, first, last, changed)

    def _variant_session(self, variant: Variant) -> tuple[_Session, int, int, set[str]]:
        b = self._variant_model(variant)
        start = time.perf_counter()
        session = _Session(b.model, True, self._fixed, self._session_threads)
        self._count(sessions_s=time.perf_counter() - start)
        return session, b.first, b.last, self.chunked.reach(b.changed)

    # --- across runs ---------------------------------------------------------------------
    def _stored_key(self, built: _Built) -> str | None:
        """A variant's key in the cache across runs: everything its noise is computed from
        (the float model and images, the chunking, and its QDQ chunks by content, so that a
        recipe change to other layers leaves it valid)."""
        key = getattr(self.engine, "float_result_key", None)
        if key is None:
            return None
        chunk = hashlib.sha256(built.model.SerializeToString(deterministic=True)).hexdigest()
        return key(
            "sweep", self.images, self.chunked.layers_per_chunk, built.first, built.last,
            chunk, self.outputs,
        )

    def _from_store(
        self, variants: Sequence[Variant], results: dict[str, OutputNoise]
    ) -> tuple[list[Variant], dict[str, str]]:
        """Fill ``results`` with the variants a previous run measured; returns the others and
        their cache keys. (Their chunks are built again when they run: holding every
        variant's chunks at once would cost more memory than building twice costs time.)"""
        disk = getattr(self.engine, "disk", None)
        keys: dict[str, str] = {}
        if disk is None:
            return list(variants), keys
        todo = []
        for v in variants:
            b = self._variant_model(v)
            key = self._stored_key(b)
            found = disk.get("sweep", key) if key is not None else None
            if found is not None and all(f"signal{i}" in found for i in range(len(self.outputs))):
                noise = results[v.key]
                for i, o in enumerate(self.outputs):
                    noise.signal[o] = [found[f"signal{i}"]]
                    noise.noise[o] = [found[f"noise{i}"]]
                self.cost.from_store += 1
                continue
            todo.append(v)
            if key is not None:
                keys[v.key] = key
        return todo, keys

    def _to_store(self, results: dict[str, OutputNoise], keys: dict[str, str]) -> None:
        disk = getattr(self.engine, "disk", None)
        if disk is None or not keys:
            return
        for name, key in keys.items():
            noise = results[name]
            arrays = {}
            for i, o in enumerate(self.outputs):
                arrays[f"signal{i}"] = np.concatenate(noise.signal[o])
                arrays[f"noise{i}"] = np.concatenate(noise.noise[o])
            disk.put("sweep", key, arrays, evict=False)
        disk.evict()

    # --- running -------------------------------------------------------------------------
    def _run_one(
        self,
        captured: dict[str, np.ndarray],
        session: _Session,
        first: int,
        last: int,
        reach: set[str],
    ) -> dict[str, np.ndarray]:
        n = len(captured[self.engine.input.name])
        values: dict[str, np.ndarray] = {}

        def feeds(names: Sequence[str]) -> dict[str, np.ndarray]:
            return {k: values[k] if k in values else captured[k] for k in names}

        got = session.run(feeds(session.input_names), n)
        values.update({k: v for k, v in got.items() if k in reach})
        runs = 1
        chunks = self.chunked.chunks
        node_images = n * sum(len(c.nodes) for c in chunks[first : last + 1])
        for chunk in chunks[last + 1 :]:
            if not any(i in values for i in chunk.inputs):
                continue  # untouched by the variant: its captured outputs stand
            s = self._float_session(chunk.index)
            got = s.run(feeds(s.input_names), n)
            values.update({k: v for k, v in got.items() if k in reach})
            runs += 1
            node_images += n * len(chunk.nodes)
        self._count(chunk_runs=runs, node_images=node_images)
        return {o: values.get(o, captured[o]) for o in self.outputs}

    def run(
        self, variants: Sequence[Variant], advance: object | None = None
    ) -> dict[str, OutputNoise]:
        """Each variant's noise at every float model output against the float outputs.

        ``advance`` (a progress callback taking a count) counts variants: when the images
        come in several groups (over the memory budget), a variant counts once all its
        groups are done, so the count never passes the number of variants."""
        results = {v.key: OutputNoise(list(self.outputs)) for v in variants}
        self.cost.model_node_images = self.chunked.n_nodes * len(self.images)
        if len(results) != len(variants):
            raise ValueError("variant keys must be unique")
        every = variants
        variants, keys = self._from_store(every, results)
        if callable(advance) and len(every) > len(variants):
            advance(len(every) - len(variants))
        if not variants:
            return results
        groups: Iterator[list[dict[str, np.ndarray]]] = self._capture()
        executor = getattr(self.engine, "executor", None)
        if executor is not None and variants:
            first = next(groups)
            if self._cached is not None:  # one group: the workers share it, by variants
                results.update(self._run_remote(executor, first, variants, advance))
                self._to_store(results, keys)
                return results
            groups = itertools.chain([first], groups)  # over budget: here, group by group
        n_images, done, told = max(1, len(self.images)), 0.0, 0

        def run_variant(v: Variant, group: list[dict[str, np.ndarray]]) -> None:
            # A variant's session is built for each group and dropped after it: building is
            # cheap (YOLOX-Nano: 1 s for 349 variants), keeping them for the next group cost
            # gigabytes.
            session, first, last, reach = self._variant_session(v)
            start = time.perf_counter()
            for captured in group:
                outs = self._run_one(captured, session, first, last, reach)
                for o in self.outputs:
                    results[v.key].add(o, captured[o], outs[o])
            self._count(run_s=time.perf_counter() - start, variants=1)
            del session
            release_free_memory()  # its memory goes back now

        # Variants run side by side, each on fewer threads: the chunks are small, and ONNX
        # Runtime's threads barely speed one of them up (YOLOX-Nano, 44 variants: 14.4 s on
        # one thread, 11.7 s on two, the same numbers).
        with ThreadPoolExecutor(max_workers=max(1, self.parallel)) as pool:
            for group in groups:
                share = sum(len(c[self.engine.input.name]) for c in group) / n_images
                for future in as_completed([pool.submit(run_variant, v, group) for v in variants]):
                    future.result()  # a failed variant stops the sweep with its error
                    done += share
                    if callable(advance) and int(done + 1e-9) > told:
                        advance(int(done + 1e-9) - told)
                        told = int(done + 1e-9)
        self._to_store(results, keys)
        return results

    def _run_remote(
        self, executor: Any, group: list[dict[str, np.ndarray]], variants: Sequence[Variant],
        advance: object | None,
    ) -> dict[str, OutputNoise]:
        """:meth:`run` with the variants sharded over the executor's workers: each gets this
        sweep (chunked model, ranges; no sessions) and the captured tensors once."""
        state = copy.copy(self)
        state.engine = _EngineStub(self.engine.input.name, self.engine.ranges())
        state.images = _Count(len(self.images))
        state.cost = SweepCost()
        state.parallel = 1  # a worker runs its share one variant after another, as before
        state._float_sessions = {}
        state._cached = None
        results, costs = executor.sweep(
            state, self._key, group, variants,
            advance if callable(advance) else (lambda n: None),
        )
        for cost in costs:
            for name in ("build_s", "sessions_s", "run_s", "variants", "chunk_runs",
                         "node_images"):
                setattr(self.cost, name, getattr(self.cost, name) + getattr(cost, name))
        return {v.key: results[v.key] for v in variants}


@dataclass
class _EngineStub:
    """What a sweep on a worker needs of the engine: the input's name and the ranges."""

    name: str
    calibration: Ranges

    @property
    def input(self) -> _EngineStub:
        return self

    def ranges(self) -> Ranges:
        return self.calibration


@dataclass
class _Count:
    """The number of images a sweep on a worker runs (it gets their tensors, not them)."""

    n: int

    def __len__(self) -> int:
        return self.n


def _is_float(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.tensor_type.elem_type in (
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.BFLOAT16,
    )
