"""`quantdoctor init`: the written doctor.yaml loads and runs as is, the task/decoder guesses
follow the outputs, the normalization is measured, and bad input gives one clear line."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

import quantdoctor
from quantdoctor.cli import app
from quantdoctor.graph.inspect import guess_model
from quantdoctor.scaffold import scaffold

from .conftest import REPO, SHARED_DATA

# --- helpers ----------------------------------------------------------------------------------


def init(*args: str) -> object:
    return CliRunner().invoke(app, ["init", *map(str, args)])


def assert_one_line_error(result: object, *needles: str) -> None:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    text = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error:"), text
    for needle in needles:
        assert needle in lines[0], text


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def yolo_like_model(
    path: Path, size: int = 96, values: int = 85, boxes_last: bool = False, anchors: int = 1
) -> Path:
    """Image [1, 3, size, size] → one strided Conv per stride 8/16/32 → [1, boxes, values]
    (YOLOX/YOLOv5 shape) or [1, values, boxes] (YOLOv8 shape); all weights are 0."""
    nodes, inits, flat = [], [], []
    for s in (8, 16, 32):
        w = np.zeros((values * anchors, 3, s, s), np.float32)  # same output for any input
        inits.append(numpy_helper.from_array(w, f"w{s}"))
        nodes.append(helper.make_node("Conv", ["images", f"w{s}"], [f"c{s}"], strides=[s, s]))
        nodes.append(helper.make_node("Reshape", [f"c{s}", "shape"], [f"r{s}"]))
        flat.append(f"r{s}")
    inits.append(numpy_helper.from_array(np.array([1, values, -1], np.int64), "shape"))
    nodes.append(helper.make_node("Concat", flat, ["cat"], axis=2))
    cells = sum((size // s) ** 2 for s in (8, 16, 32)) * anchors
    if boxes_last:
        nodes.append(helper.make_node("Sigmoid", ["cat"], ["output"]))
        out_shape = [1, values, cells]
    else:
        nodes.append(helper.make_node("Transpose", ["cat"], ["output"], perm=[0, 2, 1]))
        out_shape = [1, cells, values]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def detection_data(root: Path, n: int = 6) -> Path:
    """COCO128-style layout: root/images/*.jpg + root/labels/*.txt; returns root/images."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i:03d}.jpg")
        (root / "labels" / f"{i:03d}.txt").write_text(f"{i % 3} 0.5 0.5 0.3 0.4\n")
    return root / "images"


def with_input_division(model_path: Path, out: Path) -> Path:
    """The digits model with ``x / 255`` as its first op: it then takes raw 0..255 pixels."""
    model = onnx.load(model_path)
    g = model.graph
    for node in g.node:
        node.input[:] = ["scaled" if i == "input" else i for i in node.input]
    g.initializer.append(numpy_helper.from_array(np.array(255.0, np.float32), "k255"))
    g.node.insert(0, helper.make_node("Div", ["input", "k255"], ["scaled"], name="norm/Div"))
    return _save(model, out)


# --- classification on the digits fixture ---------------------------------------------------


def test_init_digits_class_folders_runs_as_is(digits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cfg" / "doctor.yaml"
    out.parent.mkdir()
    start = time.perf_counter()
    result = init(digits["model"], "--images", digits["test"], "-o", out)
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert seconds < 60
    text = out.read_text()
    # the choices and their reasons are comments; the measured scores are listed
    assert "# Normalization measured: top1" in text
    assert "<- chosen" in text and "rgb x / 255 " in text
    raw = yaml.safe_load(text)
    assert raw["task"] == "classification"
    assert raw["preprocess"]["scale"] == pytest.approx(1 / 255)  # how the MLP was trained
    assert raw["preprocess"]["color"] == "rgb"  # greyscale: RGB and BGR tie, RGB wins
    assert "center_crop" not in raw["preprocess"]  # 8x8 images are the model's size already
    assert not Path(raw["model"]).is_absolute()  # relative to the config's folder
    cfg = quantdoctor.load_config(out)
    assert cfg.model == digits["model"].resolve()
    assert cfg.data.evaluation is not None and cfg.data.evaluation.path == digits["test"]
    report = quantdoctor.evaluate(cfg, write=False)
    assert report.contexts["native"].value > 80
    assert report.contexts["native"].n == len(list(digits["test"].rglob("*.png")))
    # the whole checklist runs on it too, and finds the chosen pipeline right
    checked = quantdoctor.diagnose(cfg, write=False, skip=("layers",))
    assert not [f.id for f in checked.findings if f.id.startswith("pipeline.")
                and f.severity == "error"]


def test_init_channels_last_model(digits: dict[str, Path], tmp_path: Path) -> None:
    """An NHWC input (a Transpose right after it, as TF exports have) gets layout nhwc."""
    model = onnx.load(digits["model"])
    g = model.graph
    for node in g.node:
        node.input[:] = ["nchw" if i == "input" else i for i in node.input]
    g.node.insert(0, helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8, 3]))
    path = _save(model, tmp_path / "nhwc.onnx")
    result = scaffold(path, digits["test"], output=tmp_path / "doctor.yaml")
    assert result.guess.layout == "nhwc" and result.guess.input_transpose == [0, 3, 1, 2]
    assert "Transpose [0, 3, 1, 2]" in result.text
    assert result.config.preprocess.layout == "nhwc"
    (tmp_path / "doctor.yaml").write_text(result.text)
    report = quantdoctor.evaluate(quantdoctor.load_config(tmp_path / "doctor.yaml"), write=False)
    assert report.contexts["native"].value > 80


def test_init_prints_to_stdout_with_paths_relative_to_cwd(
    digits: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = init(digits["model"], "--images", digits["test"], "--no-measure", "--limit", "50")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("# doctor.yaml written by `quantdoctor init`")
    assert "init:" in result.stderr and "init:" not in result.stdout  # notes go to stderr
    path = tmp_path / "doctor.yaml"
    path.write_text(result.stdout)
    cfg = quantdoctor.load_config(path)
    assert cfg.model == digits["model"].resolve()
    assert cfg.data.evaluation is not None and cfg.data.evaluation.limit == 50


def test_init_measures_normalization_inside_the_graph(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    """A model that divides by 255 itself must get raw pixels: measured and hinted."""
    model = with_input_division(digits["model"], tmp_path / "div.onnx")
    result = scaffold(model, digits["test"], output=tmp_path / "doctor.yaml")
    assert result.guess.normalization is not None
    assert result.guess.normalization.expects == "0..255"
    assert result.chosen.norm == "raw"
    assert "scale" not in yaml.safe_load(result.text)["preprocess"]
    assert "Hint: the graph normalizes its input itself" in result.text
    assert result.measurement is not None
    scores = {s.candidate.label: s.value for s in result.measurement.scores}
    assert scores["rgb 0..255 (no scaling)"] > 80 > scores["rgb x / 255"]


def test_init_refuses_to_overwrite_without_force(digits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "doctor.yaml"
    out.write_text("keep me\n")
    assert_one_line_error(
        init(digits["model"], "--images", digits["test"], "-o", out), "exists", "--force"
    )
    assert out.read_text() == "keep me\n"
    result = init(digits["model"], "--images", digits["test"], "-o", out, "--force",
                  "--no-measure")
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# doctor.yaml")


# --- errors -----------------------------------------------------------------------------------


def test_init_without_labels_says_how_to_give_them(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted(digits["test"].rglob("*.png"))[:5]:
        shutil.copy(f, flat / f.name)
    assert_one_line_error(
        init(digits["model"], "--images", flat), "cannot tell the labels", "--labels", str(flat)
    )


def test_init_not_an_onnx_file(digits: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a model\n" * 20)
    assert_one_line_error(init(bad, "--images", digits["test"]), "model.onnx", "ONNX")


def test_init_missing_image_folder(digits: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(
        init(digits["model"], "--images", tmp_path / "nope"), "nope", "does not exist"
    )


def test_init_missing_model(digits: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(
        init(tmp_path / "missing.onnx", "--images", digits["test"]), "missing.onnx", "not found"
    )


def test_init_detection_without_labels(tmp_path: Path) -> None:
    model = yolo_like_model(tmp_path / "det.onnx")
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.jpg")
    assert_one_line_error(init(model, "--images", images), "no labels found", "--labels")


def test_guess_reads_imagenet_normalization_and_softmax_from_the_graph() -> None:
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    inits = [
        numpy_helper.from_array(mean, "mean"),
        numpy_helper.from_array(std, "std"),
        numpy_helper.from_array(np.ones((5, 3, 1, 1), np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Conv", ["normed", "w"], ["conv"]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Softmax", ["flat"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    g = guess_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert (g.task, g.num_classes, g.layout) == ("classification", 5, "nchw")
    assert g.input_hw == (224, 224) and "CHECK" in g.input_hw_reason  # dynamic size
    assert g.normalization is not None and g.normalization.ops == ("Sub", "Div")
    assert np.allclose(g.normalization.mean, [0.485, 0.456, 0.406], atol=1e-6)
    assert np.allclose(g.normalization.std, [0.229, 0.224, 0.225], atol=1e-6)
    assert g.normalization.expects == "0..1"
    assert g.output_activations == ["Softmax"]


# --- detection guesses -----------------------------------------------------------------------


def test_guess_yolox_from_the_box_count(tmp_path: Path) -> None:
    g = guess_model(onnx.load(yolo_like_model(tmp_path / "m.onnx")), "m")
    assert (g.task, g.decoder, g.num_classes, g.input_hw) == ("detection", "yolox", 80, (96, 96))
    assert "one per grid cell" in g.decoder_reason
    assert g.output_activations == []  # no Sigmoid: the host must apply it


def test_guess_yolov5_from_three_anchors_per_cell(tmp_path: Path) -> None:
    g = guess_model(onnx.load(yolo_like_model(tmp_path / "m.onnx", values=8, anchors=3)), "m")
    assert (g.task, g.decoder, g.num_classes) == ("detection", "yolov5", 3)


def test_guess_yolov8_from_boxes_last(tmp_path: Path) -> None:
    g = guess_model(onnx.load(yolo_like_model(tmp_path / "m.onnx", values=7, boxes_last=True)), "m")
    assert (g.task, g.decoder, g.num_classes) == ("detection", "yolov8", 3)
    assert g.output_activations == ["Sigmoid"]


def test_init_detection_writes_a_loadable_config(tmp_path: Path) -> None:
    model = yolo_like_model(tmp_path / "yolox_tiny.onnx", values=8)
    images = detection_data(tmp_path / "data")
    out = tmp_path / "doctor.yaml"
    result = init(model, "--images", images, "-o", out)
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load(out.read_text())
    assert raw["task"] == "detection" and raw["metric"] == "map"
    assert raw["postprocess"]["type"] == "yolox"
    assert raw["postprocess"]["activation"] == "sigmoid"  # no Sigmoid in the graph
    assert raw["preprocess"]["letterbox"] == {"size": 96, "anchor": "top_left", "pad": 114}
    assert raw["preprocess"]["color"] == "bgr"  # every candidate ties: the YOLOX hint decides
    cfg = quantdoctor.load_config(out)
    assert cfg.data.evaluation is not None
    assert cfg.data.evaluation.labels == (tmp_path / "data" / "labels").resolve()


# --- the real models in ../shared/data -------------------------------------------------------


LITE0 = REPO / "examples" / "models" / "efficientnet_lite0.onnx"
YOLOX = SHARED_DATA / "models" / "yolox_nano.onnx"


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported model in examples/models when it is there, else exported now (as the
    other real-model tests do; needs the examples extra)."""
    if LITE0.is_file():
        return LITE0
    from .test_real_models import _export

    return _export(tmp_path_factory, "export_efficientnet_lite0")


@pytest.mark.shared_data
def test_init_efficientnet_lite0(lite0: Path, tmp_path: Path) -> None:
    out = tmp_path / "doctor.yaml"
    start = time.perf_counter()
    result = scaffold(
        lite0,
        SHARED_DATA / "imagenet-sample",
        REPO / "examples" / "imagenet_sample_labels.txt",
        output=out,
        limit=200,
    )
    seconds = time.perf_counter() - start
    assert seconds < 120  # ~25 s on 2 shared cores
    out.write_text(result.text)
    # TF-Lite weights: (x - 127.5) / 127.5 in RGB, measured clearly better than the rest
    assert result.chosen.label == "rgb (x - 127.5) / 127.5"
    assert result.measurement is not None
    scores = {s.candidate.label: s for s in result.measurement.scores}
    assert scores["rgb ImageNet mean/std on x / 255"].significantly_worse
    cfg = quantdoctor.load_config(out)
    assert cfg.preprocess.center_crop == (224, 224) and cfg.preprocess.resize is not None
    report = quantdoctor.evaluate(cfg, write=False)
    native = report.contexts["native"]
    assert native.n == 200
    assert abs(native.value - 88.8) < 4.0  # the example config's 88.8 on all 1000 images


@pytest.mark.shared_data
def test_init_yolox_nano_coco128(tmp_path: Path) -> None:
    out = tmp_path / "doctor.yaml"
    result = scaffold(YOLOX, SHARED_DATA / "coco128" / "val2017" / "images", output=out)
    out.write_text(result.text)
    assert result.guess.decoder == "yolox"
    assert result.chosen.label == "bgr 0..255 (no scaling)"
    cfg = quantdoctor.load_config(out)
    assert cfg.postprocess.type == "yolox" and cfg.postprocess.activation == "none"
    assert cfg.preprocess.letterbox is not None and cfg.preprocess.letterbox.anchor == "top_left"
    assert cfg.data.evaluation is not None
    assert cfg.data.evaluation.labels == SHARED_DATA / "coco128" / "val2017" / "labels"
    report = quantdoctor.evaluate(cfg, write=False)
    native = report.contexts["native"]
    assert native.n == 128
    assert abs(native.value - 33.9) < 1.0  # the hand-written example config's mAP
