"""Fuzz test of doctor.yaml: configs built from the config's own JSON schema (values that
validate, and values at and beyond its bounds) run `quantdoctor evaluate` on the digits
model; every one ends with exit 0 or with one sentence and exit 2, never a traceback.

QD_FUZZ_EXAMPLES sets the number of configs (default 40, for CI); the closing note of #14
gives the result of a longer run. adaround and finetune are left out of the recipes: they
train for minutes at the iteration counts the schema allows (tests/test_train_remedies.py
covers them)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from quantdoctor.cli import app
from quantdoctor.config import DoctorConfig

from .conftest import digits_doctor

SCHEMA = DoctorConfig.model_json_schema()
DEFS = SCHEMA["$defs"]
#: top-level keys a fuzzed config replaces (model, data paths and report stay valid, so that
#: most configs get past loading and exercise the run)
FUZZED = ("task", "start_nodes", "end_nodes", "preprocess", "native_preprocess", "postprocess",
          "native_postprocess", "metric", "reference_accuracy", "target", "recipe", "max_drop",
          "seed", "batch_size")
TRAINING = {"#/$defs/AdaroundStep", "#/$defs/FinetuneStep"}
#: strings a user would write here: the digits model's layer and tensor names, patterns
NAMES = ["mix/Conv", "fc1/Gemm", "fc2/Gemm", "fc1/Relu", "fc*", "*", "logits", "h_relu", "flat",
         "input", "nope", "", "hailo8", "int8", "a16_w16", "a8_w4", "minmax", "rgb", "bgr"]
FLOATS = [0.0, 1.0, -1.0, 0.5, 1e-6, 255.0, 1e6, 1e30, -1e30, math.inf, -math.inf, math.nan]
INTS = [0, 1, -1, 2, 3, 8, 64, 255, 2**31, 2**63]


def _ref(schema: dict[str, Any]) -> dict[str, Any]:
    return DEFS[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _number(schema: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    """Values inside the schema's bounds, the bounds themselves and a few beyond them."""
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    edges = [v for v in (lo, hi) if v is not None]
    edges += [e + d for e in edges for d in ((1, -1) if integer else (1e-9, -1e-9))]
    if integer:
        inside = st.integers(-10 if lo is None else int(lo), 5000 if hi is None else int(hi))
        return st.one_of(inside, st.sampled_from(INTS + [int(e) for e in edges]))
    inside = st.floats(lo if lo is not None else -1e3, hi if hi is not None else 1e3,
                       allow_nan=False)
    return st.one_of(inside, st.sampled_from(FLOATS + [float(e) for e in edges]))


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for the JSON schema pydantic writes (``$ref``, ``anyOf`` /
    ``oneOf``, ``enum``, objects, arrays, numbers, strings)."""
    schema = _ref(schema)
    if "enum" in schema:
        return st.sampled_from(schema["enum"] + ["not-" + str(schema["enum"][0])])
    if "const" in schema:
        return st.just(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [b for b in schema[key] if b.get("$ref") not in TRAINING]
            return st.one_of([from_schema(b, depth + 1) for b in branches])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return _object(schema, depth)
    if kind == "array":
        if "prefixItems" in schema:
            return st.tuples(*[from_schema(s, depth + 1) for s in schema["prefixItems"]]).map(
                list
            )
        items = from_schema(schema.get("items", {"type": "string"}), depth + 1)
        lo = schema.get("minItems", 0)
        return st.lists(items, min_size=lo, max_size=max(lo, schema.get("maxItems", 3)))
    if kind in ("number", "integer"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return st.one_of(st.sampled_from(NAMES), st.text(max_size=6))  # strings and anything else


def _object(schema: dict[str, Any], depth: int) -> st.SearchStrategy[dict[str, Any]]:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    optional = sorted(set(props) - required)
    if depth > 4:  # deep enough: only what is required
        optional = []

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        chosen = draw(st.lists(st.sampled_from(optional), unique=True)) if optional else []
        keys = sorted(required) + chosen
        return {k: draw(from_schema(props[k], depth + 1)) for k in keys}

    return build()


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """The digits config with one to three top-level keys replaced by schema values, and
    sometimes the evaluation sample size."""
    keys = draw(st.lists(st.sampled_from(FUZZED), min_size=1, max_size=3, unique=True))
    fuzzed = {k: draw(from_schema(SCHEMA["properties"][k])) for k in keys}
    limit = draw(st.one_of(st.just(30), from_schema({"type": "integer", "exclusiveMinimum": 0})))
    return {"keys": keys, "fuzzed": fuzzed, "limit": limit}


EXAMPLES = int(os.environ.get("QD_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[int, int]]:
    """Exit code → configs; printed at the end (-s), and both outcomes must occur: a fuzzer
    whose configs are all refused at loading tests nothing beyond the schema."""
    seen: dict[int, int] = {}
    yield seen
    print(f"\nfuzzed configs: {sum(seen.values())}, by exit code: {dict(sorted(seen.items()))}")
    if EXAMPLES >= 20:
        assert seen.get(0) and seen.get(2), seen


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=configs())
def test_every_config_runs_or_is_refused_in_one_sentence(  # type: ignore[no-untyped-def]
    digits, outcomes, case
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = digits_doctor(digits, folder / "report", **case["fuzzed"])
        config["data"]["evaluation"]["limit"] = case["limit"]
        config["data"]["calibration"]["limit"] = 16
        path = folder / "doctor.yaml"
        # YAML writes inf and nan as .inf and .nan, which a user can type too
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        result = CliRunner().invoke(app, ["evaluate", str(path)])
    outcomes[result.exit_code] = outcomes.get(result.exit_code, 0) + 1
    shown = f"config {case['fuzzed']!r} (limit {case['limit']}):\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(shown) from result.exception
    assert result.exit_code in (0, 2), shown
    assert "Traceback" not in result.output, shown
    if result.exit_code == 2:
        assert "error:" in result.output, shown
