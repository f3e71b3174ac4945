"""Image sources, label formats, decoding and the host preprocessing ops."""

from .imageset import ImageSet, load_images
from .preprocess import ImageMeta, Preprocessor
from .sources import (
    BoxLabels,
    ImageRecord,
    LabeledSource,
    list_images,
    read_classification_source,
    read_detection_source,
)

__all__ = [
    "BoxLabels",
    "ImageMeta",
    "ImageRecord",
    "ImageSet",
    "LabeledSource",
    "Preprocessor",
    "list_images",
    "load_images",
    "read_classification_source",
    "read_detection_source",
]
