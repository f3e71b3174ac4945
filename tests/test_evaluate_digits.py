"""End to end on a real (tiny) classifier: the three-way test, findings.json, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import quantdoctor
from quantdoctor.engine import Engine


def test_three_way_test_on_digits(digits_config) -> None:  # type: ignore[no-untyped-def]
    cfg = quantdoctor.load_config(digits_config())
    report = quantdoctor.evaluate(cfg)
    native, quant, int8 = (report.contexts[c] for c in ("native", "quantized", "int8"))
    assert native.n == quant.n == int8.n == 898
    assert native.value > 90.0
    assert native.ci95[0] < native.value < native.ci95[1]
    # 8-bit quantization of a small MLP costs little; the two engines agree closely.
    assert abs(native.value - quant.value) < 3.0
    q_vs_int8 = next(c for c in report.comparisons if c["reference"] == "quantized")
    assert q_vs_int8["agreement"] > 98.0
    ids = {f.id for f in report.findings}
    assert ids <= {"evaluation.within_noise", "evaluation.degradation"}


def test_findings_json_follows_the_contract(digits_config) -> None:  # type: ignore[no-untyped-def]
    cfg = quantdoctor.load_config(digits_config())
    quantdoctor.evaluate(cfg)
    data = json.loads((Path(cfg.report.dir) / "findings.json").read_text())
    assert data["version"] == 1
    assert data["tool"].startswith("quantdoctor ")
    assert data["config"].endswith("doctor.yaml")
    assert set(data["contexts"]) == {"native", "quantized", "int8"}
    for ctx in data["contexts"].values():
        assert set(ctx) >= {"metric", "value", "ci95", "n"}
        assert len(ctx["ci95"]) == 2
    for f in data["findings"]:
        assert set(f) >= {
            "id",
            "suspect",
            "severity",
            "title",
            "evidence",
            "recommendation",
            "recipe",
        }
        assert f["severity"] in ("error", "warning", "info", "ok")


def test_a_real_degradation_is_found_and_significant(digits_config) -> None:  # type: ignore[no-untyped-def]
    # Ranges cut at the 75th percentile clip most activations: the verdict must say so.
    recipe = [{"calibration": {"method": "percentile", "percentile": 75.0}}]
    cfg = quantdoctor.load_config(digits_config(recipe=recipe))
    report = quantdoctor.evaluate(cfg, write=False)
    top = report.top_suspect
    assert top is not None and top.id == "evaluation.degradation"
    assert top.severity == "error"
    assert top.evidence["p_value"] < 0.05
    assert top.evidence["drop_ci95"][0] > 0


def test_too_few_images_is_a_finding(digits, digits_config) -> None:  # type: ignore[no-untyped-def]
    data = {
        "calibration": {"path": str(digits["train"]), "limit": 64},
        "evaluation": {"path": str(digits["test"]), "limit": 1},
    }
    report = quantdoctor.evaluate(quantdoctor.load_config(digits_config(data=data)), write=False)
    few = next(f for f in report.findings if f.id == "evaluation.too_few_images")
    assert few.severity == "error"
    assert report.contexts["native"].n == 1


def test_outputs_are_computed_once_per_context(digits_config) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(quantdoctor.load_config(digits_config()))
    first = engine.outputs("native")
    assert engine.outputs("native") is first
    engine.outputs("int8")
    assert len(engine._runners) == 2 + 1  # native, int8, and the calibration capture
