"""The cache across runs (engine/disk_cache.py): a second run decodes nothing and runs no
model it already ran, with the same findings; a changed input is a new entry; a damaged,
unwritable or full cache never costs the run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import quantdoctor
from quantdoctor.engine import Engine
from quantdoctor.engine.disk_cache import DiskCache

TIMINGS = ("seconds", "generated", "profile")  # profile: measured, not computed


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("QUANTDOCTOR_CACHE", str(folder))
    return folder


def _without_timings(value):  # type: ignore[no-untyped-def]
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in TIMINGS and not k.endswith("_s") and k != "reused"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_a_second_run_reads_what_the_first_computed(digits_config, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    config = quantdoctor.load_config(digits_config())
    first = Engine(config)
    native = first.outputs("native")
    quantized = first.outputs("quantized")
    assert first.disk is not None and first.disk.hits == 0
    assert {p.name for p in cache_dir.iterdir()} == {"images", "outputs", "ranges"}

    second = Engine(config)
    calls: list[str] = []
    second._runner = lambda *a, **k: calls.append(a[0])  # type: ignore[method-assign]
    assert np.array_equal(second.outputs("native")["logits"], native["logits"])
    assert np.array_equal(second.outputs("quantized")["logits"], quantized["logits"])
    assert calls == []  # no session built: nothing ran
    assert second.disk is not None and second.disk.hits >= 3  # images, ranges, outputs
    assert second.recipe_log[-1].summary["reused"] == "from the cache across runs"


def test_a_recipe_change_reuses_images_and_float_outputs(digits_config, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    quantdoctor.evaluate(quantdoctor.load_config(digits_config()))
    changed = quantdoctor.load_config(digits_config(recipe=[
        {"calibration": {"method": "percentile", "size": 64}}]))
    engine = Engine(changed)
    engine.outputs("native")
    assert engine.disk is not None and engine.disk.hits == 2  # images and native outputs
    before = engine.disk.misses
    engine.outputs("quantized")  # other ranges: computed, not read
    assert engine.disk.misses > before


def test_findings_are_the_same_with_and_without_the_cache(digits_config, tmp_path: Path,
                                                          cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    config = digits_config()
    reports = []
    for run in ("first", "second"):
        out = tmp_path / run
        quantdoctor.diagnose(quantdoctor.load_config(config), report_dir=out,
                             skip=("layers",))
        reports.append(json.loads((out / "findings.json").read_text()))
    os.environ["QUANTDOCTOR_CACHE"] = "off"
    quantdoctor.diagnose(quantdoctor.load_config(config), report_dir=tmp_path / "off",
                         skip=("layers",))
    reports.append(json.loads((tmp_path / "off" / "findings.json").read_text()))
    first, second, off = (_without_timings(r) for r in reports)
    assert first == second == off


def test_an_edited_image_is_decoded_again(digits, digits_config, tmp_path: Path,
                                          cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    images = tmp_path / "test"
    shutil.copytree(digits["test"], images)
    config = quantdoctor.load_config(digits_config(data={
        "calibration": {"path": str(digits["train"]), "limit": 64},
        "evaluation": {"path": str(images)}}))
    Engine(config).images("evaluation")
    one = next(images.rglob("*.png"))
    os.utime(one, ns=(0, 0))  # another modification time: another file for the cache
    engine = Engine(config)
    engine.images("evaluation")
    assert engine.disk is not None and engine.disk.hits == 0


def test_a_damaged_entry_is_dropped_and_recomputed(digits_config, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    config = quantdoctor.load_config(digits_config())
    ref = Engine(config).outputs("native")["logits"]
    for entry in (cache_dir / "outputs").glob("*.npz"):
        entry.write_bytes(b"not a zip")
    again = Engine(config).outputs("native")["logits"]
    assert np.array_equal(again, ref)


def test_the_oldest_entries_go_beyond_the_size_limit(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=3 * 8 * 1000 + 2000)
    for k in range(5):
        cache.put("x", f"k{k}", {"a": np.zeros(1000)})
        os.utime(tmp_path / "x" / f"k{k}.npz", (k, k))
    cache.put("x", "new", {"a": np.zeros(1000)})
    left = sorted(p.stem for p in (tmp_path / "x").glob("*.npz"))
    assert "new" in left and "k0" not in left and len(left) <= 3


def test_an_unwritable_cache_never_costs_the_run(digits_config, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("QUANTDOCTOR_CACHE", str(blocker / "cache"))  # a file in the way
    report = quantdoctor.evaluate(quantdoctor.load_config(digits_config()))
    assert report.steps["evaluation"] == "done"


def test_off_and_no_cache(digits_config, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from .test_cli_errors import run_cli

    result = run_cli("evaluate", str(digits_config()), "--no-cache")
    assert result.returncode == 0, result.stderr
    assert not cache_dir.exists()


def test_a_second_sweep_runs_only_the_layers_a_recipe_change_touched(digits_config,
                                                                       cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from quantdoctor.engine.subgraph import LayerSweep, Variant

    def sweep(recipe: list | None = None) -> tuple[LayerSweep, dict]:
        extra = {} if recipe is None else {"recipe": [{"calibration": {}}, *recipe]}
        engine = Engine(quantdoctor.load_config(digits_config(**extra)))
        s = LayerSweep(engine, engine.images("evaluation").subset(range(40)))
        variants = [Variant.alone(engine, layer) for layer in engine.layers]
        return s, s.run(variants)

    first_sweep, first = sweep()
    assert first_sweep.cost.variants == len(first) and first_sweep.cost.from_store == 0
    again_sweep, again = sweep()
    assert again_sweep.cost.variants == 0 and again_sweep.cost.from_store == len(first)
    assert again_sweep.cost.captures == 0  # nothing ran, not even the float capture
    for name, noise in first.items():
        assert again[name].snr_db() == noise.snr_db()
        for o in noise.outputs:
            assert np.array_equal(again[name].per_image_snr_db(o), noise.per_image_snr_db(o))
    # one layer at 16 bits: only its variant runs again, and its noise is another
    changed_sweep, changed = sweep(
        [{"quantization_param": {"layers": ["fc1/Gemm"], "precision": "a16_w16"}}]
    )
    assert changed_sweep.cost.variants == 1
    assert changed["fc1/Gemm"].min_snr_db() > first["fc1/Gemm"].min_snr_db()
    assert all(changed[n].snr_db() == first[n].snr_db() for n in first if n != "fc1/Gemm")


def test_the_calibration_features_are_computed_once_across_runs(digits_config,
                                                                cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from quantdoctor.checks.calibration import penultimate_tensor

    config = quantdoctor.load_config(digits_config())
    first = Engine(config)
    tensor = penultimate_tensor(first.float_model)
    cal = first.images("calibration")
    features = first.float_features(tensor, cal)
    assert features.shape[0] == len(cal) and first.costs.captured_images == len(cal)
    second = Engine(config)
    again = second.float_features(tensor, second.images("calibration"))
    assert second.costs.captured_images == 0  # read, not captured
    assert np.array_equal(again, features)
    # another model (a float edit): computed again
    edited = Engine(quantdoctor.load_config(digits_config(
        recipe=[{"calibration": {}}, {"equalization": {}}])))
    edited.float_features(tensor, edited.images("calibration"))
    assert edited.costs.captured_images == len(cal)
