"""The external context (DESIGN §2): outputs produced elsewhere (e.g. on the device), read
from files, checked against the model's outputs and aligned with a split's images.

Two layouts (``external.path``):

- a folder with one file per image, named after the image file: ``0001.npy`` or
  ``0001.png.npy`` (a model with one output), or ``0001.npz`` holding one array per output
  name. Sub-folders may mirror the image folder's (``cat/0001.npz``), which keeps equal file
  names in different class folders apart;
- one ``.npz`` keyed by image file name (``"0001.png"`` or ``"cat/0001.png"``; with several
  outputs one key per image and output, ``"0001.png/logits"``).

An image matches the dump whose name is the longest tail of the image's path (with or without
the image's suffix). Images without a dump are listed and left out (their rows are NaN);
more than :data:`MAX_MISSING_FRACTION` of them missing is an error, as that is a naming
mismatch far more often than a device run on part of the images.

>>> specs = [OutputSpec("logits", (10,))]
>>> ext = read_external(ExternalConfig(path="dumps/"), specs, images)  # doctest: +SKIP
>>> ext.outputs["logits"].shape, int(ext.present.sum())                # doctest: +SKIP
((898, 10), 898)
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..config import ExternalConfig
from ..data import ImageSet
from ..errors import ConfigError, DataError

SUFFIXES = (".npy", ".npz")
#: More images without a dump than this fraction is an error (see the module docstring).
MAX_MISSING_FRACTION = 0.5
#: Files named in messages and evidence (the count is always given).
SHOWN = 10
#: np.savez's name for an array given without a name (accepted for one-output models).
UNNAMED = "arr_0"


@dataclass(frozen=True)
class OutputSpec:
    """A model output as a dump must hold it: its name and per-image shape (the batch
    dimension removed; ``None`` where the model leaves a dimension open)."""

    name: str
    #: ``None``: the model does not say (any shape is taken)
    shape: tuple[int | None, ...] | None

    @property
    def known(self) -> bool:
        return self.shape is not None and None not in self.shape

    def shown(self) -> str:
        if self.shape is None:
            return "any shape"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass
class ExternalOutputs:
    """The external context over one split: ``outputs`` aligned with the split's images
    (float32; rows of images without a dump are NaN), ``present`` says which have one."""

    source: Path
    paths: list[Path]
    outputs: dict[str, np.ndarray]
    present: np.ndarray
    #: dump files (or .npz keys) that belong to no image of the split
    unmatched: int = 0
    #: output → stored dtype of the dumps
    stored_dtypes: dict[str, str] = field(default_factory=dict)
    #: output → (scale, zero_point) applied to dequantize it
    dequantized: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def index(self) -> np.ndarray:
        """Indices (into the split) of the images that have a dump."""
        return np.flatnonzero(self.present)

    @property
    def missing(self) -> list[Path]:
        return [p for p, ok in zip(self.paths, self.present, strict=True) if not ok]

    def summary(self) -> dict[str, Any]:
        """What findings.json says about the dumps (setup, evidence)."""
        missing = self.missing
        return {
            "path": str(self.source),
            "images": len(self.paths),
            "with_outputs": int(self.present.sum()),
            "missing": len(missing),
            "missing_files": [str(p) for p in missing[:SHOWN]],
            "unmatched_dumps": self.unmatched,
            "stored_dtypes": dict(self.stored_dtypes),
            "dequantized": {
                k: {"scale": s, "zero_point": z} for k, (s, z) in self.dequantized.items()
            },
        }


def output_specs(model: onnx.ModelProto) -> list[OutputSpec]:
    """The outputs a dump must hold: those of the deployed model (the end_nodes when the
    model is cut), shapes without the batch dimension."""
    specs = []
    for out in model.graph.output:
        tensor = out.type.tensor_type
        if not tensor.HasField("shape"):
            specs.append(OutputSpec(out.name, None))
            continue
        dims = tensor.shape.dim[1:]
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        specs.append(OutputSpec(out.name, shape))
    return specs


# --- where each image's dump is --------------------------------------------------------------


@dataclass(frozen=True)
class _Dump:
    """One image's dump: a file, and for an .npz the key of each output (``None``: one array
    for the only output, or every array of a per-image .npz)."""

    file: Path
    keys: dict[str, str] | None = None

    def shown(self) -> str:
        if self.keys is None:
            return str(self.file)
        return f"{self.file} [{', '.join(self.keys.values())}]"


Key = tuple[str, ...]


def _folder_index(folder: Path) -> dict[Key, _Dump]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    dumps = [p for p in files if p.suffix.lower() in SUFFIXES]
    if not dumps:
        others = sorted({p.suffix or p.name for p in files})
        found = f"it holds {len(files)} other files ({', '.join(others[:5])})" if files else (
            "it is empty"
        )
        raise DataError(
            f"external.path: {folder} holds no .npy/.npz files ({found}); write one "
            "numpy.save/.savez file per image named after the image file, or one .npz keyed by "
            "image file name"
        )
    index: dict[Key, _Dump] = {}
    for p in dumps:
        index[p.relative_to(folder).with_suffix("").parts] = _Dump(p)
    return index


def _npz_index(file: Path, outputs: Sequence[str]) -> dict[Key, _Dump]:
    """Keys ``"<image>"`` (one output) or ``"<image>/<output>"``."""
    with _open_npz(file) as z:
        keys = list(z.files)
    grouped: dict[Key, dict[str, str]] = {}
    for key in keys:
        parts = tuple(p for p in key.replace("\\", "/").split("/") if p not in ("", "."))
        if len(parts) > 1 and parts[-1] in outputs:
            grouped.setdefault(parts[:-1], {})[parts[-1]] = key
        elif parts:
            grouped.setdefault(parts, {})[""] = key  # the one output, named by the image only
    return {k: _Dump(file, v) for k, v in grouped.items()}


def _tails(path: Path, depth: int) -> Iterator[Key]:
    """Dump names an image may have, most specific first: the last ``depth`` .. 1 components
    of its path, each with and without the image's suffix."""
    parts = path.parts
    for k in range(min(depth, len(parts)), 0, -1):
        tail = parts[-k:]
        yield tail
        stem = Path(tail[-1]).stem
        if stem != tail[-1]:
            yield (*tail[:-1], stem)


def _match(paths: Sequence[Path], index: dict[Key, _Dump]) -> list[Key | None]:
    depth = max((len(k) for k in index), default=1)
    found: list[Key | None] = [next((t for t in _tails(p, depth) if t in index), None)
                               for p in paths]
    owner: dict[Key, Path] = {}
    for p, key in zip(paths, found, strict=True):
        if key is None:
            continue
        if key in owner:
            raise DataError(
                f"external: the dump {index[key].shown()} matches two images ({owner[key]} and "
                f"{p}); name each dump by the image's path under its folder (e.g. "
                f"{Path(*p.parts[-2:]).with_suffix('.npy').as_posix()}) so that equal file names "
                "stay apart"
            )
        owner[key] = p
    return found


# --- reading and checking one dump -----------------------------------------------------------


def _open_npz(file: Path) -> Any:
    """An open .npz archive (close it), or one sentence why the file is not one."""
    try:
        got = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(
            f"external: {file} is not a readable .npz file ({err}); write it with "
            "numpy.savez"
        ) from None
    if isinstance(got, np.ndarray):  # an .npy under an .npz name
        raise DataError(
            f"external: {file} is an .npy array, not an .npz archive; rename it to "
            f"{file.with_suffix('.npy').name}"
        )
    return got


def _pick(
    arrays: dict[str, Any], specs: Sequence[OutputSpec], where: str
) -> dict[str, np.ndarray]:
    """The arrays of the model's outputs among the named ones in a dump."""
    names = [s.name for s in specs]
    if all(n in arrays for n in names):
        return {n: np.asarray(arrays[n]) for n in names}
    if len(names) == 1 and len(arrays) == 1 and next(iter(arrays)) in (UNNAMED, ""):
        return {names[0]: np.asarray(next(iter(arrays.values())))}
    missing = [n for n in names if n not in arrays]
    has = [repr(k) for k in arrays if k] + (["one array keyed by the image alone"]
                                            if "" in arrays else [])
    raise DataError(
        f"external: {where} has no array named {', '.join(map(repr, missing))} (it has "
        f"{', '.join(has) or 'none'}); name each array after the model's output: "
        f"{', '.join(names)}"
    )


def _load(dump: _Dump, specs: Sequence[OutputSpec], npz: Any) -> dict[str, np.ndarray]:
    if dump.keys is not None:  # one .npz keyed by image (and output)
        where = f"{dump.file} (keys {', '.join(map(repr, dump.keys.values()))})"
        return _pick({k: npz[v] for k, v in dump.keys.items()}, specs, where)
    if dump.file.suffix.lower() == ".npy":
        if len(specs) > 1:
            raise DataError(
                f"external: {dump.file} holds one array (.npy) but the model has "
                f"{len(specs)} outputs ({', '.join(s.name for s in specs)}); write one .npz "
                "per image with one array per output name"
            )
        try:
            arr = np.load(dump.file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            # numpy takes a file without its header for pickled data: say what it is
            reason = "it has no .npy header" if "pickle" in str(err) else str(err)
            raise DataError(
                f"external: {dump.file} is not a readable .npy file ({reason}); write it with "
                "numpy.save"
            ) from None
        if not isinstance(arr, np.ndarray):  # an .npz under an .npy name
            arr.close()
            raise DataError(
                f"external: {dump.file} is an .npz archive, not an .npy array; rename it to "
                f"{dump.file.with_suffix('.npz').name}"
            )
        return {specs[0].name: arr}
    with _open_npz(dump.file) as z:
        return _pick({k: z[k] for k in z.files}, specs, str(dump.file))


def _fit_shape(arr: np.ndarray, spec: OutputSpec, where: str) -> np.ndarray:
    """The per-image array; a leading batch dimension of 1 is dropped (device dumps often
    keep it). Anything else that differs is refused: reshaping (e.g. NHWC to NCHW) would
    silently scramble values."""
    if spec.shape is None:
        return arr
    if arr.ndim == len(spec.shape) + 1 and arr.shape[0] == 1:
        arr = arr[0]
    fits = arr.ndim == len(spec.shape) and all(
        e is None or e == g for e, g in zip(spec.shape, arr.shape, strict=True)
    )
    if not fits:
        raise DataError(
            f"external: {where}: output '{spec.name}' has shape {list(arr.shape)}; the model "
            f"gives {spec.shown()} per image (a leading batch dimension of 1 is allowed); "
            "write the output as the model gives it (same layout)"
        )
    return arr


def _quantization(config: ExternalConfig, name: str) -> tuple[float, float] | None:
    if name in config.per_output:
        q = config.per_output[name]
        return q.scale, q.zero_point
    if config.scale is not None:
        return config.scale, config.zero_point or 0.0
    return None


def _to_float(
    arr: np.ndarray, config: ExternalConfig, name: str, where: str
) -> np.ndarray:
    """The dump in float32: dequantized where a scale is given (whatever the stored dtype:
    integer values saved as float too), as stored otherwise (floats only)."""
    if arr.dtype.kind not in "fiu":
        raise DataError(
            f"external: {where}: output '{name}' holds {arr.dtype} values, not numbers; "
            "write float or integer arrays"
        )
    if config.dtype is not None and arr.dtype != np.dtype(config.dtype):
        raise DataError(
            f"external: {where}: output '{name}' holds {arr.dtype} values but external.dtype "
            f"is {config.dtype}; correct external.dtype or the dumps"
        )
    q = _quantization(config, name)
    if q is None:
        if arr.dtype.kind in "iu":
            raise DataError(
                f"external: {where}: output '{name}' holds integers ({arr.dtype}) but no scale "
                f"is given; set external.scale and external.zero_point (or "
                f"external.per_output.{name}) to dequantize them as (q - zero_point) * scale"
            )
        out = arr.astype(np.float32)
    else:
        scale, zero_point = q
        # float32 scale times an exact integer difference in float64, rounded once: the
        # same number as a DequantizeLinear in float32 (ONNX Runtime), bit for bit
        out = ((arr.astype(np.float64) - zero_point) * np.float32(scale)).astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(
            f"external: {where}: output '{name}' holds NaN or infinite values; check what the "
            "device wrote"
        )
    return out


# --- the whole split -------------------------------------------------------------------------


def _check_config(config: ExternalConfig, specs: Sequence[OutputSpec]) -> None:
    names = [s.name for s in specs]
    for name in config.per_output:
        if name not in names:
            raise ConfigError(
                f"external.per_output.{name}: the model has no output {name!r}; its outputs: "
                f"{', '.join(names)}"
            )
    if not config.path.exists():
        raise ConfigError(
            f"external.path: {config.path} not found; give the folder of per-image "
            ".npy/.npz dumps (or one .npz keyed by image file name), relative to the config "
            "file"
        )
    if config.path.is_file() and config.path.suffix.lower() != ".npz":
        raise ConfigError(
            f"external.path: {config.path} is neither a folder nor an .npz file; give a "
            "folder of per-image .npy/.npz dumps or one .npz keyed by image file name"
        )


def _check_missing(paths: Sequence[Path], found: Sequence[Key | None], source: Path,
                   index: dict[Key, _Dump], split: str) -> None:
    missing = [p for p, k in zip(paths, found, strict=True) if k is None]
    if len(missing) <= MAX_MISSING_FRACTION * len(paths):
        return
    example = next(iter(index.values())).shown()
    raise DataError(
        f"external: {len(missing)} of {len(paths)} {split} images have no dump in {source} "
        f"(e.g. {missing[0].name}: looked for {missing[0].stem}.npy or .npz; found e.g. "
        f"{example}); name each dump after its image file (more than "
        f"{MAX_MISSING_FRACTION:.0%} missing is refused as a naming mismatch)"
    )


def _stack(
    rows: list[dict[str, np.ndarray]], found: Sequence[Key | None], specs: Sequence[OutputSpec],
    dumps: Sequence[_Dump | None],
) -> dict[str, np.ndarray]:
    """Arrays over all images of the split, NaN where an image has no dump."""
    out = {}
    for spec in specs:
        shapes = {r[spec.name].shape for r in rows}
        if len(shapes) > 1:
            first = [d.shown() for d in dumps if d is not None][:1]
            raise DataError(
                f"external: the dumps of output '{spec.name}' have different shapes "
                f"({', '.join(str(list(s)) for s in sorted(shapes)[:3])}, e.g. {first[0]}); "
                "every image's output must have one shape"
            )
        shape = next(iter(shapes))
        full = np.full((len(found), *shape), np.nan, np.float32)
        at = [i for i, k in enumerate(found) if k is not None]
        full[at] = np.stack([r[spec.name] for r in rows])
        out[spec.name] = full
    return out


def read_external(
    config: ExternalConfig,
    specs: Sequence[OutputSpec],
    images: ImageSet,
    split: str = "evaluation",
    advance: Callable[[int], None] | None = None,
) -> ExternalOutputs:
    """Read, check and align the dumps of ``images``; bad dumps are one sentence each
    (:class:`DataError`/:class:`ConfigError`)."""
    _check_config(config, specs)
    source = config.path
    is_npz = source.is_file()
    index = _npz_index(source, [s.name for s in specs]) if is_npz else _folder_index(source)
    found = _match(images.paths, index)
    _check_missing(images.paths, found, source, index, split)
    dumps = [None if k is None else index[k] for k in found]
    npz = _open_npz(source) if is_npz else None
    rows: list[dict[str, np.ndarray]] = []
    stored: dict[str, str] = {}
    try:
        for dump in dumps:
            if dump is not None:
                raw = _load(dump, specs, npz)
                row = {}
                for spec in specs:
                    arr = _fit_shape(raw[spec.name], spec, dump.shown())
                    stored.setdefault(spec.name, str(arr.dtype))
                    row[spec.name] = _to_float(arr, config, spec.name, dump.shown())
                rows.append(row)
            if advance:
                advance(1)
    finally:
        if npz is not None:
            npz.close()
    present = np.array([k is not None for k in found], dtype=bool)
    dequantized = {s.name: q for s in specs if (q := _quantization(config, s.name)) is not None}
    return ExternalOutputs(
        source=source,
        paths=list(images.paths),
        outputs=_stack(rows, found, specs, dumps),
        present=present,
        unmatched=len(index) - int(present.sum()),
        stored_dtypes=stored,
        dequantized=dequantized,
    )


def external_key(config: ExternalConfig) -> str:
    """The external outputs by what they are read from and how (the cache key's first part;
    the split's files are the second)."""
    return config.model_dump_json()
