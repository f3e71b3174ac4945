"""The built-in demo: a small CNN trained on scikit-learn's digits, its images written out as
PNG files, one classic mistake injected into the pipeline, and a commented doctor.yaml.

The model and the images ship with the package (``digits_cnn.onnx`` and ``digits.npz``, made
by ``examples/train_demo_model.py``), so the demo runs offline with the core install only:
no torch, no scikit-learn.

>>> from pathlib import Path
>>> from quantdoctor.demo import prepare_demo
>>> config = prepare_demo(Path("quantdoctor-demo"), "double_normalization")  # doctest: +SKIP
>>> import quantdoctor
>>> quantdoctor.diagnose(quantdoctor.load_config(config)).top_suspect.id    # doctest: +SKIP
'pipeline.normalization_duplicated'
"""

from __future__ import annotations

import io
import shutil
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import QuantdoctorError
from ..files import probe_folder

#: The mistakes the demo can inject, and what each one is.
MISTAKES: dict[str, str] = {
    "double_normalization": (
        "the host normalizes the pixels with mean/std and the recipe's normalization "
        "normalizes them again"
    ),
    "single_calibration_image": "the calibration folder holds one image (a 2), copied 64 times",
    "none": "a correct pipeline, nothing injected",
}
#: What each mistake should make ``diagnose`` name as the top suspect (None: nothing
#: specific is expected; the pipeline is correct).
EXPECTED_TOP_SUSPECT: dict[str, tuple[str, ...] | None] = {
    "double_normalization": ("pipeline.normalization_duplicated",),
    "single_calibration_image": ("calibration.too_few", "calibration.duplicates"),
    "none": None,
}
MODEL_FILE = "digits_cnn.onnx"
DATA_FILE = "digits.npz"
CONFIG_FILE = "doctor.yaml"
#: Written into the demo folder: a folder with it may be refreshed by the next demo run.
MARKER = ".quantdoctor-demo"
#: Split codes of digits.npz (see examples/train_demo_model.py).
CALIBRATION, EVALUATION = 1, 2
#: How many copies of one image the single_calibration_image mistake writes (the recipe's
#: calibration size, so that the set looks complete by its file count).
COPIES = 64
#: The single_calibration_image mistake copies the first calibration image of this digit:
#: its ranges cost the shipped model about 25 points of hailo8 top-1 (measured: 73% instead
#: of 98%; most other single digits happen to cost nothing on this tiny model), so the demo
#: shows the damage as well as the cause.
SINGLE_DIGIT = 2

_HEADER = """\
# quantdoctor demo, written by `quantdoctor demo`. Run it again with
#   quantdoctor diagnose {config}
#
# The model: a small CNN (3 x Conv+BatchNorm+ReLU, Linear) trained on scikit-learn's digits,
# 8x8 greyscale images of the digits 0-9 upscaled to 32x32 on the host, normalized as
# (x - 127.5) / 127.5 of the 0..255 pixels; float top-1 {reference:.2f}% on the evaluation images.
#
{mistake}

"""

_DATA = """\
model: {model}
task: classification
data:
  calibration: {{path: calibration, limit: 64}}   # unlabelled images, one folder
  evaluation: {{path: evaluation}}                # one sub-folder per class: 0 ... 9
"""

_PRE_CORRECT = """\
preprocess:                  # what the HOST does before the accelerator
  color: rgb                 # greyscale PNGs are decoded as three equal channels
  resize: {size: 32, interpolation: bilinear}
  # No mean/std here: the host feeds 0..255 pixels (8-bit, as the accelerator takes them);
  # the recipe's normalization below is folded into the model as its first layer.
"""

_PRE_DOUBLE = """\
preprocess:                  # what the HOST does before the accelerator
  color: rgb                 # greyscale PNGs are decoded as three equal channels
  resize: {size: 32, interpolation: bilinear}
  # MISTAKE (double_normalization): the host normalizes here ...
  mean: [127.5, 127.5, 127.5]
  std: [127.5, 127.5, 127.5]
"""

_REST = """\
metric: top1
reference_accuracy: {reference:.2f}      # the float top-1 measured when the model was trained
target: hailo8                 # uint8 activations, int8 weights, per tensor
recipe:
  # (x - 127.5) / 127.5 as the model was trained, folded into the model as its first layer{norm}
  - normalization: {{mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5]}}
  - calibration: {{method: minmax, size: 64}}{cal}
report: {{dir: report}}
"""

_NORM_NOTE = """
  # MISTAKE (double_normalization): ... and the recipe normalizes again: the model sees
  # (x - 127.5) / 127.5 of values already in [-1, 1]. Keep one of the two."""

_CAL_NOTE = """
  # MISTAKE (single_calibration_image): calibration/ holds one image of a 2 under 64
  # names, so the activation ranges are fitted to a single digit."""


def _load_data() -> dict[str, np.ndarray]:
    raw = resources.files(__name__).joinpath(DATA_FILE).read_bytes()
    with np.load(io.BytesIO(raw)) as npz:
        return {k: npz[k] for k in npz.files}


def _check_folder(folder: Path) -> None:
    """Refuse to write into a non-empty folder that an earlier demo run did not make."""
    if folder.exists() and not folder.is_dir():
        raise QuantdoctorError(f"{folder} exists and is not a folder; choose another --dir")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise QuantdoctorError(
            f"{folder} is not empty and was not made by `quantdoctor demo`; choose another "
            "--dir (an empty or new folder)"
        )


def _save(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels, "L").save(path)


def prepare_demo(folder: Path, mistake: str = "double_normalization") -> Path:
    """Write the demo into ``folder`` and return the path of its doctor.yaml.

    ``folder`` gets ``digits_cnn.onnx``, ``calibration/`` (128 PNGs, or one image copied 64
    times for ``single_calibration_image``), ``evaluation/<digit>/`` (600 labelled PNGs) and a
    commented ``doctor.yaml`` whose report goes to ``folder/report``. ``mistake`` is one of
    :data:`MISTAKES`. A folder from an earlier demo run is refreshed; any other non-empty
    folder is refused (:class:`~quantdoctor.errors.QuantdoctorError`).

    >>> config = prepare_demo(Path("demo"), "none")   # doctest: +SKIP
    >>> quantdoctor.diagnose(quantdoctor.load_config(config))  # doctest: +SKIP
    """
    if mistake not in MISTAKES:
        raise QuantdoctorError(
            f"unknown demo mistake {mistake!r}; use one of {', '.join(MISTAKES)}"
        )
    folder = Path(folder)
    _check_folder(folder)
    probe_folder(folder, "the demo folder", "choose another --dir")  # read-only, full disk
    (folder / MARKER).write_text("made by `quantdoctor demo`; the next demo run may replace it\n")
    # A previous run may have injected another mistake: start the image folders afresh.
    for sub in ("calibration", "evaluation"):
        shutil.rmtree(folder / sub, ignore_errors=True)

    data = _load_data()
    images, targets, split = data["images"], data["targets"], data["split"]
    reference = float(data["reference_top1"])

    calibration = folder / "calibration"
    calibration.mkdir()
    cal_index = np.flatnonzero(split == CALIBRATION)
    if mistake == "single_calibration_image":
        # The same file under 64 names: a folder that looks full but holds one scene.
        one = int(cal_index[targets[cal_index] == SINGLE_DIGIT][0])
        first = calibration / f"{one:04d}.png"
        _save(images[one], first)
        for i in range(1, COPIES):
            shutil.copyfile(first, calibration / f"{one:04d}_copy{i:02d}.png")
    else:
        for i in cal_index:
            _save(images[i], calibration / f"{i:04d}.png")
    for i in np.flatnonzero(split == EVALUATION):
        cls = folder / "evaluation" / str(int(targets[i]))
        cls.mkdir(parents=True, exist_ok=True)
        _save(images[i], cls / f"{i:04d}.png")

    model = resources.files(__name__).joinpath(MODEL_FILE).read_bytes()
    (folder / MODEL_FILE).write_bytes(model)

    config = folder / CONFIG_FILE
    what = f"Injected mistake: {mistake}: {MISTAKES[mistake]}."
    if mistake != "none":
        what += " Look for MISTAKE below."
    text = (
        _HEADER.format(
            config=config,
            reference=reference,
            mistake=textwrap.fill(what, 92, initial_indent="# ", subsequent_indent="# "),
        )
        + _DATA.format(model=MODEL_FILE)
        + (_PRE_DOUBLE if mistake == "double_normalization" else _PRE_CORRECT)
        + _REST.format(
            reference=reference,
            norm=_NORM_NOTE if mistake == "double_normalization" else "",
            cal=_CAL_NOTE if mistake == "single_calibration_image" else "",
        )
    )
    config.write_text(text, encoding="utf-8")
    return config


__all__ = ["EXPECTED_TOP_SUSPECT", "MISTAKES", "prepare_demo"]
