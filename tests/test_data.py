from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import quantdoctor
from quantdoctor.config import PreprocessConfig
from quantdoctor.data import (
    Preprocessor,
    load_images,
    read_classification_source,
    read_detection_source,
)
from quantdoctor.data.decode import MAX_PIXELS_ENV, UnreadableImageError, decode_rgb
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


@pytest.mark.parametrize("color", ["rgb", "bgr"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize(
    "norm",
    [
        {},
        {"scale": 1 / 255},
        {"mean": [127, 127, 127], "std": [128, 128, 128]},
        {"scale": 0.00392156, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        {"scale": 2.0, "mean": [0.3, 1e-3, 255], "std": [0.7, 3.3, 1e-3]},
    ],
)
def test_finish_of_uint8_by_table_gives_the_same_bits(
    color: str, layout: str, norm: dict
) -> None:
    """uint8 batches take a table lookup; float batches the arithmetic: the same bits."""
    pixels = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    pre = Preprocessor(PreprocessConfig(color=color, layout=layout, **norm))
    by_table = pre.finish(pixels)
    by_arithmetic = pre.finish(pixels.astype(np.float32))
    assert by_table.dtype == np.float32 and by_table.flags.c_contiguous
    assert by_table.shape == by_arithmetic.shape
    assert np.array_equal(by_table, by_arithmetic)
    # the hypotheses' overrides too: no normalization, another channel order
    swapped = "rgb" if color == "bgr" else "bgr"
    assert np.array_equal(
        pre.finish(pixels, color=swapped, mean=None, std=None),
        pre.finish(pixels.astype(np.float32), color=swapped, mean=None, std=None),
    )


def test_each_image_is_decoded_once_across_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import quantdoctor.data.imageset as imageset

    paths = [_img(tmp_path / f"{i}.png", size=(4, 4)) for i in range(4)]
    calls: list[Path] = []
    real = imageset.decode_rgb
    monkeypatch.setattr(imageset, "decode_rgb", lambda p, **kw: calls.append(p) or real(p, **kw))
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


# --- images users really have -------------------------------------------------------------
# Small files written here: an EXIF-rotated JPEG, 16-bit PNGs, a CMYK JPEG, an animated GIF,
# truncated files, and images above Pillow's decompression-bomb guard (a low guard, set with
# monkeypatch, stands in for a huge file).

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _exif_rotated(path: Path, orientation: int = 6, size: tuple[int, int] = (8, 4)) -> Path:
    """Stored ``size`` (w, h), red with a blue left quarter, tagged with ``orientation``
    (6: the camera was turned, the viewer rotates 90 degrees clockwise)."""
    img = Image.new("RGB", size, RED)
    img.paste(BLUE, (0, 0, size[0] // 4, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)
    return path


def _png16(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)  # Pillow writes mode I;16 as 16-bit
    return path


def _cmyk_jpeg(path: Path, rgb: tuple[int, int, int] = (200, 30, 10)) -> Path:
    Image.new("RGB", (8, 8), rgb).convert("CMYK").save(path, quality=95)
    return path


def _animated_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, (0, 255, 0), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def _truncated(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # into the pixel data: the header still reads
    return path


def test_exif_orientation_is_applied_by_default(tmp_path: Path) -> None:
    path = _exif_rotated(tmp_path / "phone.jpg")
    upright = np.asarray(decode_rgb(path))
    assert upright.shape == (8, 4, 3)  # turned: 4 wide, 8 tall
    assert upright[0, :, 2].min() > 200 and upright[0, :, 0].max() < 60  # top row: blue
    assert upright[-1, :, 0].min() > 200  # bottom row: red
    stored = np.asarray(decode_rgb(path, exif_orientation=False))
    assert stored.shape == (4, 8, 3)
    assert stored[:, 0, 2].min() > 200 and stored[:, -1, 0].min() > 200  # blue left column


@pytest.mark.parametrize(("orientation", "hw"), [(1, (4, 8)), (3, (4, 8)), (8, (8, 4))])
def test_every_exif_orientation_matches_pillow(
    tmp_path: Path, orientation: int, hw: tuple[int, int]
) -> None:
    from PIL import ImageOps

    path = _exif_rotated(tmp_path / "a.jpg", orientation)
    got = np.asarray(decode_rgb(path))
    with Image.open(path) as img:
        want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert got.shape[:2] == hw
    assert np.array_equal(got, want)


def test_sixteen_bit_png_is_scaled_by_its_mode_not_its_values(tmp_path: Path) -> None:
    bright = _png16(tmp_path / "bright.png", np.array([[0, 257, 32896, 65535]]))
    with Image.open(bright) as img:
        assert img.mode == "I;16"
    assert np.asarray(decode_rgb(bright))[0, :, 0].tolist() == [0, 1, 128, 255]
    # A dark 16-bit image (max <= 255) is still 16-bit: nearly black, not read as 8-bit.
    dark = _png16(tmp_path / "dark.png", np.array([[0, 100, 128, 200]]))
    assert np.asarray(decode_rgb(dark))[0, :, 0].tolist() == [0, 0, 0, 1]


def test_sixteen_bit_mode_i_is_scaled_too(tmp_path: Path) -> None:
    # A 16-bit PGM opens as mode I (Pillow scales its maxval to 65535).
    path = tmp_path / "a.pgm"
    path.write_bytes(b"P5 3 1 65535\n" + np.array([0, 32896, 65535], ">u2").tobytes())
    with Image.open(path) as img:
        assert img.mode == "I"
    assert np.asarray(decode_rgb(path))[0, :, 1].tolist() == [0, 128, 255]


def test_cmyk_jpeg_comes_back_as_its_rgb(tmp_path: Path) -> None:
    path = _cmyk_jpeg(tmp_path / "print.jpg", (200, 30, 10))
    with Image.open(path) as img:
        assert img.mode == "CMYK"
    rgb = np.asarray(decode_rgb(path)).astype(int)
    assert np.abs(rgb - [200, 30, 10]).max() <= 3


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    path = _animated_gif(tmp_path / "anim.gif")
    with Image.open(path) as img:
        assert img.n_frames == 3
    img = decode_rgb(path)
    assert img.mode == "RGB" and img.size == (8, 8)
    assert (np.asarray(img) == RED).all()


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated_file_is_unreadable_with_the_reason(tmp_path: Path, ext: str) -> None:
    path = _truncated(tmp_path / f"cut.{ext}")
    with pytest.raises(UnreadableImageError, match="truncated or corrupt") as err:
        decode_rgb(path)
    assert "image file is truncated" in str(err.value)  # Pillow's own words, kept
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # never switched on behind the user's back


def test_float_pixels_are_unreadable_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "depth.tif"
    Image.new("F", (4, 4), 0.5).save(path)
    with pytest.raises(UnreadableImageError, match="floating-point"):
        decode_rgb(path)


@pytest.mark.parametrize("side", [11, 16])  # 121 px: Pillow only warns; 256 px (> 2x): raises
@pytest.mark.parametrize("warning", ["error", "ignore"])  # -W error, or warnings silenced
def test_image_above_the_bomb_guard_is_unreadable_with_how_to_allow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int, warning: str
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    path = _img(tmp_path / "huge.png", size=(side, side))
    with pytest.raises(UnreadableImageError) as err, warnings.catch_warnings():
        warnings.simplefilter(warning)  # type: ignore[call-overload]
        decode_rgb(path)
    msg = str(err.value)
    assert f"has {side * side} pixels, more than Pillow's limit of 100" in msg
    assert f"{MAX_PIXELS_ENV}={side * side}" in msg
    assert Image.MAX_IMAGE_PIXELS == 100  # the guard was not raised silently
    # the way the message gives works
    monkeypatch.setenv(MAX_PIXELS_ENV, str(side * side))
    assert decode_rgb(path).size == (side, side)


def test_bad_pixel_limit_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(DataError, match=f"{MAX_PIXELS_ENV}='lots' is not a pixel count"):
        load_images([ImageRecord(_img(tmp_path / "a.png"))], Preprocessor(PreprocessConfig()))


def _odd_images(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """8x8 files a model with 8x8 inputs can use (readable) and ones it cannot (unreadable),
    by case; the guard must be 100 pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    readable = {
        "exif": _exif_rotated(folder / "phone.jpg", 6, (8, 8)),
        "png16": _png16(folder / "deep.png", np.full((8, 8), 100 * 257)),
        "cmyk": _cmyk_jpeg(folder / "print.jpg"),
        "gif": _animated_gif(folder / "anim.gif"),
    }
    unreadable = {
        "truncated_jpg": _truncated(folder / "cut.jpg"),
        "truncated_png": _truncated(folder / "cut.png"),
        "bomb_warns": _img(folder / "big.png", size=(11, 11)),
        "bomb_raises": _img(folder / "huge.png", size=(16, 16)),
    }
    return readable, unreadable


REASONS = {
    "truncated_jpg": "truncated or corrupt",
    "truncated_png": "truncated or corrupt",
    "bomb_warns": "more than Pillow's limit of 100",
    "bomb_raises": "more than Pillow's limit of 100",
}


@pytest.mark.filterwarnings("error")
def test_load_images_lists_the_unreadable_and_uses_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    good = [_img(tmp_path / f"{i}.png", size=(8, 8)) for i in range(80)]
    readable, unreadable = _odd_images(tmp_path / "odd")
    records = [ImageRecord(p, 0) for p in [*good, *readable.values(), *unreadable.values()]]
    images = load_images(records, Preprocessor(PreprocessConfig(resize={"size": 8})))
    assert len(images) == 84 and images.pixels.shape == (84, 8, 8, 3)
    assert set(images.paths) >= set(readable.values())
    failed = dict(images.failures)
    assert set(failed) == set(unreadable.values())
    for case, path in unreadable.items():
        assert REASONS[case] in failed[path], (case, failed[path])
    exif = images.pixels[images.paths.index(readable["exif"])]
    assert exif[0, :, 2].min() > 200 and exif[-1, :, 0].min() > 200  # upright: blue on top
    assert (images.pixels[images.paths.index(readable["png16"])] == 100).all()
    assert (images.pixels[images.paths.index(readable["gif"])] == RED).all()


def test_exif_setting_is_part_of_the_decoded_cache_key(tmp_path: Path) -> None:
    path = _exif_rotated(tmp_path / "phone.jpg", 6, (8, 4))
    cache: dict = {}
    upright = load_images([ImageRecord(path)], Preprocessor(PreprocessConfig()), cache=cache)
    stored = load_images(
        [ImageRecord(path)], Preprocessor(PreprocessConfig(exif_orientation=False)), cache=cache
    )
    assert upright.metas[0].orig_hw == (8, 4) and stored.metas[0].orig_hw == (4, 8)
    assert len(cache) == 2


@pytest.mark.parametrize(("exif", "hw"), [(True, (8, 4)), (False, (4, 8))])
def test_detection_boxes_follow_the_exif_orientation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exif: bool, hw: tuple[int, int]
) -> None:
    # YOLO boxes are normalised to the image as decoded: turned upright or not.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    photo = _exif_rotated(images / "phone.jpg", 6, (8, 4))
    good = [_img(images / f"{i}.png", size=(8, 8)) for i in range(40)]
    huge = _img(images / "huge.png", size=(16, 16))  # above the guard: listed, no crash
    cut = _truncated(images / "cut.jpg")
    labels.mkdir()
    (labels / "phone.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    src = read_detection_source(images, labels, exif_orientation=exif)
    boxes = {r.path: r.boxes for r in src.records}
    assert boxes[photo] is not None and boxes[photo].image_hw == hw
    h, w = hw
    assert boxes[photo].boxes.tolist() == [[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]
    pre = Preprocessor(PreprocessConfig(letterbox={"size": 8}, exif_orientation=exif))
    loaded = load_images(src.records, pre)
    assert loaded.metas[loaded.paths.index(photo)].orig_hw == hw  # the boxes' frame
    assert len(loaded) == len(good) + 1
    assert {p for p, _ in loaded.failures} == {huge, cut}


def test_evaluate_lists_unreadable_images_with_reasons_and_uses_the_rest(
    digits, digits_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # Through the API a command uses: 100 digits plus every kind of odd file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    folder = tmp_path / "test"
    for d in sorted(digits["test"].iterdir()):
        (folder / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:10]:
            shutil.copy(f, folder / d.name / f.name)
    readable, unreadable = _odd_images(folder / "0")
    cfg = quantdoctor.load_config(digits_config(data={
        "calibration": {"path": str(digits["train"]), "limit": 64},
        "evaluation": {"path": str(folder)},
    }))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = quantdoctor.evaluate(cfg)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert report.contexts["native"].n == 100 + len(readable)
    data = json.loads((Path(cfg.report.dir) / "findings.json").read_text())
    finding = next(f for f in data["findings"] if f["id"] == "setup.unreadable_images")
    assert finding["title"].startswith(f"{len(unreadable)} evaluation image(s)")
    listed = dict(finding["evidence"]["files"])
    assert set(listed) == {str(p) for p in unreadable.values()}
    for case, path in unreadable.items():
        assert REASONS[case] in listed[str(path)]
