"""The engine's caches are keyed by content (issue #14, "Trust"): two plans, two seeds or
limits of the sampled images, two calibration sets or two host normalizations never share an
entry, and asking again returns what was computed for that content. On the digits MLP of
conftest.py; every result is checked against a fresh engine that shares nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import quantdoctor
from quantdoctor.engine import Engine

from .conftest import digits_doctor, write_config

A16_FC1 = {"quantization_param": {"layers": ["fc1/Gemm"], "precision": "a16_w16"}}


@pytest.fixture
def engine_for(digits: dict[str, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    """``engine_for(name, **overrides)``: a fresh engine on its own doctor.yaml."""

    def make(name: str, **overrides: Any) -> Engine:
        config = digits_doctor(digits, tmp_path / name / "report", **overrides)
        return Engine(quantdoctor.load_config(write_config(tmp_path / name, config)))

    return make


def sampled(digits: dict[str, Path], limit: int) -> dict[str, Any]:
    """``data`` with a seeded sample of ``limit`` evaluation images."""
    return {
        "calibration": {"path": str(digits["train"]), "limit": 64},
        "evaluation": {"path": str(digits["test"]), "limit": limit},
    }


def test_two_plans_never_share_an_entry(engine_for) -> None:  # type: ignore[no-untyped-def]
    base = engine_for("base")
    mixed = base.with_recipe([A16_FC1])  # shares base's caches
    assert repr(base.plan()) != repr(mixed.plan())
    for context in ("quantized", "int8"):
        first = base.outputs(context)["logits"]
        second = mixed.outputs(context)["logits"]
        key = base._model_key(context, None, "calibration")
        assert key != mixed._model_key(context, None, "calibration")
        assert not np.array_equal(first, second)
        # asked again: each its own result, from the cache
        assert base.outputs(context)["logits"] is first
        assert mixed.outputs(context)["logits"] is second
        # keyed by content, not by engine: the base engine asked for the other plan finds it
        assert base.outputs(context, plan=mixed.plan())["logits"] is second
    # what a fresh engine computes for each plan, sharing nothing
    for recipe, engine in (([], base), ([A16_FC1], mixed)):
        alone = engine_for(f"alone{len(recipe)}", recipe=[{"calibration": {}}, *recipe])
        for context in ("quantized", "int8"):
            assert np.array_equal(
                alone.outputs(context)["logits"], engine.outputs(context)["logits"]
            )


def test_seeds_and_limits_sample_their_own_images(engine_for, digits) -> None:  # type: ignore[no-untyped-def]
    a = engine_for("a", data=sampled(digits, 40), seed=0)
    b = engine_for("b", data=sampled(digits, 40), seed=1)
    c = engine_for("c", data=sampled(digits, 60), seed=0)
    # even when the engines share caches (as fix's siblings do), each samples its own images
    a.share_caches(b)
    a.share_caches(c)
    first = {e: e.outputs(context)["logits"] for e in (a, b, c) for context in ("native",)}
    paths = {e: list(e.images("evaluation").paths) for e in (a, b, c)}
    assert len(paths[a]) == len(paths[b]) == 40 and len(paths[c]) == 60
    assert paths[a] != paths[b] and set(paths[a]) != set(paths[c])
    for e in (a, b, c):
        assert e.outputs("native")["logits"] is first[e]  # asked again: its own
    # seeded: a fresh engine with the same seed and limit draws the same images and outputs
    for name, e, seed, limit in (("a2", a, 0, 40), ("b2", b, 1, 40), ("c2", c, 0, 60)):
        fresh = engine_for(name, data=sampled(digits, limit), seed=seed)
        assert list(fresh.images("evaluation").paths) == paths[e]
        assert np.array_equal(fresh.outputs("native")["logits"], first[e])
        # the seed samples the calibration images too: its own ranges, its own outputs
        assert np.array_equal(
            fresh.outputs("quantized")["logits"], e.outputs("quantized")["logits"]
        )
    assert a._ranges_key("calibration") != b._ranges_key("calibration")


def test_calibration_images_and_corrections_are_part_of_the_key(engine_for) -> None:  # type: ignore[no-untyped-def]
    recipe = [{"calibration": {"size": 32}}, {"bias_correction": {}}]
    base = engine_for("base", recipe=recipe)
    evaluation = base.images("evaluation")
    other = base.with_calibration_images(evaluation.subset(range(32)))
    first = base.outputs("quantized")["logits"]
    second = other.outputs("quantized")["logits"]
    assert base._ranges_key("calibration") != other._ranges_key("calibration")
    assert base.quantization_source(base.plan())[1] != other.quantization_source(other.plan())[1]
    assert len(base._corrections) == 2  # one bias correction per calibration set
    assert not np.array_equal(first, second)
    assert base.outputs("quantized")["logits"] is first


def test_a_sibling_with_another_normalization_runs_its_own_native_inputs(engine_for) -> None:  # type: ignore[no-untyped-def]
    """The native context applies the recipe's normalization on the host: the same native
    model on other inputs. The outputs' key once lacked it, and such a sibling got the
    parent's native outputs (38 logits off its own fp_optimized ones)."""
    base = engine_for("base")
    norm = base.with_recipe([{"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}])
    native, native_norm = base.outputs("native")["logits"], norm.outputs("native")["logits"]
    assert not np.allclose(native, native_norm)
    assert np.allclose(native_norm, norm.outputs("fp_optimized")["logits"], rtol=1e-4, atol=1e-4)
    assert base.outputs("native")["logits"] is native


def test_a_subsets_outputs_are_rows_of_its_parents(engine_for) -> None:  # type: ignore[no-untyped-def]
    """A split drawn from the evaluation images takes its outputs from the evaluation split's
    cached outputs (no model pass), and they are what running it afresh gives."""
    engine = engine_for("rows")
    ev = engine.images("evaluation")
    rows = np.sort(np.random.default_rng(3).permutation(len(ev))[: len(ev) // 3])
    for context in ("fp_optimized", "quantized", "int8"):
        whole = engine.outputs(context)["logits"]
        images_before = dict(engine.costs.run_images)
        engine.add_split(f"part_{context}", ev.subset(rows))
        part = engine.outputs(context, f"part_{context}")["logits"]
        assert engine.costs.run_images == images_before  # no model pass
        assert np.array_equal(part, whole[rows])
        # the same numbers as running those images on their own, in other batches
        fresh = engine_for(f"fresh_{context}")
        fresh.add_split("part", fresh.images("evaluation").subset(rows))
        assert np.array_equal(fresh.outputs(context, "part")["logits"], part)
    assert engine.costs.outputs_from_rows == 3
    # other images (not all rows held by a cached split): computed
    other = engine_for("other")
    other.add_split("part", other.images("evaluation").subset(rows))
    other.outputs("int8", "part")
    assert other.costs.outputs_from_rows == 0 and other.costs.run_images["int8"] == len(rows)


def test_batches_and_sweep_variants_run_side_by_side_give_the_same_numbers(
    engine_for, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Two batches (and two sweep variants) at once on one thread each: the same bits as one
    at a time on every core, in the same order."""
    from quantdoctor.engine.runner import run_in_order
    from quantdoctor.engine.subgraph import LayerSweep, Variant

    got = {}
    for at_once in ("1", "2"):
        monkeypatch.setenv("QUANTDOCTOR_BATCHES_AT_ONCE", at_once)
        engine = engine_for(f"at_once_{at_once}")
        assert engine.batches_at_once == int(at_once) or engine.batches_at_once == 1
        sweep = LayerSweep(engine, engine.images("evaluation").subset(range(48)))
        assert sweep.parallel == engine.batches_at_once
        noise = sweep.run([Variant.alone(engine, layer) for layer in engine.layers])
        got[at_once] = (
            {c: engine.outputs(c)["logits"] for c in ("fp_optimized", "quantized", "int8")},
            {k: v.snr_db() for k, v in noise.items()},
        )
    for context, logits in got["1"][0].items():
        assert np.array_equal(logits, got["2"][0][context])
    assert got["1"][1] == got["2"][1]
    # in order, whatever finishes first; an error stops the pass
    order = [n for _, n in run_in_order(lambda x: x, (np.zeros(k) for k in range(1, 8)), 3)]
    assert order == list(range(1, 8))

    def fail(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(run_in_order(fail, (np.zeros(2) for _ in range(4)), 2))
