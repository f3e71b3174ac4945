"""Object detection: YOLO-family decoders, class-aware NMS, COCO mAP (faster-coco-eval).

Detections are kept per image in original-image pixels, so the paired bootstrap of ΔmAP
re-scores resampled image sets without running any model again.

>>> boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
>>> nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5).tolist()
[0, 2]
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import QuantdoctorError
from .base import Task, TaskScores, load_plugin, plugin_meta

if TYPE_CHECKING:
    from ..config import DoctorConfig, PostprocessConfig
    from ..data import BoxLabels, ImageSet

log = logging.getLogger(__name__)

#: Bootstrap resamples for mAP (each re-runs only COCO accumulate: ~5 ms).
N_BOOTSTRAP_MAP = 500


@dataclass(frozen=True)
class Detections:
    """Detections of one image: boxes [k, 4] x1 y1 x2 y2 in original pixels."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1 y1 x2 y2 boxes."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


#: Candidates entering NMS per image, best scores first (as YOLO implementations cap them):
#: keeps NMS fast when a broken pipeline makes every anchor pass the threshold.
MAX_NMS_CANDIDATES = 3000


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None
) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        iou = box_iou(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou: float,
    agnostic: bool,
    max_keep: int | None = None,
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes are offset so that they never overlap."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if agnostic:
        return nms(boxes, scores, iou, max_keep)
    offset = classes[:, None].astype(np.float64) * (boxes.max() + 1.0)
    return nms(boxes + offset, scores, iou, max_keep)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def yolox_grid(input_hw: tuple[int, int], strides: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets [A, 2] (x, y) and strides [A] of YOLOX's flattened heads, in order."""
    grids, strs = [], []
    for s in strides:
        gh, gw = input_hw[0] // s, input_hw[1] // s
        yv, xv = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xv, yv], axis=-1).reshape(-1, 2))
        strs.append(np.full(gh * gw, s))
    return np.concatenate(grids).astype(np.float64), np.concatenate(strs).astype(np.float64)


class DetectionTask(Task):
    """Decode YOLOX / YOLOv5 / YOLOv8 heads (or a Python plugin), NMS, COCO mAP."""

    name = "detection"

    def __init__(
        self,
        post: PostprocessConfig,
        metric: str = "map",
        input_hw: tuple[int, int] | None = None,
        plugin: Callable[..., Any] | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.post = post
        self.metric = metric
        self.input_hw = input_hw
        self.plugin = plugin
        self.num_classes = num_classes

    @classmethod
    def from_config(
        cls, config: DoctorConfig, post: PostprocessConfig | None = None
    ) -> DetectionTask:
        post = post or config.postprocess
        plugin = None
        if post.type == "python":
            assert post.function
            plugin = load_plugin(post.function, config.source.parent if config.source else None)
        size = config.preprocess.letterbox.size if config.preprocess.letterbox else None
        return cls(post, config.metric or "map", size, plugin)

    # --- decoding --------------------------------------------------------------------------
    def _head(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        name = self.post.output or next(iter(outputs))
        if name not in outputs:
            raise QuantdoctorError(
                f"postprocess.output {name!r} is not a model output; outputs: {', '.join(outputs)}"
            )
        return outputs[name]

    def _candidates(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's head [A, ...] → boxes x1y1x2y2 (model-input pixels), score, class."""
        kind = self.post.type
        if kind == "yolov8":
            pred = pred.T  # [4 + C, A] → [A, 4 + C]
        pred = pred.astype(np.float64)
        act = _sigmoid if self.post.activation == "sigmoid" else (lambda v: v)
        if kind == "yolox":
            assert self.input_hw is not None
            grid, stride = self._grid(len(pred))
            xy = (pred[:, :2] + grid) * stride[:, None]
            wh = np.exp(pred[:, 2:4]) * stride[:, None]
        else:
            xy, wh = pred[:, :2], pred[:, 2:4]
        if kind == "yolov8":
            cls_scores = act(pred[:, 4:])
            obj = 1.0
        else:
            obj, cls_scores = act(pred[:, 4]), act(pred[:, 5:])
        best = cls_scores.argmax(axis=1)
        score = cls_scores[np.arange(len(pred)), best] * obj
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
        return boxes, score, best

    def _grid(self, anchors: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.input_hw is not None
        key = (self.input_hw, tuple(self.post.strides))
        if getattr(self, "_grid_key", None) != key:
            self._grid_cache = yolox_grid(self.input_hw, self.post.strides)
            self._grid_key = key
        grid, stride = self._grid_cache
        if len(grid) != anchors:
            raise QuantdoctorError(
                f"the model output has {anchors} anchors but strides {self.post.strides} on a "
                f"{self.input_hw[0]}x{self.input_hw[1]} input give {len(grid)}; fix "
                "postprocess.strides or the letterbox size"
            )
        return grid, stride

    def decode(self, outputs: dict[str, np.ndarray], images: ImageSet) -> list[Detections]:
        """Detections per image, in original-image pixels."""
        if self.plugin is not None:
            return [self._plugin(outputs, images, i) for i in range(len(images))]
        head = self._head(outputs)
        if head.ndim != 3:
            raise QuantdoctorError(
                f"postprocess.type {self.post.type} expects a [N, anchors, values] output, got "
                f"shape {list(head.shape)}"
            )
        out = []
        for i in range(len(images)):
            boxes, score, cls = self._candidates(head[i])
            keep = score >= self.post.conf_threshold
            boxes, score, cls = boxes[keep], score[keep], cls[keep]
            sel = batched_nms(
                boxes,
                score,
                cls,
                self.post.iou_threshold,
                self.post.class_agnostic,
                self.post.max_detections,
            )
            out.append(self._to_original(Detections(boxes[sel], score[sel], cls[sel]), images, i))
        return out

    @staticmethod
    def _to_original(d: Detections, images: ImageSet, i: int) -> Detections:
        meta = images.metas[i]
        (sy, sx), (top, left), (h, w) = meta.scale_hw, meta.pad_tl, meta.orig_hw
        b = d.boxes.copy()
        b[:, [0, 2]] = np.clip((b[:, [0, 2]] - left) / sx, 0, w)
        b[:, [1, 3]] = np.clip((b[:, [1, 3]] - top) / sy, 0, h)
        return Detections(b, d.scores, d.classes)

    def _plugin(self, outputs: dict[str, np.ndarray], images: ImageSet, i: int) -> Detections:
        meta = plugin_meta(images, i)
        try:
            result = self.plugin({k: v[i] for k, v in outputs.items()}, meta)  # type: ignore[misc]
        except Exception as err:
            raise QuantdoctorError(
                f"the postprocess plugin failed on image {meta['path']}: {err!r}"
            ) from None
        try:
            boxes, scores, classes = (np.asarray(r) for r in result)
        except (TypeError, ValueError):
            raise QuantdoctorError(
                f"the postprocess plugin returned {type(result).__name__} for image "
                f"{meta['path']}; a detector's plugin returns (boxes [N, 4], scores [N], "
                "classes [N])"
            ) from None
        n = len(scores) if scores.ndim == 1 else -1
        if boxes.ndim != 2 or boxes.shape[1:] != (4,) or n != len(boxes) or classes.shape != (n,):
            raise QuantdoctorError(
                f"the postprocess plugin returned shapes boxes {list(boxes.shape)}, scores "
                f"{list(scores.shape)}, classes {list(classes.shape)} for image {meta['path']}; "
                "expected boxes [N, 4] (x1 y1 x2 y2, original pixels), scores [N], classes [N]"
            )
        return Detections(
            boxes.astype(np.float64), scores.astype(np.float64), classes.astype(np.int64)
        )

    def score(self, outputs: dict[str, np.ndarray], images: ImageSet) -> DetectionScores:
        if images.boxes is None:
            raise QuantdoctorError("the evaluation images have no box labels")
        return DetectionScores(self.metric, self.decode(outputs, images), images.boxes)


# --- COCO evaluation -----------------------------------------------------------------------------


class CocoEvaluation:
    """COCO box evaluation of one context with faster-coco-eval, reusable for resamples.

    The per-image matching (the expensive part) runs once; a bootstrap resample only re-runs
    the library's C++ ``accumulate`` over the resampled per-image results (an image drawn
    twice counts twice), so ΔmAP CIs cost milliseconds per resample and no model runs."""

    def __init__(self, detections: list[Detections], truth: list[BoxLabels]) -> None:
        from faster_coco_eval import COCO, COCOeval_faster

        self.n = len(truth)
        num_classes = 1 + max(
            [int(t.classes.max()) for t in truth if len(t.classes)]
            + [int(d.classes.max()) for d in detections if len(d.classes)]
            + [0]
        )
        images, anns, dets = [], [], []
        ann_id = 1
        for img_id, (t, d) in enumerate(zip(truth, detections, strict=True), 1):
            images.append({"id": img_id, "height": t.image_hw[0], "width": t.image_hw[1]})
            for box, cls in zip(t.boxes, t.classes, strict=True):
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": img_id,
                        "category_id": int(cls) + 1,
                        "iscrowd": 0,
                        "bbox": [float(box[0]), float(box[1]), w, h],
                        "area": w * h,
                    }
                )
                ann_id += 1
            if len(d.scores):
                xywh = np.concatenate([d.boxes[:, :2], d.boxes[:, 2:] - d.boxes[:, :2]], axis=1)
                dets.append(
                    np.column_stack([np.full(len(d.scores), img_id), xywh, d.scores, d.classes + 1])
                )
        self.empty_truth = not anns
        self.empty_detections = not dets
        if self.empty_truth or self.empty_detections:
            return
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        gt.createIndex()
        dt = gt.loadRes(np.concatenate(dets))
        ev = COCOeval_faster(gt, dt, "bbox", print_function=log.debug, separate_eval=True)
        # Only what mAP@.5:.95 and mAP@.5 need: all areas, 100 detections per image.
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        ev.params.maxDets = [100]
        ev.evaluate()
        self._ev = ev
        # evalImgs are laid out category-major, then area range, then image (as pycocotools).
        self._per_image = np.empty(len(ev._evalImgs_cpp), dtype=object)
        self._per_image[:] = ev._evalImgs_cpp
        self._k = len(ev.params.catIds)
        self._a = len(ev.params.areaRng)

    def map(self, index: np.ndarray | None = None) -> tuple[float, float]:
        """(mAP@.5:.95, mAP@.5) over the images ``index`` (all when None; may repeat)."""
        if self.empty_truth:
            return float("nan"), float("nan")
        if self.empty_detections:
            return 0.0, 0.0
        from faster_coco_eval.core import faster_eval_api

        ev = self._ev
        idx = np.arange(self.n) if index is None else np.asarray(index, dtype=np.int64)
        base = (np.arange(self._k)[:, None] * self._a + np.arange(self._a)[None, :]) * self.n
        sel = (base[:, :, None] + idx[None, None, :]).ravel()
        params = copy.copy(ev._paramsEval)
        params.imgIds = list(range(len(idx)))
        ev.eval = faster_eval_api._C.COCOevalAccumulate(params, self._per_image[sel].tolist())
        ap = ev._summarize(1, areaRng="all", maxDets=100)
        ap50 = ev._summarize(1, iouThr=0.5, areaRng="all", maxDets=100)
        return float(max(ap, 0.0)), float(max(ap50, 0.0))


def coco_map(
    detections: list[Detections], truth: list[BoxLabels], index: np.ndarray | None = None
) -> tuple[float, float]:
    """(mAP@.5:.95, mAP@.5) with faster-coco-eval."""
    return CocoEvaluation(detections, truth).map(index)


@dataclass
class DetectionScores(TaskScores):
    """Per-image detections and ground truth of one context; the metric is COCO mAP."""

    metric: str
    detections: list[Detections]
    truth: list[BoxLabels]
    _value: float | None = field(default=None, repr=False)
    _resampled: dict[bytes, np.ndarray] = field(default_factory=dict, repr=False)
    _coco: CocoEvaluation | None = field(default=None, repr=False)
    n_bootstrap: int = N_BOOTSTRAP_MAP

    @property
    def coco(self) -> CocoEvaluation:
        if self._coco is None:
            self._coco = CocoEvaluation(self.detections, self.truth)
        return self._coco

    @property
    def n(self) -> int:  # type: ignore[override]
        return len(self.truth)

    def _pick(self, both: tuple[float, float]) -> float:
        """In percent, like top-k, so that differences and max_drop are in points."""
        return 100.0 * (both[1] if self.metric == "map50" else both[0])

    @property
    def value(self) -> float:
        if self._value is None:
            self._value = self._pick(self.coco.map())
        return self._value

    def values_for(self, index: np.ndarray) -> np.ndarray:
        # The CI and every paired comparison use the same seeded resamples: score them once.
        key = hashlib.sha1(index.tobytes()).digest() + bytes(str(index.shape), "ascii")
        if key not in self._resampled:
            self._resampled[key] = np.asarray([self._pick(self.coco.map(row)) for row in index])
        return self._resampled[key]

    def agreement(self, other: TaskScores, score_threshold: float = 0.3) -> tuple[str, float, str]:
        """Mean per-image F1 between the two contexts' confident detections (same class,
        IoU >= 0.5, greedy by score)."""
        assert isinstance(other, DetectionScores)
        f1s = []
        for a, b in zip(self.detections, other.detections, strict=True):
            ka, kb = a.scores >= score_threshold, b.scores >= score_threshold
            ba, bb, ca, cb = a.boxes[ka], b.boxes[kb], a.classes[ka], b.classes[kb]
            if len(ba) == 0 and len(bb) == 0:
                f1s.append(1.0)
                continue
            if len(ba) == 0 or len(bb) == 0:
                f1s.append(0.0)
                continue
            iou = box_iou(ba, bb) * (ca[:, None] == cb[None, :])
            matched, used = 0, set()
            for i in range(len(ba)):
                j = int(np.argmax(np.where([k not in used for k in range(len(bb))], iou[i], -1)))
                if iou[i, j] >= 0.5 and j not in used:
                    used.add(j)
                    matched += 1
            f1s.append(2 * matched / (len(ba) + len(bb)))
        return (
            "detection_agreement_f1",
            float(np.mean(f1s) * 100.0) if f1s else float("nan"),
            f"two-way: mean per-image F1 between the two contexts' detections with score >= "
            f"{score_threshold} (same class, IoU >= 0.5); it says nothing about accuracy "
            "against ground truth",
        )
