from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantdoctor.config import PreprocessConfig
from quantdoctor.data import Preprocessor, load_images, read_classification_source
from quantdoctor.data.decode import decode_rgb
from quantdoctor.data.sources import ImageRecord, list_images
from quantdoctor.errors import DataError


def _img(
    path: Path, mode: str = "RGB", size: tuple[int, int] = (10, 6), color: object = 100
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def test_class_folders(tmp_path: Path) -> None:
    _img(tmp_path / "cat" / "a.png")
    _img(tmp_path / "dog" / "sub" / "b.jpg")  # searched recursively
    (tmp_path / "dog" / "readme.txt").write_text("ignored")
    src = read_classification_source(tmp_path)
    assert src.class_names == ["cat", "dog"]
    assert [(r.path.name, r.label) for r in src.records] == [("a.png", 0), ("b.jpg", 1)]


@pytest.mark.parametrize("sep", [",", " ", "\t"])
def test_labels_file_with_indices_and_names(tmp_path: Path, sep: str) -> None:
    _img(tmp_path / "x.png")
    _img(tmp_path / "y.png")
    names = tmp_path / "names.txt"
    names.write_text("zero\none\ntwo\n")
    labels = tmp_path / "labels.txt"
    labels.write_text(f"# comment\nx.png{sep}2\ny.png{sep}one\n")
    src = read_classification_source(tmp_path, labels, names)
    assert [r.label for r in src.records] == [2, 1]
    assert src.class_names == ["zero", "one", "two"]


def test_labels_file_errors(tmp_path: Path) -> None:
    _img(tmp_path / "x.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("x.png cat\n")
    with pytest.raises(DataError, match="unknown class name 'cat'"):
        read_classification_source(tmp_path, labels)
    labels.write_text("missing.png 1\n")
    with pytest.raises(DataError, match="not in"):
        read_classification_source(tmp_path, labels)


def test_flat_folder_without_labels_is_refused(tmp_path: Path) -> None:
    _img(tmp_path / "x.png")
    with pytest.raises(DataError, match="cannot tell the labels"):
        read_classification_source(tmp_path)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16", "1"])
def test_decode_any_mode_to_rgb(tmp_path: Path, mode: str) -> None:
    ext = "tif" if mode in ("CMYK", "I;16") else "png"
    path = _img(tmp_path / f"a.{ext}", mode, color=1)
    img = decode_rgb(path)
    assert img.mode == "RGB" and img.size == (10, 6)


def test_resize_short_side_and_center_crop() -> None:
    pre = Preprocessor(PreprocessConfig(resize={"short_side": 8}, center_crop=6))
    pixels, meta = pre.geometry(Image.new("RGB", (20, 10)))
    assert pixels.shape == (6, 6, 3)
    assert meta.orig_hw == (10, 20) and meta.scale_hw == (0.8, 0.8)
    assert meta.pad_tl == (-1, -5)  # crop offsets in model-input pixels


@pytest.mark.parametrize(("anchor", "pad_tl"), [("center", (4, 0)), ("top_left", (0, 0))])
def test_letterbox_keeps_aspect_and_records_the_mapping(
    anchor: str, pad_tl: tuple[int, int]
) -> None:
    pre = Preprocessor(PreprocessConfig(letterbox={"size": 16, "anchor": anchor, "pad": 114}))
    pixels, meta = pre.geometry(Image.new("RGB", (32, 16), (255, 0, 0)))
    assert pixels.shape == (16, 16, 3)
    assert meta.scale_hw == (0.5, 0.5) and meta.pad_tl == pad_tl
    top = pad_tl[0]
    assert (pixels[top : top + 8, :, 0] == 255).all()
    assert (pixels[(8 if top == 0 else 0), :, 0] == 114).all()


def test_finish_color_scale_mean_std_layout() -> None:
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 0
    pre = Preprocessor(
        PreprocessConfig(color="bgr", scale=1 / 255, mean=[0.5, 0, 0], std=[0.5, 1, 1])
    )
    x = pre.finish(rgb)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    # BGR: channel 0 holds blue (0) → (0 - 0.5) / 0.5 = -1; channel 2 holds red (1.0)
    assert np.allclose(x[0, 0], -1.0) and np.allclose(x[0, 2], 1.0)
    nhwc = Preprocessor(PreprocessConfig(layout="nhwc")).finish(rgb)
    assert nhwc.shape == (1, 2, 2, 3)


def test_each_image_is_decoded_once_across_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import quantdoctor.data.imageset as imageset

    paths = [_img(tmp_path / f"{i}.png", size=(4, 4)) for i in range(4)]
    calls: list[Path] = []
    real = imageset.decode_rgb
    monkeypatch.setattr(imageset, "decode_rgb", lambda p: calls.append(p) or real(p))
    cache: dict = {}
    pre = Preprocessor(PreprocessConfig())
    a = load_images([ImageRecord(p, 0) for p in paths[:3]], pre, cache=cache)
    b = load_images([ImageRecord(p, 0) for p in paths[1:]], pre, cache=cache)
    assert len(a) == len(b) == 3
    assert sorted(calls) == sorted(paths)


def test_unreadable_images_are_listed_and_skipped(tmp_path: Path) -> None:
    good = [_img(tmp_path / f"{i}.png", size=(4, 4)) for i in range(30)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    images = load_images(
        [ImageRecord(p, 1) for p in [*good, bad]], Preprocessor(PreprocessConfig())
    )
    assert len(images) == 30
    assert images.failures[0][0] == bad
    assert images.labels is not None and (images.labels == 1).all()
