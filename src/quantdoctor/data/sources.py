"""Where images and their labels come from.

Classification labels are either class folders (``path/<class>/img``) or a
labels file of ``filename,label`` / ``filename label`` lines, the label being a
class index or a class name (names from ``class_names``: one per line, index =
line number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import DataError

# Extensions Pillow can open; anything else in an image folder is ignored.
IMAGE_EXTENSIONS = frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)


@dataclass(frozen=True)
class ImageRecord:
    """One image file and its class index (``None`` when unlabelled)."""

    path: Path
    label: int | None = None


@dataclass(frozen=True)
class LabeledSource:
    records: list[ImageRecord]
    class_names: list[str] | None


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
