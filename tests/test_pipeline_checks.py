"""Suspect 1, the float pipeline: each deliberate mistake is the top suspect, with numbers;
correct pipelines raise no false alarm."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

import quantdoctor
from quantdoctor.config import InputConversionStep, NormalizationStep, TargetConfig

from .conftest import SHARED_DATA, write_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: Suspect-1 tests on real models need the pipeline step and the three-way test only.
SKIP = ("calibration", "layers")


def _top(report: quantdoctor.report.Report) -> str | None:
    top = report.top_suspect
    return None if top is None else top.id


# --- self-contained: digits ---------------------------------------------------------------------


def test_digits_correct_pipeline_has_no_pipeline_error(digits_config) -> None:  # type: ignore[no-untyped-def]
    report = quantdoctor.diagnose(quantdoctor.load_config(digits_config()), write=False)
    assert not [f for f in report.findings if f.suspect == 1 and f.severity == "error"]
    assert report.reliability == ""
    assert report.steps == {
        "setup": "done",
        "pipeline": "done",
        "calibration": "done",
        "evaluation": "done",
        "layers": "done",
    }


def test_digits_normalization_applied_twice(digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # host already gives 0..1; the recipe divides by 255 once more
    recipe = [{"normalization": {"mean": [0, 0, 0], "std": [255, 255, 255]}}]
    report = quantdoctor.diagnose(
        quantdoctor.load_config(digits_config(recipe=recipe)), report_dir=tmp_path / "r"
    )
    top = report.top_suspect
    assert top is not None and top.id == "pipeline.normalization_duplicated"
    assert top.evidence["alternative"] > top.evidence["declared"] + 30
    assert top.evidence["p_value"] < 1e-6
    assert report.reliability  # quantized results marked unreliable
    saved = (tmp_path / "r" / "findings.json").read_text()
    assert "not a pure quantization issue" in saved


def test_recipe_transforms_are_folded_into_fp_optimized(digits_config) -> None:  # type: ignore[no-untyped-def]
    # the host feeds 0..255; the recipe's normalization (folded into the model) divides by 255
    recipe = [{"normalization": {"mean": [0, 0, 0], "std": [255, 255, 255]}}]
    cfg = quantdoctor.load_config(digits_config(preprocess={"color": "rgb"}, recipe=recipe))
    assert isinstance(cfg.recipe[0], NormalizationStep)
    report = quantdoctor.diagnose(cfg, write=False)
    assert {"native", "fp_optimized", "quantized", "int8"} <= set(report.contexts)
    fp = next(f for f in report.findings if f.id == "pipeline.fp_optimized_mismatch")
    assert fp.severity == "ok"
    assert min(fp.evidence["output_snr_db"].values()) > 60
    assert report.contexts["native"].value == pytest.approx(report.contexts["fp_optimized"].value)
    assert not [f for f in report.findings if f.suspect == 1 and f.severity == "error"]


# --- real models ------------------------------------------------------------------------------


lite0_fixture = pytest.fixture(scope="module")


@lite0_fixture
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .test_real_models import _export

    return _export(tmp_path_factory, "export_efficientnet_lite0")


def _lite0_config(model: Path, **update: object) -> quantdoctor.config.DoctorConfig:
    cfg = quantdoctor.load_config(EXAMPLES / "efficientnet_lite0.yaml")
    data = cfg.data.model_copy(
        update={"evaluation": cfg.data.evaluation.model_copy(update={"limit": 200})}
    )
    return cfg.model_copy(update={"model": model, "data": data, **update})


@pytest.mark.shared_data
def test_lite0_correct_pipeline_no_false_alarm(lite0: Path) -> None:
    report = quantdoctor.diagnose(_lite0_config(lite0), write=False, skip=SKIP)
    assert not [f for f in report.findings if f.suspect == 1 and f.severity in ("error", "warning")]


@pytest.mark.shared_data
def test_lite0_double_normalization(lite0: Path) -> None:
    cfg = _lite0_config(lite0)
    norm = NormalizationStep(normalization={"mean": [127] * 3, "std": [128] * 3})
    report = quantdoctor.diagnose(
        cfg.model_copy(update={"recipe": [norm, *cfg.recipe]}), write=False, skip=SKIP
    )
    assert _top(report) == "pipeline.normalization_duplicated"
    stats = report.evidence["pipeline"]["input_statistics"]
    assert stats["looks"] == "normalized twice"  # std ~0.004 at the first conv
    assert report.top_suspect.evidence["alternative"] > 80


@pytest.mark.shared_data
def test_lite0_no_normalization(lite0: Path) -> None:
    cfg = _lite0_config(lite0)
    pre = cfg.preprocess.model_copy(update={"mean": None, "std": None})
    report = quantdoctor.diagnose(
        cfg.model_copy(update={"preprocess": pre}), write=False, skip=SKIP
    )
    assert _top(report) == "pipeline.normalization_missing"
    assert report.evidence["pipeline"]["input_statistics"]["looks"] == "not normalized"


@pytest.mark.shared_data
def test_lite0_fed_bgr(lite0: Path) -> None:
    cfg = _lite0_config(lite0)
    pre = cfg.preprocess.model_copy(update={"color": "bgr"})
    report = quantdoctor.diagnose(
        cfg.model_copy(update={"preprocess": pre}), write=False, skip=SKIP
    )
    assert _top(report) == "pipeline.channel_order"
    assert report.top_suspect.recipe == ["preprocess: {color: rgb}"]


@pytest.mark.shared_data
def test_lite0_bgr_host_with_input_conversion_is_fine(lite0: Path) -> None:
    # the host feeds BGR and the recipe folds the BGR→RGB flip into the model: correct
    cfg = _lite0_config(lite0)
    pre = cfg.preprocess.model_copy(update={"color": "bgr"})
    steps = [InputConversionStep(input_conversion="bgr_to_rgb"), *cfg.recipe]
    report = quantdoctor.diagnose(
        cfg.model_copy(update={"preprocess": pre, "recipe": steps}), write=False, skip=SKIP
    )
    assert not [f for f in report.findings if f.suspect == 1 and f.severity == "error"]
    assert abs(report.contexts["fp_optimized"].value - report.contexts["native"].value) < 0.6


def _yolox_config(tmp_path: Path, **update: object) -> quantdoctor.config.DoctorConfig:
    cfg = quantdoctor.load_config(EXAMPLES / "yolox_nano_coco128.yaml")
    report = cfg.report.model_copy(update={"dir": tmp_path / "report"})
    return cfg.model_copy(
        update={"report": report, "target": TargetConfig(profile="int8"), **update}
    )


@pytest.mark.shared_data
def test_yolox_correct_pipeline_no_false_alarm(tmp_path: Path) -> None:
    report = quantdoctor.diagnose(_yolox_config(tmp_path), write=False, skip=SKIP)
    errors = [f for f in report.findings if f.suspect == 1 and f.severity in ("error", "warning")]
    assert not errors, errors
    # YOLOX wants 0-255 input: the statistics say "not normalized", but nothing does better
    stats = report.evidence["pipeline"]["input_statistics"]
    assert stats["looks"] == "not normalized"


@pytest.mark.shared_data
def test_yolox_fed_rgb(tmp_path: Path) -> None:
    cfg = _yolox_config(tmp_path)
    pre = cfg.preprocess.model_copy(update={"color": "rgb"})
    report = quantdoctor.diagnose(
        cfg.model_copy(update={"preprocess": pre}), write=False, skip=SKIP
    )
    assert _top(report) == "pipeline.channel_order"


@pytest.mark.shared_data
def test_yolox_sigmoid_applied_twice(tmp_path: Path) -> None:
    cfg = _yolox_config(tmp_path)
    post = cfg.postprocess.model_copy(update={"activation": "sigmoid"})
    report = quantdoctor.diagnose(
        cfg.model_copy(update={"postprocess": post}), write=False, skip=SKIP
    )
    assert _top(report) == "pipeline.output_activation_duplicated"
    top = report.top_suspect
    assert top.severity == "error" and "Sigmoid" in top.evidence["graph_activations"]
    # mAP ranks detections and barely moves; at a deployed threshold every anchor passes
    assert top.evidence["lowest_score_after_host_activation"] >= 0.25
    flood = top.evidence["detections_per_image_at_0.3_declared"]
    assert flood > 10 * top.evidence["detections_per_image_at_0.3_without_host_activation"]


def _yolox_head_tensors() -> list[str]:
    """Per level (strides 8, 16, 32): reg, objectness and class tensors BEFORE the sigmoids."""
    model = onnx.load(str(SHARED_DATA / "models" / "yolox_nano.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    names = []
    for node in model.graph.node:
        if (
            node.op_type == "Concat"
            and len(node.input) == 3
            and all(i in producer for i in node.input)
            and producer[node.input[1]].op_type == "Sigmoid"
        ):
            reg, obj, cls = node.input
            names += [reg, producer[obj].input[0], producer[cls].input[0]]
    assert len(names) == 9
    return names


PLUGIN = """
import numpy as np
from quantdoctor.tasks.detection import batched_nms, yolox_grid

GRID, STRIDE = yolox_grid((416, 416), [8, 16, 32])


def decode(outputs, meta):
    levels = [np.concatenate(
        [outputs[f"{{i}}"].reshape(-1, outputs[f"{{i}}"].shape[-1] * outputs[f"{{i}}"].shape[-2])
         for i in (3 * k, 3 * k + 1, 3 * k + 2)]) for k in range(3)]
    p = np.concatenate(levels, axis=1).T.astype(float)  # [3549, 85]
    {activation}
    xy = (p[:, :2] + GRID) * STRIDE[:, None]
    wh = np.exp(p[:, 2:4]) * STRIDE[:, None]
    cls = p[:, 5:].argmax(1)
    score = p[:, 4] * p[np.arange(len(p)), 5 + cls]
    keep = score > 0.001
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[keep]
    score, cls = score[keep], cls[keep]
    sel = batched_nms(boxes, score, cls, 0.65, False)[:100]
    sy, sx = meta["scale_hw"]
    top, left = meta["pad_tl"]
    boxes = boxes[sel]
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - left) / sx
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - top) / sy
    return boxes, score[sel], cls[sel]
"""


def _cut_config(tmp_path: Path, with_sigmoid: bool) -> quantdoctor.config.DoctorConfig:
    names = _yolox_head_tensors()
    activation = "p[:, 4:] = 1 / (1 + np.exp(-p[:, 4:]))" if with_sigmoid else "pass"
    # the plugin receives outputs by name; index them 0..8 in end_nodes order
    body = PLUGIN.format(activation=activation)
    body = body.replace('outputs[f"{i}"]', "O[i]")
    body = body.replace(
        "def decode(outputs, meta):",
        f"def decode(outputs, meta):\n    O = [outputs[n] for n in {names!r}]",
    )
    plugin = tmp_path / "cut_decode.py"
    plugin.write_text(textwrap.dedent(body))
    cfg = _yolox_config(tmp_path)
    post = cfg.postprocess.model_copy(update={"type": "python", "function": f"{plugin}:decode"})
    return cfg.model_copy(
        update={
            "end_nodes": names,
            "postprocess": post,
            "native_postprocess": cfg.postprocess,
        }
    )


@pytest.mark.shared_data
def test_yolox_end_node_cut_with_a_complete_host_postprocess(tmp_path: Path) -> None:
    report = quantdoctor.diagnose(_cut_config(tmp_path, with_sigmoid=True), write=False, skip=SKIP)
    cut = next(f for f in report.findings if f.id == "pipeline.end_nodes_mismatch")
    assert cut.severity == "ok", cut.title
    assert abs(report.contexts["fp_optimized"].value - report.contexts["native"].value) < 0.5


@pytest.mark.shared_data
def test_yolox_end_node_cut_whose_postprocess_omits_the_sigmoid(tmp_path: Path) -> None:
    report = quantdoctor.diagnose(_cut_config(tmp_path, with_sigmoid=False), write=False, skip=SKIP)
    assert _top(report) == "pipeline.end_nodes_mismatch"
    top = report.top_suspect
    assert top.evidence["fp_optimized"] < top.evidence["native"] - 10


_ = np  # numpy is used by the plugin text
_ = write_config
