"""Detection: labels, decoders, NMS, COCO mAP and its bootstrap, the plugin path on a
multi-output model built here, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import quantdoctor
from quantdoctor.config import PostprocessConfig
from quantdoctor.data import BoxLabels, ImageMeta, ImageSet, read_detection_source
from quantdoctor.errors import DataError, QuantdoctorError
from quantdoctor.tasks.detection import CocoEvaluation, Detections, DetectionTask, nms

from .conftest import write_config
from .test_cli_errors import assert_clean_error, run_cli

SIZE = 32  # model input
BOX = 8  # side of the square object


# --- a real (hand-built) two-output detector and its data ----------------------------------


def square_detector() -> onnx.ModelProto:
    """Finds one coloured square: red = class 0, green = class 1. Outputs ``boxes`` [N,1,4]
    (x1 y1 x2 y2 in input pixels, from the mask's centroid) and ``scores`` [N,1,2]."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    inits = [
        # 1x1 conv: mask = relu(2*red_or_green - blue - other) - isolates the coloured square
        numpy_helper.from_array(np.array([[[[1.0]], [[1.0]], [[-2.0]]]], np.float32), "mask_w"),
        numpy_helper.from_array(np.array([-0.5], np.float32), "mask_b"),
        numpy_helper.from_array(xs[None, None], "grid_x"),
        numpy_helper.from_array(ys[None, None], "grid_y"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "hw_axes"),
        numpy_helper.from_array(np.array([1e-6], np.float32), "eps"),
        numpy_helper.from_array(np.array([BOX / 2], np.float32), "half"),
        numpy_helper.from_array(np.array([0, 1, 1, 4], np.int64), "box_shape"),
        numpy_helper.from_array(np.array([0, 1, 2], np.int64), "score_shape"),
        numpy_helper.from_array(np.array([0.1], np.float32), "temperature"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "mask_w", "mask_b"], ["mask_pre"], name="mask/Conv"),
        n("Relu", ["mask_pre"], ["mask"], name="mask/Relu"),
        n("ReduceSum", ["mask", "hw_axes"], ["area"], name="area", keepdims=1),
        n("Add", ["area", "eps"], ["area_eps"], name="area_eps"),
        n("Mul", ["mask", "grid_x"], ["mx"], name="mx"),
        n("Mul", ["mask", "grid_y"], ["my"], name="my"),
        n("ReduceSum", ["mx", "hw_axes"], ["sx"], name="sx", keepdims=1),
        n("ReduceSum", ["my", "hw_axes"], ["sy"], name="sy", keepdims=1),
        n("Div", ["sx", "area_eps"], ["cx"], name="cx"),
        n("Div", ["sy", "area_eps"], ["cy"], name="cy"),
        n("Sub", ["cx", "half"], ["x1"], name="x1"),
        n("Sub", ["cy", "half"], ["y1"], name="y1"),
        n("Add", ["cx", "half"], ["x2"], name="x2"),
        n("Add", ["cy", "half"], ["y2"], name="y2"),
        n("Concat", ["x1", "y1", "x2", "y2"], ["box_cat"], name="box_cat", axis=1),
        n("Reshape", ["box_cat", "box_shape"], ["boxes"], name="boxes"),
        # class scores from the mean red and green inside the mask
        n("Mul", ["input", "mask"], ["colour"], name="colour"),
        n("ReduceSum", ["colour", "hw_axes"], ["colour_sum"], name="colour_sum", keepdims=0),
        n("Div", ["colour_sum", "temperature"], ["logits3"], name="logits3"),
        n("Softmax", ["logits3"], ["probs3"], name="softmax", axis=1),
        n("Slice", ["probs3", "zero", "two", "one"], ["probs"], name="rg"),
        n("Reshape", ["probs", "score_shape"], ["scores"], name="scores"),
    ]
    inits += [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "square_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 1, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1, 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


PLUGIN = '''
import numpy as np

def decode(outputs, meta):
    """Model-input pixels -> original pixels with the letterbox metadata."""
    sy, sx = meta["scale_hw"]
    top, left = meta["pad_tl"]
    boxes = outputs["boxes"].reshape(-1, 4).astype(float)
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - left) / sx
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - top) / sy
    scores = outputs["scores"].reshape(-1, 2)
    return boxes, scores.max(axis=1), scores.argmax(axis=1)
'''


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64x64 images (letterboxed to 32) with one red or green 16x16 square, YOLO labels."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("val", 60)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            img = np.full((64, 64, 3), 40, np.uint8)
            cls = int(rng.integers(0, 2))
            x, y = (int(v) for v in rng.integers(4, 64 - 2 * BOX - 4, size=2))
            img[y : y + 2 * BOX, x : x + 2 * BOX] = (220, 40, 40) if cls == 0 else (40, 220, 40)
            Image.fromarray(img).save(root / split / "images" / f"{i:03d}.png")
            cx, cy, s = (x + BOX) / 64, (y + BOX) / 64, 2 * BOX / 64
            (root / split / "labels" / f"{i:03d}.txt").write_text(f"{cls} {cx} {cy} {s} {s}\n")
    onnx.save(square_detector(), root / "squares.onnx")
    (root / "decode.py").write_text(PLUGIN)
    (root / "names.txt").write_text("red\ngreen\n")
    return root


def squares_config(root: Path, tmp_path: Path, **overrides: object) -> Path:
    config = {
        "model": str(root / "squares.onnx"),
        "task": "detection",
        "data": {
            "calibration": {"path": str(root / "train" / "images")},
            "evaluation": {
                "path": str(root / "val" / "images"),
                "labels": str(root / "val" / "labels"),
                "class_names": str(root / "names.txt"),
            },
        },
        "preprocess": {
            "color": "rgb",
            "letterbox": {"size": SIZE, "anchor": "center"},
            "scale": 1 / 255,
        },
        "postprocess": {"type": "python", "function": str(root / "decode.py") + ":decode"},
        "metric": "map50",
        "target": "int8",
        "report": {"dir": str(tmp_path / "report")},
    }
    config.update(overrides)
    return write_config(tmp_path, config)


def test_plugin_postprocess_on_a_multi_output_detector(squares: Path, tmp_path: Path) -> None:
    report = quantdoctor.evaluate(quantdoctor.load_config(squares_config(squares, tmp_path)))
    native = report.contexts["native"]
    assert native.metric == "map50" and native.n == 60
    assert native.value > 90.0  # the hand-built detector finds the squares
    assert native.ci95[0] <= native.value <= native.ci95[1]
    cmp = next(c for c in report.comparisons if c["context"] == "int8")
    assert cmp["test"].startswith("paired bootstrap")
    assert cmp["ci95"][0] <= cmp["difference"] <= cmp["ci95"][1]
    assert cmp["agreement_name"] == "detection_agreement_f1"
    saved = json.loads((tmp_path / "report" / "findings.json").read_text())
    assert saved["contexts"]["quantized"]["metric"] == "map50"


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("    raise RuntimeError('boom')\n", ["plugin failed", "boom"]),
        ("    return np.zeros((2, 5)), np.zeros(2), np.zeros(2)\n", ["boxes [2, 5]", "[N, 4]"]),
        ("    return 3\n", ["returned int", "(boxes [N, 4]"]),
    ],
)
def test_a_bad_plugin_gives_one_clear_error(
    squares: Path, tmp_path: Path, body: str, needles: list[str]
) -> None:
    (tmp_path / "bad.py").write_text("import numpy as np\n\ndef decode(outputs, meta):\n" + body)
    path = squares_config(
        squares,
        tmp_path,
        postprocess={"type": "python", "function": str(tmp_path / "bad.py") + ":decode"},
    )
    assert_clean_error(run_cli("evaluate", str(path)), *needles)
    # what was done before the failure is kept
    saved = json.loads((tmp_path / "report" / "findings.json").read_text())
    assert saved["steps"]["setup"] == "done"
    assert saved["steps"]["evaluation"].startswith("failed:")


# --- labels ------------------------------------------------------------------------------


def _yolo_folder(tmp_path: Path, lines: dict[str, str | None]) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for stem, text in lines.items():
        Image.new("RGB", (100, 50)).save(images / f"{stem}.jpg")
        if text is not None:
            (labels / f"{stem}.txt").write_text(text)
    return images, labels


def test_yolo_labels_become_original_pixel_boxes(tmp_path: Path) -> None:
    images, labels = _yolo_folder(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n", "b": None})
    src = read_detection_source(images, labels, num_classes=3)
    a, b = src.records
    assert np.allclose(a.boxes.boxes, [[40, 15, 60, 35]]) and a.boxes.classes.tolist() == [1]
    assert len(b.boxes.boxes) == 0  # no label file: no objects, and it is said
    assert any("1 image(s) have no label file" in note for note in src.notes)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1 0.5 0.5 0.2\n", "expected 5 columns"),
        ("7 0.5 0.5 0.2 0.2\n", "class id 7 is out of range (0..2)"),
        ("1 1.4 0.5 0.2 0.2\n", "outside the image"),
        ("cat 0.5 0.5 0.2 0.2\n", "integer class"),
    ],
)
def test_bad_label_lines_name_the_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    images, labels = _yolo_folder(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n" + text})
    with pytest.raises(DataError, match="a.txt:2") as info:
        read_detection_source(images, labels, num_classes=3)
    assert needle in str(info.value)


def test_no_label_file_at_all_is_an_error(tmp_path: Path) -> None:
    images, labels = _yolo_folder(tmp_path, {"a": None, "b": None})
    with pytest.raises(DataError, match="none of the 2 images"):
        read_detection_source(images, labels)


def test_bad_label_line_through_the_cli(squares: Path, tmp_path: Path) -> None:
    import shutil

    labels = tmp_path / "labels"
    shutil.copytree(squares / "val" / "labels", labels)
    (labels / "005.txt").write_text("0 0.5 0.5 0.2\n")
    path = squares_config(squares, tmp_path)
    cfg = json.loads(json.dumps(__import__("yaml").safe_load(path.read_text())))
    cfg["data"]["evaluation"]["labels"] = str(labels)
    path = write_config(tmp_path, cfg)
    assert_clean_error(run_cli("evaluate", str(path)), "005.txt:1", "expected 5 columns")


def test_coco_json_labels(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (100, 50)).save(images / "x.jpg")
    coco = {
        "images": [{"id": 7, "file_name": "x.jpg", "height": 50, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    src = read_detection_source(images, tmp_path / "instances.json")
    (rec,) = src.records
    assert src.class_names == ["person", "dog"]
    assert rec.boxes.classes.tolist() == [1]  # sparse id 18 → index 1; crowd skipped
    assert np.allclose(rec.boxes.boxes, [[10, 5, 30, 15]])


# --- decoders, NMS, mAP -------------------------------------------------------------------


def _one_image(orig_hw: tuple[int, int], scale: float, pad_tl: tuple[int, int]) -> ImageSet:
    meta = ImageMeta(orig_hw, (scale, scale), pad_tl)
    return ImageSet([Path("x.jpg")], np.zeros((1, 8, 8, 3), np.uint8), None, [meta])


def test_nms_is_class_aware() -> None:
    from quantdoctor.tasks.detection import batched_nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10.0]])
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, np.array([0, 0, 1]), 0.5, agnostic=False).tolist() == [0, 2]


def test_yolox_decoder_maps_grid_outputs_to_original_pixels() -> None:
    post = PostprocessConfig(type="yolox", strides=[8, 16])
    task = DetectionTask(post, "map", input_hw=(32, 32))
    anchors = 4 * 4 + 2 * 2
    head = np.zeros((1, anchors, 5 + 3), np.float32)
    head[0, :, 4] = 0.0  # objectness (already sigmoided in YOLOX exports)
    cell = 1 * 4 + 2  # stride 8, row 1, column 2
    head[0, cell, :4] = [0.5, 0.5, np.log(2.0), np.log(1.0)]
    head[0, cell, 4], head[0, cell, 5 + 2] = 0.9, 0.8
    images = _one_image((64, 128), 0.25, (8, 0))  # 128x64 image letterboxed into 32x32
    (d,) = task.decode({"output": head}, images)
    assert d.classes.tolist() == [2] and np.isclose(d.scores[0], 0.72)
    # centre (2.5*8, 1.5*8) = (20, 12), size 16x8 in input pixels → original: /0.25, top pad 8
    assert np.allclose(d.boxes[0], [(12 - 0) / 0.25, (8 - 8) / 0.25, (28) / 0.25, (16 - 8) / 0.25])


@pytest.mark.parametrize("kind", ["yolov5", "yolov8"])
def test_decoded_heads(kind: str) -> None:
    task = DetectionTask(PostprocessConfig(type=kind), "map")
    row = [16.0, 16.0, 8.0, 4.0] + ([0.5] if kind == "yolov5" else []) + [0.1, 0.9]
    head = np.asarray([[row, [0.0] * len(row)]], np.float32)
    if kind == "yolov8":
        head = head.transpose(0, 2, 1)
    (d,) = task.decode({"out": head}, _one_image((32, 32), 1.0, (0, 0)))
    assert d.classes.tolist() == [1]
    assert np.isclose(d.scores[0], 0.45 if kind == "yolov5" else 0.9)
    assert np.allclose(d.boxes[0], [12, 14, 20, 18])


def _truth() -> list[BoxLabels]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(20):
        xy = rng.uniform(0, 80, size=(3, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 20, size=(3, 2))], axis=1)
        out.append(BoxLabels(boxes, rng.integers(0, 4, 3), (100, 100)))
    return out


def test_coco_map_perfect_and_empty() -> None:
    truth = _truth()
    perfect = [Detections(t.boxes, np.ones(len(t.boxes)), t.classes) for t in truth]
    assert CocoEvaluation(perfect, truth).map() == (1.0, 1.0)
    assert CocoEvaluation([Detections.empty() for _ in truth], truth).map() == (0.0, 0.0)


def test_bootstrap_resample_equals_a_full_evaluation_of_the_resampled_set() -> None:
    truth = _truth()
    rng = np.random.default_rng(4)
    dets = [
        Detections(t.boxes + rng.normal(0, 2, t.boxes.shape), rng.uniform(0.3, 1, 3), t.classes)
        for t in truth
    ]
    index = rng.integers(0, len(truth), len(truth))
    fast = CocoEvaluation(dets, truth).map(index)
    full = CocoEvaluation([dets[i] for i in index], [truth[i] for i in index]).map()
    assert np.allclose(fast, full)
    assert not np.allclose(fast, CocoEvaluation(dets, truth).map())


def test_plugin_validation_outside_the_cli() -> None:
    task = DetectionTask(
        PostprocessConfig(type="python", function="x.py:f"),
        "map",
        plugin=lambda outputs, meta: (np.zeros((1, 4)), np.zeros(2), np.zeros(1)),
    )
    with pytest.raises(QuantdoctorError, match="scores \\[2\\]"):
        task.decode({"o": np.zeros((1, 3))}, _one_image((8, 8), 1.0, (0, 0)))
