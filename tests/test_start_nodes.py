"""start_nodes (#15): the graph cut at its start, the host doing what the cut-off part did.

A digits classifier whose first nodes normalize (Sub/Div, ImageNet constants, then the 1x1
Conv): cut at the Conv, the host's mean/std must reproduce the full graph; without them the
pipeline check names the cause with its numbers. Bad start nodes are one sentence (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import quantdoctor
from quantdoctor.config import parse_config
from quantdoctor.engine import Engine
from quantdoctor.errors import ConfigError
from quantdoctor.graph.cut import cut_start_nodes

from .conftest import digits_doctor, write_config
from .test_cli_errors import assert_clean_error, run_cli

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
#: the pipeline step and the three-way test are all these tests need
SKIP = ("calibration", "layers")
FINDING = "pipeline.start_nodes_mismatch"


def with_normalization(model: onnx.ModelProto, side_branch: bool = False) -> onnx.ModelProto:
    """``(x - MEAN) / STD`` (Sub → Div) in front of the digits model's 1x1 Conv, whose weights
    take the normalized input, so that the whole graph computes what the digits model does on
    0..1 pixels. ``side_branch``: the logits also get a term read from the raw input."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    mean = np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, np.float32).reshape(1, 3, 1, 1)
    inits = {i.name: i for i in g.initializer}
    w = numpy_helper.to_array(inits["mix_w"])
    b = numpy_helper.to_array(inits["mix_b"])
    # Conv(x) = Σ w·x + b = Σ (w·std)·((x - mean) / std) + (b + Σ w·mean)
    inits["mix_w"].CopyFrom(numpy_helper.from_array((w * std).astype(np.float32), "mix_w"))
    inits["mix_b"].CopyFrom(
        numpy_helper.from_array((b + (w * mean).sum()).astype(np.float32), "mix_b")
    )
    g.initializer.extend(
        [numpy_helper.from_array(mean, "norm_mean"), numpy_helper.from_array(std, "norm_std")]
    )
    g.node[0].input[0] = "normalized"
    nodes = [
        helper.make_node("Sub", ["input", "norm_mean"], ["centered"], name="norm/Sub"),
        helper.make_node("Div", ["centered", "norm_std"], ["normalized"], name="norm/Div"),
    ]
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    if side_branch:
        g.node[-1].output[0] = "logits_main"
        g.node.extend([
            helper.make_node("ReduceMean", ["input"], ["brightness"], name="side/ReduceMean",
                             axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["brightness", "side_axes"], ["brightness_2d"],
                             name="side/Unsqueeze"),
            helper.make_node("Add", ["logits_main", "brightness_2d"], ["logits"], name="side/Add"),
        ])
        g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "side_axes"))
        m.opset_import[0].version = 17
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def normalized_model(digits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("start_nodes") / "digits_normalized.onnx"
    onnx.save(with_normalization(onnx.load(str(digits["model"]))), path)
    return path


def _config(digits: dict[str, Path], model: Path, tmp_path: Path, **overrides: Any) -> Path:
    config = digits_doctor(digits, tmp_path / "report", model=str(model),
                           **{"start_nodes": ["mix/Conv"], **overrides})
    return write_config(tmp_path, config)


def _start_finding(report: quantdoctor.report.Report) -> quantdoctor.report.Finding:
    return next(f for f in report.findings if f.id == FINDING)


# --- the cut itself ---------------------------------------------------------------------------


def test_cut_begins_at_the_start_nodes_input(normalized_model: Path) -> None:
    model = onnx.load(str(normalized_model))
    cut = cut_start_nodes(model, ["mix/Conv"])
    assert cut.tensor == "normalized"
    assert cut.removed_ops == ("Sub", "Div")
    assert [i.name for i in cut.model.graph.input] == ["normalized"]
    assert [n.name for n in cut.model.graph.node][0] == "mix/Conv"
    assert {i.name for i in cut.model.graph.initializer} >= {"mix_w", "fc2_w"}
    assert "norm_mean" not in {i.name for i in cut.model.graph.initializer}
    # a tensor name is the cut model's input itself
    assert cut_start_nodes(model, ["normalized"]).tensor == "normalized"


def test_start_and_end_nodes_combine(digits: dict[str, Path], normalized_model: Path) -> None:
    raw = digits_doctor(digits, Path("report"), model=str(normalized_model),
                        start_nodes=["mix/Conv"], end_nodes=["fc1/Relu"],
                        preprocess={"scale": 1 / 255, "mean": MEAN, "std": STD})
    engine = Engine(parse_config(raw))
    assert [i.name for i in engine.float_model.graph.input] == ["normalized"]
    assert [o.name for o in engine.float_model.graph.output] == ["h_relu"]
    assert engine.input.name == "normalized" and engine.native_input.name == "input"
    assert {n.op_type for n in engine.float_model.graph.node} == {"Conv", "Flatten", "Gemm",
                                                                  "Relu"}


# --- the pipeline check -----------------------------------------------------------------------


def test_cut_with_host_normalization_reproduces_the_full_graph(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    preprocess = {"scale": 1 / 255, "mean": MEAN, "std": STD}
    path = _config(digits, normalized_model, tmp_path, preprocess=preprocess)
    report = quantdoctor.diagnose(quantdoctor.load_config(path), write=False, skip=SKIP)
    found = _start_finding(report)
    assert found.severity == "ok", found.title
    assert found.evidence["input_snr_db"] > 100  # float round-off only
    assert found.evidence["images_beyond_noise"] == 0
    assert found.evidence["cut_off_ops"] == ["Sub", "Div"]
    assert min(found.evidence["output_snr_db"].values()) > 100
    assert found.evidence["top1_agreement"] == 100.0
    native, fp = report.contexts["native"], report.contexts["fp_optimized"]
    assert abs(native.value - fp.value) < 0.01 and native.value > 90
    assert not [f for f in report.findings if f.suspect == 1 and f.severity == "error"]
    assert report.reliability == ""


def test_cut_without_host_normalization_is_the_top_suspect(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    path = _config(digits, normalized_model, tmp_path, preprocess={"scale": 1 / 255})
    report = quantdoctor.diagnose(quantdoctor.load_config(path), write=False, skip=SKIP)
    top = report.top_suspect
    assert top is not None and top.id == FINDING and top.severity == "error", top
    ev = top.evidence
    assert ev["likely_cause"] == "normalization_missing"
    assert ev["input_snr_db"] < 10 and ev["images_beyond_noise"] == ev["n"]
    assert ev["fp_optimized"] < ev["native"] - 50 and ev["p_value"] < 1e-6
    # the fit recovers the constants of the cut-off Sub/Div, to paste into preprocess
    assert ev["suggested_preprocess"]["mean"] == pytest.approx(MEAN, abs=1e-3)
    assert ev["suggested_preprocess"]["std"] == pytest.approx(STD, abs=1e-3)
    assert top.recipe and top.recipe[0].startswith("preprocess: {mean: [0.485")
    assert "Sub → Div" in top.title and "does not normalize" in top.title
    assert report.reliability  # the quantized results are not a pure quantization issue


def test_normalization_on_the_accelerator_through_the_recipe(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    # Hailo's way: the host sends 0..1 pixels, the recipe folds (x - mean) / std into the cut
    recipe = [{"normalization": {"mean": MEAN, "std": STD}},
              {"calibration": {"method": "minmax", "size": 64}}]
    path = _config(digits, normalized_model, tmp_path, preprocess={"scale": 1 / 255},
                   recipe=recipe)
    report = quantdoctor.diagnose(quantdoctor.load_config(path), write=False, skip=SKIP)
    found = _start_finding(report)
    assert found.severity == "ok", found.title
    assert found.evidence["input_snr_db"] > 100


def test_host_normalizing_in_front_of_the_graphs_own_normalization(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    # start at the Sub: nothing is cut off, so the cut model normalizes again
    path = _config(digits, normalized_model, tmp_path, start_nodes=["norm/Sub"],
                   preprocess={"scale": 1 / 255, "mean": MEAN, "std": STD})
    report = quantdoctor.diagnose(quantdoctor.load_config(path), write=False, skip=SKIP)
    found = _start_finding(report)
    assert found.severity == "error", found.title
    assert found.evidence["likely_cause"] == "normalization_doubled"
    assert found.evidence["cut_off_nodes"] == []
    assert found.evidence["suggested_preprocess"] == {"mean": None, "std": None}
    assert found.recipe == ["preprocess: {mean: null, std: null}"]


def test_a_wrong_native_preprocess_is_named(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    # the full graph fed 0..255 pixels: its normalized tensor is far from normalized
    path = _config(digits, normalized_model, tmp_path, native_preprocess={"scale": 1.0},
                   preprocess={"scale": 1 / 255, "mean": MEAN, "std": STD})
    report = quantdoctor.diagnose(quantdoctor.load_config(path), write=False, skip=SKIP)
    found = _start_finding(report)
    assert found.severity in ("warning", "error")
    assert found.evidence["likely_cause"] == "native_preprocess"
    assert found.evidence["native_preprocess"]["scale"] == 1.0
    assert "native_preprocess" in found.recommendation


# --- bad input: one sentence, exit 2 ------------------------------------------------------------


def test_a_start_node_that_does_not_exist_names_the_closest(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    path = _config(digits, normalized_model, tmp_path, start_nodes=["mix/Con"])
    assert_clean_error(run_cli("evaluate", str(path)), "start_nodes", "'mix/Con'",
                       "close names", "'mix/Conv'")


def test_a_start_node_whose_input_is_not_an_image(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    path = _config(digits, normalized_model, tmp_path, start_nodes=["fc1/Gemm"])
    assert_clean_error(run_cli("evaluate", str(path)), "start_nodes ['fc1/Gemm']", "'flat'",
                       "not an image", "4 dimensions")


def test_start_nodes_with_several_inputs(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    path = _config(digits, normalized_model, tmp_path, start_nodes=["norm/Sub", "mix/Conv"])
    assert_clean_error(run_cli("evaluate", str(path)), "2 inputs", "input, normalized",
                       "one image input")


def test_a_cut_whose_later_layers_still_read_the_raw_input(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "side_branch.onnx"
    onnx.save(with_normalization(onnx.load(str(digits["model"])), side_branch=True), model)
    path = _config(digits, model, tmp_path)
    assert_clean_error(run_cli("evaluate", str(path)), "still reads 'input'",
                       "'side/ReduceMean'", "2 inputs")


def test_a_start_node_after_an_end_node(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path
) -> None:
    path = _config(digits, normalized_model, tmp_path, start_nodes=["fc2/Gemm"],
                   end_nodes=["fc1/Gemm"])
    assert_clean_error(run_cli("evaluate", str(path)), "come after end_nodes ['fc1/Gemm']")


def test_native_preprocess_without_start_nodes_and_with_geometry_is_refused(
    digits: dict[str, Path]
) -> None:
    raw = digits_doctor(digits, Path("report"), native_preprocess={"scale": 1.0})
    with pytest.raises(ConfigError, match="without start_nodes it has no effect"):
        parse_config(raw)
    raw = digits_doctor(digits, Path("report"), start_nodes=["mix/Conv"],
                        native_preprocess={"resize": {"size": [8, 8]}})
    with pytest.raises(ConfigError, match="unknown field 'native_preprocess.resize'"):
        parse_config(raw)


def test_the_cache_across_runs_keeps_the_full_graphs_preprocessing_apart(
    digits: dict[str, Path], normalized_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the same model, images and preprocess: with start_nodes the full graph is fed without
    # the host's mean/std, so its stored outputs must not be the uncut run's
    monkeypatch.setenv("QUANTDOCTOR_CACHE", str(tmp_path / "cache"))
    preprocess = {"scale": 1 / 255, "mean": MEAN, "std": STD}
    uncut = digits_doctor(digits, tmp_path / "report", model=str(normalized_model),
                          preprocess=preprocess)
    first = Engine(parse_config(uncut)).outputs("native")["logits"]
    cut = Engine(parse_config({**uncut, "start_nodes": ["mix/Conv"]}))
    assert not np.allclose(cut.outputs("native")["logits"], first)
    wide = Engine(parse_config({**uncut, "start_nodes": ["mix/Conv"],
                                "native_preprocess": {"scale": 1.0}}))
    assert not np.allclose(wide.outputs("native")["logits"], cut.outputs("native")["logits"])
