"""Where images and their labels come from.

Classification labels are either class folders (``path/<class>/img``) or a
labels file of ``filename,label`` / ``filename label`` lines, the label being a
class index or a class name (names from ``class_names``: one per line, index =
line number).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .decode import oriented_hw

# Extensions Pillow can open; anything else in an image folder is ignored.
IMAGE_EXTENSIONS = frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)


@dataclass(frozen=True)
class BoxLabels:
    """Ground-truth objects of one image: boxes [k, 4] as x1 y1 x2 y2 in original pixels."""

    boxes: np.ndarray
    classes: np.ndarray
    image_hw: tuple[int, int]

    @staticmethod
    def empty(image_hw: tuple[int, int]) -> BoxLabels:
        return BoxLabels(np.zeros((0, 4), np.float64), np.zeros(0, np.int64), image_hw)


@dataclass(frozen=True)
class ImageRecord:
    """One image file and its label: a class index (classification), boxes (detection) or
    ``None`` when unlabelled."""

    path: Path
    label: int | None = None
    boxes: BoxLabels | None = None


@dataclass(frozen=True)
class LabeledSource:
    records: list[ImageRecord]
    class_names: list[str] | None
    notes: list[str] = field(default_factory=list)


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive), sorted; other files are ignored."""
    if not folder.exists():
        raise DataError(f"image folder {folder} does not exist; fix the data path in the config")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; data paths name folders of images")
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not files:
        raise DataError(
            f"no images found in {folder} (searched recursively for .jpg, .png, .bmp, ...); "
            "point the data path at a folder that contains images"
        )
    return files


def read_class_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"class_names file {path} not found; fix data.*.class_names")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n]


_LABEL_LINE = re.compile(r"^\s*(?P<file>.+?)\s*(?:,|\s)\s*(?P<label>[^,\s][^,]*?)\s*$")


def _read_labels_file(
    folder: Path, labels: Path, class_names: list[str] | None
) -> tuple[list[ImageRecord], list[str] | None]:
    if not labels.is_file():
        raise DataError(f"labels file {labels} not found; fix data.evaluation.labels")
    name_to_index = {n: i for i, n in enumerate(class_names or [])}
    records: list[ImageRecord] = []
    for lineno, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LABEL_LINE.match(line)
        if match is None:
            raise DataError(
                f"{labels}:{lineno}: expected 'filename,label' or 'filename label', got {line!r}"
            )
        file, label = match["file"], match["label"]
        if label.lstrip("-").isdigit():
            index = int(label)
        elif label in name_to_index:
            index = name_to_index[label]
        else:
            hint = "add it to class_names" if class_names else "give class_names to map names"
            raise DataError(f"{labels}:{lineno}: unknown class name {label!r}; {hint}")
        if index < 0 or (class_names and index >= len(class_names)):
            raise DataError(f"{labels}:{lineno}: class index {index} is out of range")
        records.append(ImageRecord((folder / file).resolve(), index))
    if not records:
        raise DataError(f"labels file {labels} has no label lines")
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {labels} are not in {folder}, "
            f"e.g. {missing[0].name}; fix the labels file or data path"
        )
    return records, class_names


def read_classification_source(
    folder: Path, labels: Path | None = None, class_names_file: Path | None = None
) -> LabeledSource:
    """Images of ``folder`` with class labels (from ``labels`` or from class sub-folders)."""
    class_names = read_class_names(class_names_file) if class_names_file else None
    if labels is not None:
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist; fix the data path")
        records, class_names = _read_labels_file(folder, labels, class_names)
        return LabeledSource(records, class_names)
    files = list_images(folder)
    classes = sorted({f.relative_to(folder).parts[0] for f in files if f.parent != folder})
    if not classes or any(f.parent == folder for f in files):
        raise DataError(
            f"cannot tell the labels of the images in {folder}: give data.evaluation.labels "
            "(a 'filename,label' file) or put the images in one sub-folder per class"
        )
    if class_names is None:
        class_names = classes
    index = {n: i for i, n in enumerate(class_names)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DataError(f"class folder(s) {unknown[:3]} of {folder} are not in class_names")
    records = [ImageRecord(f, index[f.relative_to(folder).parts[0]]) for f in files]
    return LabeledSource(records, class_names)


# --- detection --------------------------------------------------------------------------------

#: Boxes may overhang the image edge by this fraction (rounding in exported labels); more is
#: an error.
_EDGE_TOLERANCE = 0.02


def _image_hw(path: Path, exif_orientation: bool) -> tuple[int, int]:
    """(height, width) as decoded (YOLO boxes are normalised to it), from the header only;
    (0, 0) for a file that cannot be read, which load_images then lists with its reason."""
    try:
        with warnings.catch_warnings():  # oversized images: decode_rgb gives the reason
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return oriented_hw(path, exif_orientation)
    except Exception:
        return 0, 0


def _read_yolo_file(
    path: Path, hw: tuple[int, int], num_classes: int | None
) -> tuple[BoxLabels, int]:
    """Parse one YOLO txt (``class cx cy w h``, normalised); returns labels and how many boxes
    were clipped to the image."""
    h, w = hw
    boxes, classes, clipped = [], [], 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise DataError(
                f"{path}:{lineno}: expected 5 columns 'class cx cy w h', got {len(parts)}: "
                f"{line.strip()!r}"
            )
        try:
            cls = int(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:])
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: expected an integer class and 4 numbers, got {line.strip()!r}"
            ) from None
        if cls < 0 or (num_classes is not None and cls >= num_classes):
            top = f"0..{num_classes - 1}" if num_classes else ">= 0"
            raise DataError(
                f"{path}:{lineno}: class id {cls} is out of range ({top}); check the labels or "
                "class_names"
            )
        x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        t = _EDGE_TOLERANCE
        if bw <= 0 or bh <= 0 or x1 < -t or y1 < -t or x2 > 1 + t or y2 > 1 + t:
            raise DataError(
                f"{path}:{lineno}: box (cx {cx}, cy {cy}, w {bw}, h {bh}) lies outside the image "
                "(YOLO boxes are normalised to 0..1); fix the label"
            )
        if min(x1, y1) < 0 or max(x2, y2) > 1:
            clipped += 1
        box = np.clip([x1, y1, x2, y2], 0.0, 1.0) * [w, h, w, h]
        boxes.append(box)
        classes.append(cls)
    if not boxes:
        return BoxLabels.empty(hw), 0
    return BoxLabels(np.asarray(boxes), np.asarray(classes, np.int64), hw), clipped


def _read_coco_json(
    folder: Path, labels: Path, files: list[Path]
) -> tuple[list[ImageRecord], list[str]]:
    import json

    try:
        data = json.loads(labels.read_text(encoding="utf-8"))
        cats = sorted(data["categories"], key=lambda c: c["id"])
        images = {img["id"]: img for img in data["images"]}
        anns = data.get("annotations", [])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{labels}: not a COCO annotation file ({err!r})") from None
    # COCO category ids are sparse (1..90); models predict contiguous indices in id order.
    index = {c["id"]: i for i, c in enumerate(cats)}
    by_file = {Path(img["file_name"]).name: img for img in images.values()}
    per_image: dict[int, list[tuple[list[float], int]]] = {}
    for a in anns:
        if a.get("iscrowd", 0):
            continue
        if a["category_id"] not in index:
            raise DataError(f"{labels}: annotation {a.get('id')} has unknown category_id")
        per_image.setdefault(a["image_id"], []).append((a["bbox"], index[a["category_id"]]))
    records = []
    for f in files:
        img = by_file.get(f.name)
        if img is None:
            continue
        hw = (int(img["height"]), int(img["width"]))
        objs = per_image.get(img["id"], [])
        if objs:
            b = np.asarray([o[0] for o in objs], np.float64)
            boxes = np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)
            lab = BoxLabels(boxes, np.asarray([o[1] for o in objs], np.int64), hw)
        else:
            lab = BoxLabels.empty(hw)
        records.append(ImageRecord(f, boxes=lab))
    if not records:
        raise DataError(f"none of the images in {folder} is listed in {labels}")
    return records, [c["name"] for c in cats]


def read_detection_source(
    folder: Path,
    labels: Path | None,
    class_names_file: Path | None = None,
    num_classes: int | None = None,
    exif_orientation: bool = True,
) -> LabeledSource:
    """Images of ``folder`` with boxes from a folder of YOLO txt files (one per image, same
    stem; an image without a file has no objects) or a COCO json file.
    ``exif_orientation``: whether decoding turns images upright (it swaps the height and
    width that YOLO boxes are scaled to)."""
    files = list_images(folder)
    class_names = read_class_names(class_names_file) if class_names_file else None
    if labels is None:
        sibling = folder.parent / "labels"
        if not sibling.is_dir():
            raise DataError(
                f"no labels for the detection images in {folder}: set data.evaluation.labels to "
                "a folder of YOLO txt files or a COCO json file"
            )
        labels = sibling
    if not labels.exists():
        raise DataError(f"labels {labels} not found; fix data.evaluation.labels")
    if labels.is_file():
        records, names = _read_coco_json(folder, labels, files)
        return LabeledSource(records, class_names or names)
    limit = len(class_names) if class_names else num_classes
    records, missing, clipped = [], 0, 0
    for f in files:
        txt = labels / f.relative_to(folder).with_suffix(".txt")
        hw = _image_hw(f, exif_orientation)
        if txt.is_file():
            lab, n = _read_yolo_file(txt, hw, limit)
            clipped += n
        else:
            lab, missing = BoxLabels.empty(hw), missing + 1
        records.append(ImageRecord(f, boxes=lab))
    if missing == len(files):
        raise DataError(
            f"none of the {len(files)} images in {folder} has a label file in {labels} "
            "(expected <image stem>.txt); fix data.evaluation.labels"
        )
    notes = []
    if missing:
        notes.append(f"{missing} image(s) have no label file in {labels}: counted as no objects")
    if clipped:
        notes.append(f"{clipped} box(es) overhang the image edge slightly and were clipped")
    return LabeledSource(records, class_names, notes)
