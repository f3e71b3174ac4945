"""``quantdoctor init``: inspect an ONNX model, find its labels, measure which input
normalization it was trained with, and write a commented doctor.yaml that runs as is.

>>> from quantdoctor.scaffold import init_config
>>> text = init_config("model.onnx", "val/", labels="val_labels.txt")   # doctest: +SKIP
>>> print(text)                                                          # doctest: +SKIP
# doctor.yaml written by `quantdoctor init` (quantdoctor 0.1.0) for model.onnx. ...
model: model.onnx
task: classification                    # output 'logits' [N, 1000] holds one score per class
...

Every choice is commented with its reason. The normalization is *measured* where possible:
the float model is scored on a seeded subset of the labelled images under each common
host preprocessing (x/255, ImageNet mean/std, (x - 127.5) / 127.5, raw 0..255; RGB and BGR),
through the same Engine that ``evaluate`` uses, and the scores are written as a comment.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from . import __version__
from .config import DoctorConfig, NormalizationCommand, parse_config
from .data.sources import (
    LabeledSource,
    list_images,
    read_class_names,
    read_classification_source,
    read_detection_source,
)
from .errors import ConfigError, DataError, QuantdoctorError
from .files import check_output_file, write_atomic
from .graph.inspect import ModelGuess, describe_shape, guess_model
from .graph.model import load_model
from .progress import Advance, NullProgress, Progress

#: Labelled images scored per normalization candidate (a seeded sample).
MEASURE_IMAGES = {"classification": 100, "detection": 32}
#: Images the calibration uses (DESIGN: 64 is typical).
CALIBRATION_IMAGES = 64
#: Images whose size is looked at to choose between crop and plain resize.
PEEK_IMAGES = 16
#: ImageNet-style crop ratio: resize the short side to size / 0.875, then center-crop.
CROP_RATIO = 0.875
#: Paths more than this many folders up from the config are written absolute.
MAX_UP = 2
Field = tuple[str, Any, str]  # (key, value, why) of one YAML field
#: Class-name files looked for beside detection images.
_NAME_FILES = ("names.txt", "classes.txt", "class_names.txt", "coco.names", "obj.names")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --- candidates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One host preprocessing: channel order and normalization (``norm`` is ``x/255``,
    ``imagenet``, ``tf`` or ``raw``), as YAML values and as the engine's transform."""

    color: str
    norm: str

    @property
    def label(self) -> str:
        text = {
            "x/255": "x / 255",
            "imagenet": "ImageNet mean/std on x / 255",
            "tf": "(x - 127.5) / 127.5",
            "raw": "0..255 (no scaling)",
        }[self.norm]
        return f"{self.color} {text}"

    def yaml_values(self) -> dict[str, Any]:
        """scale / mean / std as preprocess fields (mean/std in the fed channel order)."""
        if self.norm == "x/255":
            return {"scale": 1 / 255}
        if self.norm == "imagenet":
            mean, std = list(_IMAGENET_MEAN), list(_IMAGENET_STD)
            if self.color == "bgr":
                mean, std = mean[::-1], std[::-1]
            return {"scale": 1 / 255, "mean": mean, "std": std}
        if self.norm == "tf":
            return {"mean": [127.5] * 3, "std": [127.5] * 3}
        return {}

    def transform(self) -> NormalizationCommand | None:
        """The same normalization on 0..255 input, for the engine's input variants."""
        v = self.yaml_values()
        scale = v.get("scale", 1.0)
        mean = np.asarray(v.get("mean", [0.0] * 3)) / scale
        std = np.asarray(v.get("std", [1.0] * 3)) / scale
        if not v:
            return None
        return NormalizationCommand(mean=mean.tolist(), std=std.tolist())


#: Candidates in default order (the first wins a tie when nothing else decides).
_NORMS = {
    "classification": ("imagenet", "tf", "x/255", "raw"),
    "detection": ("x/255", "raw", "tf", "imagenet"),
}


def candidates(task: str) -> list[Candidate]:
    """Every candidate host preprocessing, RGB first."""
    return [Candidate(color, norm) for color in ("rgb", "bgr") for norm in _NORMS[task]]


@dataclass
class CandidateScore:
    candidate: Candidate
    value: float
    #: Paired test against the best candidate: (difference, p-value); None for the best itself
    #: and for candidates below half of the best (a broken pipeline needs no test).
    versus_best: tuple[float, float] | None = None
    significantly_worse: bool = False


@dataclass
class Measurement:
    """The float model's metric under each candidate host preprocessing."""

    scores: list[CandidateScore]
    metric: str
    images: int
    test: str
    seconds: float

    @property
    def best(self) -> CandidateScore:
        return max(self.scores, key=lambda s: s.value)


@dataclass
class InitResult:
    """What ``init`` found and chose; ``text`` is the doctor.yaml, ``config`` it parsed."""

    text: str
    config: DoctorConfig
    guess: ModelGuess
    chosen: Candidate
    chosen_reason: str
    measurement: Measurement | None
    notes: list[str] = field(default_factory=list)


# --- data ------------------------------------------------------------------------------------


@dataclass
class _Data:
    images: Path
    labels: Path | None
    labels_kind: str  # "class folders" | "labels file" | "YOLO txt folder" | "COCO json"
    class_names: Path | None
    source: LabeledSource
    calibration: Path | None


def _class_folders(images: Path, files: list[Path]) -> bool:
    return all(f.parent != images for f in files)


def _detection_labels(images: Path) -> Path | None:
    """A YOLO ``labels/`` folder beside ``images/`` (COCO128, Ultralytics layouts)."""
    found = []
    if images.name == "images":
        found.append(images.parent / "labels")
    parts = images.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            found.append(Path(*parts[:i], "labels", *parts[i + 1 :]))
            break
    return next((p for p in found if p.is_dir()), None)


def _find_names(images: Path) -> Path | None:
    for folder in (images, images.parent, images.parent.parent):
        for name in _NAME_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _resolve_data(
    guess: ModelGuess,
    images: Path,
    labels: Path | None,
    class_names: Path | None,
    calibration: Path | None,
) -> _Data:
    files = list_images(images)  # missing folder / no images: DataError with the path
    if calibration is not None:
        list_images(calibration)
    if class_names is not None and not class_names.is_file():
        raise DataError(f"class names file {class_names} not found; fix --class-names")
    if guess.task == "classification":
        if labels is not None:
            if not labels.is_file():
                raise DataError(
                    f"labels file {labels} not found; --labels names a file of "
                    "'filename,label' lines"
                )
            kind = "labels file"
        elif _class_folders(images, files):
            kind = "class folders"
        else:
            raise DataError(
                f"cannot tell the labels of the images in {images}: pass --labels FILE (lines "
                "'filename,label') or put the images in one sub-folder per class"
            )
        source = read_classification_source(images, labels, class_names)
        top = max(r.label for r in source.records if r.label is not None)
        if guess.num_classes is not None and top >= guess.num_classes:
            raise DataError(
                f"the labels of {images} go up to class index {top} but the model scores "
                f"{guess.num_classes} classes; check the labels (or class folder order)"
            )
        return _Data(images, labels, kind, class_names, source, calibration)
    if labels is None:
        labels = _detection_labels(images)
        if labels is None:
            raise DataError(
                f"no labels found for the detection images in {images} (looked for a labels/ "
                "folder beside images/): pass --labels with a folder of YOLO txt files or a "
                "COCO json file"
            )
    elif not labels.exists():
        raise DataError(f"labels {labels} not found; fix --labels")
    kind = "COCO json" if labels.is_file() else "YOLO txt folder"
    if class_names is None and kind == "YOLO txt folder":
        class_names = _find_names(images)
        if (
            class_names is not None
            and guess.num_classes is not None
            and len(read_class_names(class_names)) != guess.num_classes
        ):
            class_names = None  # another data set's names: the model's count decides
    source = read_detection_source(images, labels, class_names, guess.num_classes)
    if not any(len(r.boxes.classes) for r in source.records if r.boxes is not None):
        raise DataError(
            f"the labels {labels} hold no boxes for the images in {images}; check that the "
            "label files match the image names"
        )
    return _Data(images, labels, kind, class_names, source, calibration)


# --- preprocessing ---------------------------------------------------------------------------


def _image_sizes(files: list[Path]) -> list[tuple[int, int]]:
    sizes = []
    for f in files[:PEEK_IMAGES]:
        try:
            with Image.open(f) as img:  # the header only
                sizes.append((img.height, img.width))
        except Exception:  # unreadable files are reported by the engine later
            continue
    return sizes



def _geometry(guess: ModelGuess, data: _Data) -> list[Field]:
    """Resize/crop or letterbox fields, each with its reason."""
    h, w = guess.input_hw
    size: Any = h if h == w else [h, w]
    if guess.task == "detection":
        anchor = "top_left" if guess.decoder == "yolox" else "center"
        why = (
            "YOLOX's own preprocessing pads bottom/right"
            if anchor == "top_left"
            else "Ultralytics' letterbox centres the image"
        )
        return [(
            "letterbox",
            {"size": size, "anchor": anchor, "pad": 114},
            f"keep the aspect ratio, pad to {h}x{w} with grey 114; {anchor}: {why}",
        )]
    sizes = _image_sizes([r.path for r in data.source.records])
    short = min(h, w)
    median = int(np.median([min(s) for s in sizes])) if sizes else None
    if median is not None and median <= 1.15 * short:
        return [(
            "resize",
            {"size": size},
            f"the images are about the model's size already (median short side {median} px): "
            f"resized whole to {h}x{w}, no crop",
        )]
    side = round(short / CROP_RATIO)
    return [
        (
            "resize",
            {"short_side": side, "interpolation": "bilinear"},
            f"{side} = {short} / {CROP_RATIO}, the usual ImageNet evaluation ratio; bilinear as "
            "torchvision (weights trained with TF may prefer bicubic)",
        ),
        ("center_crop", size, f"the model input is {h}x{w}"),
    ]


# --- measuring the normalization --------------------------------------------------------------


class _OneBar:
    """Funnels every progress task of the engine into one bar (rich cannot nest bars)."""

    def __init__(self, advance: Advance) -> None:
        self.advance = advance

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield self.advance


def _base_config(guess: ModelGuess, data: _Data, geometry: dict[str, Any], model: Path,
                 n: int | None) -> dict[str, Any]:
    """The config (absolute paths, no normalization) the candidates are variants of."""
    evaluation: dict[str, Any] = {"path": str(data.images)}
    if data.labels is not None:
        evaluation["labels"] = str(data.labels)
    if data.class_names is not None:
        evaluation["class_names"] = str(data.class_names)
    if n is not None:
        evaluation["limit"] = n
    raw: dict[str, Any] = {
        "model": str(model),
        "task": guess.task,
        "data": {"evaluation": evaluation},
        "preprocess": {"color": "rgb", **geometry, "layout": guess.layout},
        "postprocess": {k: v for k, v, _ in _postprocess(guess)},
    }
    return raw


def _postprocess(guess: ModelGuess) -> list[Field]:
    """postprocess fields, each with its reason."""
    acts = guess.output_activations
    fields: list[Field] = [("type", guess.decoder, guess.decoder_reason)]
    if len(guess.outputs) > 1:
        fields.append(("output", guess.output, "the model output that holds the scores"))
    if guess.task == "classification":
        why = (
            f"the graph ends in {', '.join(acts)} already"
            if acts
            else "top-1/top-5 rank the raw scores; a softmax would not change them"
        )
        return [*fields, ("activation", "none", why)]
    if acts:
        fields.append(("activation", "none",
                       f"a {', '.join(acts)} before the output already gives 0..1 scores"))
    else:
        fields.append(("activation", "sigmoid",
                       "no Sigmoid before the output: the host applies it to the scores"))
    fields.append(("conf_threshold", 0.001, "low: mAP needs the whole precision-recall curve"))
    fields.append(("iou_threshold", 0.65, "class-aware NMS, as YOLO evaluations use"))
    if guess.strides != [8, 16, 32]:
        fields.append(("strides", guess.strides, "the box count fits this grid"))
    return fields


def _hints(guess: ModelGuess) -> tuple[str | None, str | None, list[str]]:
    """(normalization family, channel order, reasons) the graph suggests, if any."""
    norm = color = None
    why: list[str] = []
    if guess.normalization is not None:
        n = guess.normalization
        norm = "raw" if n.expects == "0..255" else "x/255"
        feed = "raw 0..255 pixels" if norm == "raw" else "0..1 (x / 255)"
        why.append(
            f"the graph normalizes its input itself ({n.describe()}): the host should feed "
            f"{feed}"
        )
    family = guess.decoder if guess.decoder != "classification" else guess.name_hint
    if family == "yolox":
        color = "bgr"
        norm = norm or "raw"
        why.append("YOLOX models take BGR 0..255 (YOLOX's own preprocessing)")
    elif family in ("yolov5", "yolov8"):
        color = "rgb"
        norm = norm or "x/255"
        why.append("Ultralytics YOLO models take RGB x / 255")
    return norm, color, why


def _measure(
    guess: ModelGuess, data: _Data, geometry: dict[str, Any], model: Path, progress: Progress
) -> Measurement:
    """Score every candidate with the float model on a seeded labelled subset, through the
    Engine (one decode of the images; each candidate is an input variant of the native
    context), and test the runners-up against the best on the same images."""
    from .checks.evaluation import compare
    from .engine import Engine, InputVariant
    from .tasks import make_task

    start = time.perf_counter()
    n = min(MEASURE_IMAGES[guess.task], len(data.source.records))
    cfg = parse_config(_base_config(guess, data, geometry, model, n), where="init")
    cands = candidates(guess.task)
    with progress.task(
        f"measuring {len(cands)} input normalizations on {n} images", n * (len(cands) + 1)
    ) as advance:
        engine = Engine(cfg, _OneBar(advance))
        task = make_task(cfg)
        images = engine.images("evaluation")
        results = []
        for cand in cands:
            t = cand.transform()
            variant = InputVariant(cand.label, color=cand.color, transforms=(t,) if t else ())
            results.append(task.score(engine.outputs("native", variant=variant), images))
    scores = [CandidateScore(c, r.value) for c, r in zip(cands, results, strict=True)]
    best = max(range(len(scores)), key=lambda i: scores[i].value)
    top = scores[best].value
    test = ""
    for i, s in enumerate(scores):
        if i == best or top <= 0:
            continue
        if s.value < top / 2:
            s.significantly_worse = True
            continue
        cmp = compare("best", results[best], s.candidate.label, results[i], cfg.seed, 300)
        test = cmp["test"]
        s.versus_best = (cmp["difference"], cmp["p_value"])
        s.significantly_worse = cmp["p_value"] < 0.05 and cmp["ci95"][1] < 0
    seconds = time.perf_counter() - start
    return Measurement(scores, cfg.metric or "", len(images), test, seconds)


def _choose(
    task: str, scores: list[CandidateScore], hint_norm: str | None, hint_color: str | None
) -> tuple[Candidate, str]:
    """The best-scoring candidate, unless others are not significantly worse: then the graph's
    hints (else RGB, the common channel order, and then the score) pick among them."""
    order = {c: i for i, c in enumerate(candidates(task))}
    best = max(scores, key=lambda s: (s.value, -order[s.candidate]))
    contenders = [s for s in scores if not s.significantly_worse]
    if len(contenders) == 1:
        return best.candidate, (
            "Chosen: the best, significantly better than every other candidate."
        )
    prefer_color = hint_color or "rgb"

    def rank(s: CandidateScore) -> tuple[bool, bool, float, int]:
        c = s.candidate
        return (c.color == prefer_color, c.norm == hint_norm, s.value, -order[c])

    chosen = max(contenders, key=rank).candidate
    if best.value <= 0:
        return chosen, (
            "Every candidate scores 0 on these images, so the measurement cannot decide: "
            "chosen from the graph hints and the usual convention (CHECK)."
        )
    basis = ["the graph hints"] if hint_color or hint_norm else []
    if not hint_color:
        basis.append("RGB as the common channel order")
    basis.append("the score")
    group = "; ".join(s.candidate.label for s in contenders)
    return chosen, (
        f"Within noise of the best (not significantly worse): {group}. Among these, "
        f"{', then '.join(basis)} decided."
    )


# --- writing YAML -----------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        if abs(value - 1 / 255) < 1e-12:
            return repr(1 / 255)
        return repr(round(value, 6))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in value.items()) + "}"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to the config's folder when near it (at most ``MAX_UP`` folders up,
    and not only the root in common), else absolute."""
    path, base = path.resolve(), base.resolve()
    try:
        rel = Path(os.path.relpath(path, base))
        common = Path(os.path.commonpath([path, base]))
    except ValueError:  # another drive
        return str(path)
    if sum(p == ".." for p in rel.parts) > MAX_UP or common == Path(common.anchor):
        return str(path)
    return rel.as_posix()


class _Writer:
    """Builds the YAML text line by line; comments start at a fixed column."""

    COLUMN = 40
    WIDTH = 100

    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str, indent: int = 0) -> None:
        pad = " " * indent
        for para in text.split("\n"):
            wrapped = textwrap.wrap(para, self.WIDTH - indent - 2) or [""]
            self.lines.extend(f"{pad}# {w}".rstrip() for w in wrapped)

    def line(self, text: str, note: str | None = None, indent: int = 0) -> None:
        """``text`` with ``note`` beside it, or above it when it does not fit on the line."""
        body = " " * indent + text
        if not note:
            self.lines.append(body)
            return
        gap = max(self.COLUMN - len(body), 2)
        if len(body) + gap + 2 + len(note) > self.WIDTH:
            self.comment(note, indent)
            self.lines.append(body)
        else:
            self.lines.append(f"{body}{' ' * gap}# {note}")

    def blank(self) -> None:
        self.lines.append("")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


@dataclass
class _Choices:
    """Everything the YAML is written from."""

    model: Path
    guess: ModelGuess
    data: _Data
    geometry: list[Field]
    chosen: Candidate
    reason: str
    measurement: Measurement | None
    hints: list[str]
    limit: int | None
    target: str


def _render(c: _Choices, base: Path, name: str) -> str:
    w = _Writer()
    guess, data, inp = c.guess, c.data, c.guess.input
    outs = ", ".join(
        f"'{o.name}' {describe_shape(guess.output_shapes[o.name])}" for o in guess.outputs
    )
    w.comment(
        f"doctor.yaml written by `quantdoctor init` (quantdoctor {__version__}) for "
        f"{c.model.name}. Every choice is commented with why; CHECK marks guesses to verify. "
        f"Run: quantdoctor diagnose {name}"
    )
    w.comment(
        f"Model: input '{inp.name}' {describe_shape(inp.shape)} {inp.dtype} "
        f"({guess.layout.upper()}); output {outs}"
    )
    transpose = (
        f"; Transpose {guess.input_transpose} (the graph reorders the input)"
        if guess.input_transpose
        else ""
    )
    inside = "" if guess.normalization else "; no normalization inside the graph"
    counts = Counter(guess.first_ops)  # keeps the graph's order
    ops = ", ".join(op if k == 1 else f"{op} x{k}" for op, k in counts.items())
    w.comment(f"First ops on the input: {ops or 'none'}{transpose}{inside}")
    if "CHECK" in guess.input_hw_reason:
        w.comment(f"Note: {guess.input_hw_reason}")
    for h in c.hints:
        w.comment(f"Hint: {h}")
    for n in guess.notes:
        w.comment(f"Note: {n}")
    w.line(f"model: {_scalar(_rel(c.model, base))}")
    w.line(f"task: {guess.task}", guess.task_reason)
    w.blank()

    w.line("data:")
    if data.calibration is None:
        cal_path, cal_note = data.images, (
            f"{CALIBRATION_IMAGES} of the evaluation images (seeded); give an independent "
            "folder with --calibration"
        )
    else:
        cal_path, cal_note = data.calibration, f"{CALIBRATION_IMAGES} images, seeded sample"
    w.line(
        f"calibration: {{path: {_scalar(_rel(cal_path, base))}, limit: {CALIBRATION_IMAGES}}}",
        cal_note,
        indent=2,
    )
    w.line("evaluation:", indent=2)
    w.line(
        f"path: {_scalar(_rel(data.images, base))}",
        f"{len(data.source.records)} labelled images",
        indent=4,
    )
    if data.labels is not None:
        kind = {
            "labels file": "lines 'filename,label' or 'filename label'",
            "YOLO txt folder": "YOLO txt files, one per image (no file = no objects)",
            "COCO json": "COCO annotations",
        }[data.labels_kind]
        w.line(f"labels: {_scalar(_rel(data.labels, base))}", kind, indent=4)
    else:
        w.comment("labels: one sub-folder per class (class index = sorted folder name)", 4)
    if data.class_names is not None:
        w.line(f"class_names: {_scalar(_rel(data.class_names, base))}", indent=4)
    if c.limit is not None:
        w.line(f"limit: {c.limit}", "a seeded sample; remove it to use every image", indent=4)
    w.blank()

    w.line("preprocess:", "what the HOST does before the accelerator")
    _normalization_comment(w, c)
    color_note = "channel order fed to the model" + (
        " (BGR, as OpenCV reads images)" if c.chosen.color == "bgr" else ""
    )
    w.line(f"color: {c.chosen.color}", color_note, indent=2)
    for key, value, note in c.geometry:
        w.line(f"{key}: {_scalar(value)}", note, indent=2)
    values = c.chosen.yaml_values()
    if "scale" in values:
        w.line(f"scale: {_scalar(values['scale'])}", "1/255", indent=2)
    if "mean" in values:
        w.line(f"mean: {_scalar(values['mean'])}", "in the channel order fed", indent=2)
        w.line(f"std: {_scalar(values['std'])}", indent=2)
    if not values:
        w.comment("no scale/mean/std: the model takes raw 0..255 pixels", 2)
    w.line(f"layout: {guess.layout}", guess.layout_reason, indent=2)
    w.blank()

    w.line("postprocess:", "what the HOST does after the accelerator")
    for key, value, note in _postprocess(guess):
        w.line(f"{key}: {_scalar(value)}", note, indent=2)
    if guess.task == "classification":
        w.line("metric: top1", "or top5")
    else:
        w.line("metric: map", "COCO mAP@.5:.95 in percent points; or map50")
    target_note = {
        "hailo8": "the Hailo-8 scheme: uint8 per-tensor activations, int8 per-tensor weights; "
        "int8 = per-channel int8 weights as ONNX Runtime / TensorRT / TFLite",
        "int8": "per-channel int8 weights, 8-bit activations (ONNX Runtime / TensorRT / "
        "TFLite); hailo8 = the Hailo-8 scheme",
    }[c.target]
    w.line(f"target: {c.target}", target_note)
    w.line("recipe:", "applied to the model in this order")
    w.line(
        f"- calibration: {{method: minmax, size: {CALIBRATION_IMAGES}}}",
        f"ranges from {CALIBRATION_IMAGES} images, the usual size",
        indent=2,
    )
    w.line("report: {dir: report}", "findings.json and index.html, relative to this file")
    return w.text()


def _normalization_comment(w: _Writer, c: _Choices) -> None:
    m = c.measurement
    if m is None:
        w.comment(f"normalization {c.chosen.label}: {c.reason}", 2)
        return
    test = f", {m.test}" if m.test else ""
    w.comment(
        f"Normalization measured: {m.metric} of the float model on {m.images} labelled images "
        f"(seeded sample) for each host preprocessing; in brackets the difference to the best "
        f"and the p-value of a paired test{test}:",
        2,
    )
    width = max(len(s.candidate.label) for s in m.scores)
    for s in sorted(m.scores, key=lambda s: -s.value):
        mark = "  <- chosen" if s.candidate == c.chosen else ""
        vs = f"  ({s.versus_best[0]:+.1f}, p = {s.versus_best[1]:.2g})" if s.versus_best else ""
        w.comment(f"  {s.candidate.label:<{width}}  {s.value:6.2f}{vs}{mark}", 2)
    w.comment(c.reason, 2)


# --- the public API ---------------------------------------------------------------------------


def scaffold(
    model: str | Path,
    images: str | Path,
    labels: str | Path | None = None,
    *,
    calibration: str | Path | None = None,
    class_names: str | Path | None = None,
    output: str | Path | None = None,
    limit: int | None = None,
    target: str = "hailo8",
    measure: bool = True,
    progress: Progress | None = None,
) -> InitResult:
    """Inspect ``model``, find the labels of ``images``, measure the normalization and build
    a commented doctor.yaml (validated before it is returned).

    ``output`` is where the YAML will be written: relative paths in it resolve against its
    folder (the current directory when None, i.e. printed to stdout). ``limit`` caps the
    evaluation images (seeded sample); ``measure=False`` skips the measurement and decides the
    normalization from the graph alone.

    >>> result = scaffold("model.onnx", "val/", output="doctor.yaml")   # doctest: +SKIP
    >>> result.chosen.label, result.measurement.best.value              # doctest: +SKIP
    ('rgb (x - 127.5) / 127.5', 84.0)
    """
    if target not in ("hailo8", "int8"):
        raise ConfigError(f"--target {target!r} is unknown; use hailo8 or int8")
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit {limit} must be a positive number of images")
    model_path = Path(model).resolve()
    base = Path(output).resolve().parent if output is not None else Path.cwd()
    guess = guess_model(load_model(model_path), model_path.stem)
    data = _resolve_data(
        guess,
        Path(images).resolve(),
        Path(labels).resolve() if labels is not None else None,
        Path(class_names).resolve() if class_names is not None else None,
        Path(calibration).resolve() if calibration is not None else None,
    )
    geometry = _geometry(guess, data)
    hint_norm, hint_color, hints = _hints(guess)
    notes = [
        f"model: input '{guess.input.name}' {describe_shape(guess.input.shape)} "
        f"{guess.layout.upper()}; task {guess.task}: {guess.task_reason}",
        *([f"decoder {guess.decoder}: {guess.decoder_reason}"] if guess.task == "detection"
          else []),
        f"data: {len(data.source.records)} labelled images ({data.labels_kind})",
        *(f"hint: {h}" for h in hints),
        *data.source.notes,
        *guess.notes,
        *([guess.input_hw_reason] if "CHECK" in guess.input_hw_reason else []),
    ]
    measurement = None
    if measure:
        measurement = _measure(
            guess, data, {k: v for k, v, _ in geometry}, model_path, progress or NullProgress()
        )
        chosen, reason = _choose(guess.task, measurement.scores, hint_norm, hint_color)
        best = measurement.best
        notes.append(
            f"measured {len(measurement.scores)} input normalizations on {measurement.images} "
            f"images in {measurement.seconds:.1f} s: best {best.candidate.label} "
            f"({measurement.metric} {best.value:.1f}); chose {chosen.label}. {reason}"
        )
    else:
        chosen, reason = _unmeasured(guess.task, hint_norm, hint_color)
        notes.append(f"normalization {chosen.label}: {reason}")
    choices = _Choices(
        model_path, guess, data, geometry, chosen, reason, measurement, hints, limit, target
    )
    text = _render(choices, base, Path(output).name if output is not None else "doctor.yaml")
    config = validate(text, base)
    return InitResult(text, config, guess, chosen, reason, measurement, notes)


def _unmeasured(task: str, norm: str | None, color: str | None) -> tuple[Candidate, str]:
    order = candidates(task)
    want = color or "rgb"
    chosen = next(
        (c for c in order if (norm is None or c.norm == norm) and c.color == want), order[0]
    )
    if norm or color:
        return chosen, "not measured (--no-measure): chosen from the graph hints"
    return chosen, (
        "not measured (--no-measure) and no hint in the graph: the most common convention for "
        "this task (CHECK, or run init without --no-measure)"
    )


def validate(text: str, base: Path) -> DoctorConfig:
    """Parse the written YAML as ``load_config`` would (paths against ``base``); a failure
    here is a bug in init, reported as such."""
    try:
        raw = yaml.safe_load(text)
        config = parse_config(raw, base_dir=base, where="init")
    except (yaml.YAMLError, ConfigError) as err:
        raise QuantdoctorError(
            f"quantdoctor init wrote an invalid config ({err}); please report this bug"
        ) from None
    for p in (config.model, config.data.evaluation and config.data.evaluation.path):
        if p is not None and not Path(p).exists():
            raise QuantdoctorError(f"quantdoctor init wrote a path that does not exist: {p}")
    return config


def init_config(
    model: str | Path,
    images: str | Path,
    labels: str | Path | None = None,
    **options: Any,
) -> str:
    """The doctor.yaml text for ``model`` on ``images`` (see :func:`scaffold` for options).

    >>> text = init_config("model.onnx", "val/", labels="val_labels.txt")  # doctest: +SKIP
    >>> Path("doctor.yaml").write_text(text)                               # doctest: +SKIP
    """
    return scaffold(model, images, labels, **options).text


def write_config_file(text: str, path: str | Path, force: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically; refuse to replace a file unless ``force``."""
    path = Path(path)
    check_writable(path, force)
    return write_atomic(path, text)


def check_writable(path: str | Path, force: bool) -> None:
    """Fail before any work when ``-o`` cannot be written: a folder or device in the way, an
    existing file without ``--force``, a missing, read-only or full folder."""
    check_output_file(Path(path), force)
