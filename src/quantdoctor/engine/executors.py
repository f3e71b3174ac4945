"""Where the engine's embarrassingly parallel work runs: here (the default) or on a Ray
cluster (``executor: {type: ray, address: auto}``, ``--executor ray``).

Only the engine knows about executors; checks ask it for outputs as before.

>>> executor = make_executor(ExecutorConfig(type="ray", address="auto"))  # doctest: +SKIP
>>> executor.outputs("native|abc", model, "all", images.pixels, batcher, advance)  # +SKIP

What is sharded:

- inference of every context: by images, in shards of whole batches (the local run's batch
  boundaries, so every image sees the same batch and the same kernels); the results are
  concatenated in image order;
- the per-layer sweep: by variants (layers), each worker running its variants on the same
  captured float tensors, which reach the workers once.

What is shipped, once per run through Ray's object store (``ray.put``): each model a context
runs (serialized ONNX, put once per model content), each split's preprocessed-geometry
pixels (uint8, put once per split), and for the sweep its chunked float model and captured
tensors. Per task only a few numbers travel (the shard's range, the host arithmetic). Each
worker process keeps the ONNX Runtime sessions it built (by model content) for later tasks.

A worker that dies is retried by Ray (``max_retries``): a task is a pure function of what it
is given, so a retry gives the same numbers. A task that still fails stops the run with one
clear message (never fewer images).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ExecutorConfig
from ..data.imageset import ImageSet
from ..errors import QuantdoctorError

if TYPE_CHECKING:
    import onnx

    from ..data.preprocess import Preprocessor

#: Retries of a task whose worker died (Ray's task retry); the result is the same.
MAX_RETRIES = 3
#: Shards per worker CPU: more than one keeps the progress bar moving and balances load.
SHARDS_PER_CPU = 4
#: Test hook only: a task finding this file removes it and kills its worker (tests/test_ray.py).
CRASH_MARKER_ENV = "QUANTDOCTOR_TEST_CRASH_MARKER"

INSTALL_HINT = (
    "the Ray executor needs Ray: pip install 'quantdoctor[ray]' (or run with --executor local)"
)


@dataclass(frozen=True)
class HostBatcher:
    """What the host does to a split's pixels before the model, batch by batch: the same
    object turns pixels into model inputs here and on a Ray worker (it is small and
    picklable)."""

    preprocessor: Preprocessor
    batch_size: int
    color: str | None = None
    host_normalization: bool = True
    transforms: tuple[Any, ...] = ()
    layout: str = "nchw"

    def __call__(self, pixels: np.ndarray | ImageSet) -> Iterator[np.ndarray]:
        """Model inputs, batch by batch, from an array of pixels or an image set (whose
        subsets are sliced batch by batch, never copied whole)."""
        from ..graph.transforms import host_input_transform

        norm = True if self.host_normalization else None
        is_set = isinstance(pixels, ImageSet)
        for start in range(0, len(pixels), self.batch_size):
            stop = start + self.batch_size
            batch = pixels.batch(start, stop) if is_set else pixels[start:stop]
            x = self.preprocessor.finish(batch, color=self.color, mean=norm, std=norm)
            if self.transforms:
                x = host_input_transform(x, list(self.transforms), self.layout)
            yield x


def make_executor(config: ExecutorConfig | None) -> RayExecutor | None:
    """The executor of a config: None for local (the engine's own loops, no extra work)."""
    if config is None or config.type == "local":
        return None
    return RayExecutor(config.address)


def _shards(n: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of whole batches covering ``n`` images, about ``parts`` many."""
    batches = max(1, -(-n // batch_size))
    per = max(1, -(-batches // max(1, parts)))
    step = per * batch_size
    return [(s, min(n, s + step)) for s in range(0, n, step)]


# --- what runs on a worker -----------------------------------------------------------------
#: ONNX Runtime runners a worker process built, by model content key (kept between tasks).
_WORKER_RUNNERS: dict[str, Any] = {}


def _worker_threads() -> int:
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def _maybe_crash() -> None:
    """Test hook: kill this worker once (the marker file is removed first)."""
    marker = os.environ.get(CRASH_MARKER_ENV)
    if marker and os.path.exists(marker):
        try:
            os.unlink(marker)
        except FileNotFoundError:
            return
        os._exit(1)


def _infer_shard(
    key: str, model: bytes, optimization: str, pixels: np.ndarray, start: int, stop: int,
    batcher: HostBatcher,
) -> tuple[dict[str, np.ndarray], str]:
    """One shard's outputs (and the node it ran on)."""
    import onnx
    import ray

    from .runner import OrtRunner

    _maybe_crash()
    runner = _WORKER_RUNNERS.get(key)
    if runner is None:
        runner = OrtRunner(onnx.load_from_string(model), optimization, threads=_worker_threads())
        while len(_WORKER_RUNNERS) >= 4:
            _WORKER_RUNNERS.pop(next(iter(_WORKER_RUNNERS)))
        _WORKER_RUNNERS[key] = runner
    parts = [runner.run(x) for x in batcher(pixels[start:stop])]
    outs = {n: np.concatenate([p[n] for p in parts]) for n in runner.output_names}
    return outs, ray.get_runtime_context().get_node_id()


#: sweeps a worker process received, by key (their float chunk sessions kept between tasks)
_WORKER_SWEEPS: dict[str, Any] = {}


def _sweep_shard(key: str, state: list[Any], group: list[dict[str, np.ndarray]],
                 variants: list[Any]) -> tuple[dict[str, Any], Any, str]:
    """A share of the per-layer sweep's variants on the captured float tensors (``state``:
    ``[ref]`` of the sweep, fetched once per worker process)."""
    import ray

    from .subgraph import SweepCost

    _maybe_crash()
    sweep = _WORKER_SWEEPS.get(key)
    if sweep is None:
        sweep = ray.get(state[0])
        _WORKER_SWEEPS.clear()
        _WORKER_SWEEPS[key] = sweep
    sweep._cached = group
    sweep.cost = SweepCost()
    results = sweep.run(variants)
    sweep._cached = None
    return results, sweep.cost, ray.get_runtime_context().get_node_id()


class RayExecutor:
    """Runs shards of the engine's work as Ray tasks (see the module docstring).

    ``address``: ``auto`` (a cluster started with ``ray start --head`` on this machine, else a
    local one), ``ray://host:port`` (Ray Client) or ``host:port``. A Ray session already
    initialized in this process is used as it is."""

    def __init__(self, address: str = "auto") -> None:
        try:
            import ray
        except ImportError:
            raise QuantdoctorError(INSTALL_HINT) from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                try:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
                except ConnectionError:
                    if address != "auto":
                        raise
                    # no cluster started on this machine: a local one for this run
                    ray.init(include_dashboard=False, log_to_driver=False)
            except Exception as err:  # a bad or unreachable address
                first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                raise QuantdoctorError(
                    f"executor.address {address!r}: cannot connect to a Ray cluster ({first}); "
                    "start one with `ray start --head` or give its address"
                ) from None
        self._infer = ray.remote(max_retries=MAX_RETRIES)(_infer_shard)
        self._sweep = ray.remote(max_retries=MAX_RETRIES)(_sweep_shard)
        #: object-store references of what was shipped, by content key
        self._shipped: dict[str, Any] = {}

    @property
    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def put(self, key: str, make: Callable[[], object]) -> Any:
        """The object-store reference of ``make()``, put once per ``key``."""
        if key not in self._shipped:
            self._shipped[key] = self.ray.put(make())
        return self._shipped[key]

    def _gather(self, refs: list[Any], sizes: Sequence[int], what: str,
                advance: Callable[[int], None]) -> list[Any]:
        """Results of ``refs`` in their order, advancing the progress as each finishes."""
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[index[ref]] = self.ray.get(ref)
                except Exception as err:
                    for other in pending:
                        self.ray.cancel(other, force=True)
                    text = str(err).strip().splitlines()
                    ip = getattr(err, "ip", None)  # RayTaskError knows its node
                    where = f" on node {ip}" if ip else ""
                    raise QuantdoctorError(
                        f"a Ray task of {what} failed{where} after {MAX_RETRIES} retries "
                        f"(shard {index[ref] + 1} of {len(refs)}: "
                        f"{text[0] if text else type(err).__name__}); no results on fewer "
                        "images are reported — check the worker logs on the cluster "
                        "(`ray logs`), or run with --executor local"
                    ) from None
                advance(sizes[index[ref]])
        return results

    def outputs(
        self, key: str, model: onnx.ModelProto, optimization: str, images_key: str,
        pixels: np.ndarray, batcher: HostBatcher, advance: Callable[[int], None],
    ) -> dict[str, np.ndarray]:
        """A model's outputs on ``pixels`` (in image order), sharded by images."""
        model_ref = self.put(f"model:{key}", lambda: model.SerializeToString())
        pixels_ref = self.put(f"pixels:{images_key}", lambda: pixels)
        shards = _shards(len(pixels), batcher.batch_size, self.cpus * SHARDS_PER_CPU)
        refs = [self._infer.remote(key, model_ref, optimization, pixels_ref, a, b, batcher)
                for a, b in shards]
        got = self._gather(refs, [b - a for a, b in shards], f"running {key}", advance)
        names = list(got[0][0])
        return {n: np.concatenate([g[0][n] for g in got]) for n in names}

    def sweep(self, state: Any, state_key: str, group: list[dict[str, np.ndarray]],
              variants: Sequence[Any], advance: Callable[[int], None]
              ) -> tuple[dict[str, Any], list[Any]]:
        """The sweep's variants sharded over the workers: each variant's noise, and each
        shard's cost."""
        state_ref = self.put(f"sweep:{state_key}", lambda: state)
        group_ref = self.put(f"group:{state_key}", lambda: group)
        parts = min(len(variants), self.cpus * SHARDS_PER_CPU)
        # interleaved, not contiguous: a layer early in the graph reruns more of it (costs
        # more) than a late one, so contiguous shards would leave the first worker the longest
        chunks = [list(variants[i::parts]) for i in range(parts)]
        refs = [self._sweep.remote(state_key, [state_ref], group_ref, c) for c in chunks]
        got = self._gather(refs, [len(c) for c in chunks], "the per-layer sweep", advance)
        results: dict[str, Any] = {}
        for part in got:
            results.update(part[0])
        return results, [part[1] for part in got]

