"""`quantdoctor export`: the int8 context's QDQ model, its encodings and recipe, written so
that plain ONNX Runtime and OpenVINO run it as the int8 context does."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

import quantdoctor
from quantdoctor.commands.export import (
    FORMAT_VERSION,
    ExportResult,
    export_model,
    qdq_node_names,
    sidecar_paths,
)
from quantdoctor.engine import Engine
from quantdoctor.errors import QuantdoctorError
from quantdoctor.quant.encodings import activation_params
from quantdoctor.quant.target import QuantScheme

from .test_cli_errors import assert_clean_error, run_cli
from .test_real_models import _config, lite0  # noqa: F401 - lite0 is a fixture

A16_FC1 = [
    {"calibration": {"method": "minmax", "size": 64}},
    {"quantization_param": {"layers": ["fc1/Gemm"], "precision": "a16_w16"}},
]


def _ort_outputs(path: Path, engine: Engine) -> np.ndarray:
    """The first output of the written model, run by ONNX Runtime with default options."""
    session = ort.InferenceSession(str(path))
    name = session.get_inputs()[0].name
    batches = engine.batches(engine.images("evaluation"), "int8")
    return np.concatenate([session.run(None, {name: x})[0] for x in batches])


def _openvino_outputs(path: Path, engine: Engine) -> np.ndarray:
    """The first output of the written model compiled by OpenVINO for the CPU."""
    ov = pytest.importorskip("openvino", reason="openvino not installed: pip install -e '.[dev]'")
    compiled = ov.Core().compile_model(str(path), "CPU")
    batch = compiled.input(0).get_partial_shape()[0]
    fixed = batch.get_length() if batch.is_static else None
    outs = []
    for x in engine.batches(engine.images("evaluation"), "int8"):
        chunks = [x] if fixed is None else [x[i : i + fixed] for i in range(0, len(x), fixed)]
        for chunk in chunks:
            n = len(chunk)
            if fixed is not None and n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
            outs.append(compiled([chunk])[compiled.output(0)][:n])
    return np.concatenate(outs)


def _encodings(result: ExportResult) -> dict:
    return json.loads(result.encodings.read_text())


def _float_names(engine: Engine) -> set[str]:
    g = engine.float_model.graph
    return (
        {i.name for i in g.input}
        | {i.name for i in g.initializer}
        | {o for n in g.node for o in n.output}
    )


def _by_name(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["tensors"]}


# --- (a) the written model is the int8 context ------------------------------------------------


def test_export_runs_as_the_int8_context(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = quantdoctor.load_config(digits_config())
    out = tmp_path / "out" / "digits.qdq.onnx"
    out.parent.mkdir()
    result = export_model(config, out)

    assert (result.model, result.encodings, result.recipe) == (
        out, out.with_name("digits.encodings.json"), out.with_name("digits.recipe.yaml")
    )
    assert all(p.is_file() for p in (result.model, result.encodings, result.recipe))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    onnx.checker.check_model(str(out), full_check=True)
    json.dumps(result.to_json())
    assert result.target == "hailo8" and result.tensors == len(_encodings(result)["tensors"])

    engine = Engine(config)  # a fresh engine: the same config gives the same model
    reference = engine.outputs("int8")["logits"]
    got = _ort_outputs(out, engine)
    assert got.shape == reference.shape == (len(engine.images("evaluation")), 10)
    assert (got.argmax(1) == reference.argmax(1)).mean() == 1.0
    step = _by_name(_encodings(result))["logits"]["scale"][0]  # one step of the output grid
    assert np.abs(got - reference).max() <= step * 1.001


def test_recipe_yaml_holds_the_recipe_and_resolved_target(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = digits_config(recipe=A16_FC1)
    result = export_model(quantdoctor.load_config(path), tmp_path / "m.onnx")
    text = result.recipe.read_text()
    assert text.startswith("#") and str(path.resolve()) in text.splitlines()[0]
    assert time.strftime("%Y-%m-%d") in text.splitlines()[0]
    doc = yaml.safe_load(text)
    assert doc["recipe"][1] == {"quantization_param": {"layers": ["fc1/Gemm"],
                                                       "precision": "a16_w16"}}
    assert doc["target"] == {"profile": "hailo8"}
    assert doc["resolved_target"]["weights"] == {
        "bits": 8, "signed": True, "symmetric": True, "per_channel": False
    }


def test_cli_prints_what_it_wrote(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = digits_config()
    out = tmp_path / "model.qdq.onnx"
    result = run_cli("export", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for needle in (str(out), str(tmp_path / "model.encodings.json"),
                   str(tmp_path / "model.recipe.yaml"), "11 quantized tensors", "hailo8",
                   f"quantdoctor evaluate {path}"):
        assert needle in text, text
    assert (tmp_path / "model.encodings.json").is_file()


# --- (b) encodings.json ----------------------------------------------------------------------


def test_encodings_cover_every_qdq_node_hailo8(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = quantdoctor.load_config(digits_config())
    result = export_model(config, tmp_path / "m.qdq.onnx")
    doc = _encodings(result)
    model = onnx.load(result.model)
    engine = Engine(config)

    assert doc["format_version"] == FORMAT_VERSION == 1
    assert doc["quantdoctor_version"] == quantdoctor.__version__
    assert doc["target"] == "hailo8" and doc["qdq_model"] == "m.qdq.onnx"
    assert doc["float_model"]["path"] == str(config.model)
    assert doc["float_model"]["sha256"] == hashlib.sha256(config.model.read_bytes()).hexdigest()

    covered = {n for t in doc["tensors"] for n in t["nodes"]}
    assert qdq_node_names(model) and set(qdq_node_names(model)) <= covered
    names = _float_names(engine)
    graph_tensors = {o for n in model.graph.node for o in n.output}
    for t in doc["tensors"]:
        assert t["name"] in names, t["name"]  # the float model's names
        assert t["graph_name"] in graph_tensors
        assert all(s > 0 for s in t["scale"]) and len(t["scale"]) == len(t["zero_point"])
        if t["kind"] == "activation":  # hailo8: uint8 asymmetric per-tensor
            assert (t["bits"], t["signed"], t["symmetric"], t["axis"]) == (8, False, False, None)
        elif t["kind"] == "weight":  # hailo8: int8 symmetric per-tensor
            assert (t["bits"], t["signed"], t["symmetric"], t["axis"]) == (8, True, True, None)
            assert t["zero_point"] == [0] and len(t["scale"]) == 1
        else:
            assert (t["kind"], t["bits"], t["signed"], t["symmetric"]) == ("bias", 32, True, True)
    kinds = {t["name"]: t["kind"] for t in doc["tensors"]}
    assert kinds == {"input": "activation", "mix_w": "weight", "mix_b": "bias",
                     "mix": "activation", "flat": "activation", "fc1_w": "weight",
                     "fc1_b": "bias", "h_relu": "activation", "fc2_w": "weight",
                     "fc2_b": "bias", "logits": "activation"}

    # the scales and zero points are the engine's calibrated ranges (not just re-read)
    ranges = engine.ranges()
    scheme = QuantScheme(bits=8, signed=False, symmetric=False)
    checked = 0
    for t in doc["tensors"]:
        if t["kind"] == "activation" and t["name"] in ranges:
            scale, zp = activation_params(*ranges[t["name"]], scheme)
            assert t["scale"] == [pytest.approx(float(scale), rel=1e-6)]
            assert t["zero_point"] == [zp]
            checked += 1
    assert checked >= 3


def test_encodings_int8_target_per_channel_weights(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = quantdoctor.load_config(digits_config(target="int8"))
    doc = _encodings(export_model(config, tmp_path / "m.onnx"))
    assert doc["target"] == "int8"
    t = _by_name(doc)
    conv, fc1, fc2 = t["mix_w"], t["fc1_w"], t["fc2_w"]
    assert conv["layer"] == "mix/Conv" and conv["axis"] == 0 and len(conv["scale"]) == 1
    assert fc1["axis"] == 0 and len(fc1["scale"]) == 32 and len(set(fc1["scale"])) > 1
    assert fc2["axis"] == 0 and len(fc2["scale"]) == 10
    for w in (conv, fc1, fc2):
        assert (w["bits"], w["signed"], w["symmetric"]) == (8, True, True)
        assert set(w["zero_point"]) == {0}
    for a in (v for v in doc["tensors"] if v["kind"] == "activation"):
        assert (a["bits"], a["signed"], a["axis"]) == (8, False, None)


# --- (c) 16-bit layers -----------------------------------------------------------------------


def test_sixteen_bit_layer_in_the_encodings(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = quantdoctor.load_config(digits_config(recipe=A16_FC1))
    result = export_model(config, tmp_path / "m.onnx")
    doc = _encodings(result)
    model = onnx.load(result.model)
    t = _by_name(doc)
    # fc1's output (after its fused Relu) in 16 bits, written as float fake-quant ops
    assert (t["h_relu"]["bits"], t["h_relu"]["signed"], t["h_relu"]["form"]) == (
        16, False, "fake_quant"
    )
    fq = {n.name for n in model.graph.node if n.name.startswith("h_relu__fq_")}
    assert len(fq) == 6 and fq == set(t["h_relu"]["nodes"])
    # fc1's weight in 16 bits, stored dequantized: the values lie on the stated grid
    w = t["fc1_w"]
    assert (w["bits"], w["signed"], w["symmetric"], w["form"]) == (16, True, True,
                                                                   "float_constant")
    value = next(
        onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == w["graph_name"]
    )
    q = value / w["scale"][0]
    assert np.abs(q - np.rint(q)).max() < 1e-3 and np.abs(q).max() <= 2**15 - 1
    others = [v for v in doc["tensors"] if v["name"] not in ("h_relu", "fc1_w")]
    assert others and all(v["bits"] in (8, 32) for v in others)
    assert "fc1_b" not in t  # a 16-bit layer's bias stays float
    assert result.by_bits[16] == 2
    # and the written model is still the int8 context
    engine = Engine(config)
    assert (_ort_outputs(result.model, engine).argmax(1)
            == engine.outputs("int8")["logits"].argmax(1)).all()


def test_near_dead_channel_keeps_an_integer_bias(digits, digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A near-dead channel under per-channel weights: its int32 bias would overflow, so its
    weight scale is raised (as ONNX Runtime's quantizer does) and every bias stays integer;
    plain ONNX Runtime with its default options then computes the int8 context exactly."""
    model = onnx.load(digits["model"])
    for init in model.graph.initializer:
        value = onnx.numpy_helper.to_array(init).copy()
        if init.name == "fc1_w":
            value[0] *= 1e-12
        elif init.name == "fc1_b":
            value[0] = 0.5
        else:
            continue
        init.CopyFrom(onnx.numpy_helper.from_array(value, init.name))
    path = tmp_path / "dead_channel.onnx"
    onnx.save(model, path)
    config = quantdoctor.load_config(digits_config(model=str(path), target="int8"))
    result = export_model(config, tmp_path / "m.onnx")
    assert not any("float bias" in n for n in result.notes), result.notes
    assert "fc1_b" in _by_name(_encodings(result))  # quantized to int32
    engine = Engine(config)
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input": x})[0]
                          for x in engine.batches(engine.images("evaluation"), "int8")])
    np.testing.assert_array_equal(got.argmax(1), engine.outputs("int8")["logits"].argmax(1))


# --- (d) OpenVINO ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["hailo8", "int8"])
def test_openvino_runs_the_export(digits_config, tmp_path: Path, target: str) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("openvino", reason="openvino not installed: pip install -e '.[dev]'")
    config = quantdoctor.load_config(digits_config(target=target))
    result = export_model(config, tmp_path / "m.onnx")
    engine = Engine(config)
    ov_top1 = _openvino_outputs(result.model, engine).argmax(1)
    ort_top1 = _ort_outputs(result.model, engine).argmax(1)
    agreement = (ov_top1 == ort_top1).mean()
    assert agreement >= 0.99, agreement


# --- (e) bad input: one sentence, exit code 2, nothing written ------------------------------


def test_output_is_a_folder(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "m.onnx"
    folder.mkdir()
    assert_clean_error(run_cli("export", str(digits_config()), "-o", str(folder)),
                       str(folder), "is a folder")


def test_output_folder_missing(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "nope" / "m.onnx"
    assert_clean_error(run_cli("export", str(digits_config()), "-o", str(out)),
                       str(tmp_path / "nope"), "does not exist")


def test_output_folder_read_only(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        assert_clean_error(run_cli("export", str(digits_config()), "-o", str(folder / "m.onnx")),
                           str(folder), "not writable")
    finally:
        folder.chmod(0o755)


def test_existing_file_needs_force(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = digits_config()
    out = tmp_path / "m.qdq.onnx"
    out.write_bytes(b"old")
    encodings, recipe = sidecar_paths(out)
    assert_clean_error(run_cli("export", str(path), "-o", str(out)),
                       str(out), "exists already", "--force")
    assert out.read_bytes() == b"old" and not encodings.exists() and not recipe.exists()
    # an existing sidecar counts too
    out.unlink()
    encodings.write_text("{}")
    with pytest.raises(QuantdoctorError, match="encodings.json exists already"):
        export_model(quantdoctor.load_config(path), out)
    assert not out.exists()
    result = export_model(quantdoctor.load_config(path), out, force=True)
    assert _encodings(result)["tensors"] and out.stat().st_size > 1000


def test_missing_config(tmp_path: Path) -> None:
    assert_clean_error(run_cli("export", str(tmp_path / "nope.yaml"), "-o",
                               str(tmp_path / "m.onnx")), "nope.yaml", "not found")


def test_never_overwrites_the_float_model(digits_config, digits) -> None:  # type: ignore[no-untyped-def]
    before = digits["model"].read_bytes()
    with pytest.raises(QuantdoctorError, match="input of this export"):
        export_model(quantdoctor.load_config(digits_config()), digits["model"], force=True)
    assert digits["model"].read_bytes() == before


def test_output_must_be_onnx(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QuantdoctorError, match=r"must be an \.onnx file"):
        export_model(quantdoctor.load_config(digits_config()), tmp_path / "m.txt")


def test_checker_failure_writes_nothing(digits_config, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    good = Engine.model

    def broken(self: Engine, context: str, *args: object, **kwargs: object) -> onnx.ModelProto:
        model = good(self, context, *args, **kwargs)
        if context != "int8":  # the engine runs the other contexts itself (calibration)
            return model
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.node[0].input[0] = "no_such_tensor"
        return copy

    monkeypatch.setattr(Engine, "model", broken)
    out = tmp_path / "m.onnx"
    with pytest.raises(QuantdoctorError, match="does not pass onnx.checker") as err:
        export_model(quantdoctor.load_config(digits_config()), out)
    assert "nothing was written" in str(err.value)
    assert list(tmp_path.glob("m.*")) == []


# --- EfficientNet-Lite0 ----------------------------------------------------------------------


@pytest.mark.shared_data
def test_export_efficientnet_lite0(lite0: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _config("efficientnet_lite0.yaml", lite0, tmp_path)
    assert cfg.data.evaluation is not None
    evaluation = cfg.data.evaluation.model_copy(update={"limit": 200})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"evaluation": evaluation})})

    started = time.perf_counter()
    result = export_model(cfg, tmp_path / "lite0.qdq.onnx")
    export_s = time.perf_counter() - started
    onnx.checker.check_model(str(result.model), full_check=True)
    doc = _encodings(result)
    assert set(qdq_node_names(onnx.load(result.model))) <= {
        n for t in doc["tensors"] for n in t["nodes"]
    }

    engine = Engine(cfg)
    context = engine.outputs("int8")["logits"].argmax(1)
    started = time.perf_counter()
    bare_logits = _ort_outputs(result.model, engine)
    ort_s = time.perf_counter() - started
    started = time.perf_counter()
    ov_logits = _openvino_outputs(result.model, engine)
    ov_s = time.perf_counter() - started
    bare_top1, ov_top1 = bare_logits.argmax(1), ov_logits.argmax(1)
    labels = engine.images("evaluation").labels
    same = (bare_top1 == context).mean()
    ov_agree = (ov_top1 == bare_top1).mean()
    # Where the two integer engines differ, OpenVINO's top class must be a near-tie in ONNX
    # Runtime's 8-bit logits: within two steps of the output grid (logits step ~0.07).
    step = _by_name(doc)["logits"]["scale"][0]
    rows = np.flatnonzero(ov_top1 != bare_top1)
    margins = (bare_logits.max(1) - bare_logits[np.arange(len(bare_top1)), ov_top1])[rows]
    ties = (bare_logits[np.arange(len(bare_top1)), ov_top1] == bare_logits.max(1)) | (
        ov_logits[np.arange(len(bare_top1)), bare_top1] == ov_logits.max(1)
    )
    print(
        f"\nLite0 export ({len(context)} evaluation images, {result.tensors} tensors "
        f"{result.by_kind}): export {export_s:.1f} s; bare ORT vs int8 context top-1 agreement "
        f"{100 * same:.2f}% ({ort_s:.1f} s); OpenVINO vs bare ORT top-1 agreement "
        f"{100 * ov_agree:.2f}% ({100 * ((ov_top1 == bare_top1) | ties).mean():.2f}% counting "
        f"ties of the 8-bit logits; {ov_s:.1f} s incl. compile); disagreements at margins "
        f"{np.round(margins / step, 2).tolist()} output steps; top-1 vs labels: ORT "
        f"{100 * (bare_top1 == labels).mean():.1f}%, "
        f"OpenVINO {100 * (ov_top1 == labels).mean():.1f}%"
    )
    assert len(context) == 200
    assert same == 1.0
    # Measured here: 98.5% strict (3 of 200 images, all within 2 output steps; 2 of them
    # exact ties), 99.0% counting ties; on all 1000 images 98.7% / 99.4%.
    assert ov_agree >= 0.98
    assert np.all(margins <= 2.01 * step)
    # 2026-12-02, on another CPU: 3 of 200 images disagree, all 3 against OpenVINO (1.5
    # points; the model inputs were checked to be the same bits as before): at most the
    # near-ties allowed above.
    assert abs((ov_top1 == labels).mean() - (bare_top1 == labels).mean()) <= 0.02
