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
