"""The external context: outputs read from files (e.g. a device's) enter the three-way test;
a device that does not do what the emulation does is its own finding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import quantdoctor
from quantdoctor.config import ExternalConfig
from quantdoctor.engine import Engine
from quantdoctor.engine.external import OutputSpec, read_external
from quantdoctor.report import Report

from .conftest import REPO, digits_doctor, write_config
from .test_cli_errors import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def int8(digits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The digits model's int8 outputs over the evaluation images, computed once."""
    cfg = quantdoctor.load_config(
        write_config(tmp_path_factory.mktemp("int8"), digits_doctor(digits, Path("report")))
    )
    engine = Engine(cfg)
    images = engine.images("evaluation")
    return {"paths": list(images.paths), "logits": engine.outputs("int8")["logits"].copy(),
            "root": digits["test"], "labels": images.labels}


def write_dumps(folder: Path, int8: dict[str, Any], logits: np.ndarray | None = None,
                skip: set[int] | frozenset[int] = frozenset(), mirror: bool = True) -> Path:
    """One .npy per image, in sub-folders mirroring the image folder (or flat)."""
    logits = int8["logits"] if logits is None else logits
    for i, path in enumerate(int8["paths"]):
        if i in skip:
            continue
        rel = path.relative_to(int8["root"]) if mirror else Path(path.name)
        target = folder / rel.with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, logits[i])
    return folder


def evaluate(digits: dict[str, Path], tmp_path: Path, external: Any) -> Report:
    path = write_config(tmp_path, digits_doctor(digits, tmp_path / "report", external=external))
    return quantdoctor.evaluate(quantdoctor.load_config(path), write=False)


def finding(report: Report, fid: str, context: str | None = None) -> Any:
    return next(f for f in report.findings
                if f.id == fid and (context is None or f.evidence.get("context") == context))


def test_int8_dumps_make_external_equal_int8(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = evaluate(digits, tmp_path, {"path": str(write_dumps(tmp_path / "dumps", int8))})
    ext, ref = report.contexts["external"], report.contexts["int8"]
    assert (ext.value, ext.ci95, ext.n) == (ref.value, ref.ci95, ref.n) and ext.n == 898
    vs_int8 = next(c for c in report.comparisons
                   if c["context"] == "external" and c["reference"] == "int8")
    assert vs_int8["difference"] == 0.0 and vs_int8["agreement"] == 100.0
    mismatch = finding(report, "evaluation.external_mismatch")
    assert mismatch.severity == "ok"
    assert mismatch.evidence["output_snr_db"]["int8"] == {"logits": 200.0}  # capped: identical
    # on this small MLP the emulation and the integer kernels agree too (often exactly)
    assert mismatch.evidence["closer_to"] in ("int8", "both")
    # external gets a verdict against native like every quantized context
    assert finding(report, "evaluation.within_noise", "external").evidence["n"] == 898
    assert report.setup["external"]["missing"] == 0
    assert not any(f.id == "setup.external_missing" for f in report.findings)


def test_a_device_with_another_pipeline_is_a_mismatch(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A "device" that writes its scores one class off for every fourth image (digits are
    # grey, so swapped input channels would change nothing here).
    logits = int8["logits"].copy()
    logits[::4] = np.roll(logits[::4], 1, axis=1)
    report = evaluate(digits, tmp_path,
                      {"path": str(write_dumps(tmp_path / "dumps", int8, logits))})
    m = finding(report, "evaluation.external_mismatch")
    assert m.severity == "error"
    assert m.evidence["difference"] < -15.0 and m.evidence["ci95"][1] < -1.0
    assert m.evidence["p_value"] < 1e-6 and m.evidence["test"].startswith("McNemar")
    assert m.evidence["top1_agreement"] < 80.0
    assert "does not do what the emulation does" in m.recommendation
    assert finding(report, "evaluation.degradation", "external").severity == "error"
    assert report.top_suspect is not None
    assert report.top_suspect.id == "evaluation.external_mismatch"


def test_missing_dumps_are_listed_and_left_out(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    skip = set(range(0, 898, 10))  # 90 of 898 (10%)
    dumps = write_dumps(tmp_path / "dumps", int8, skip=skip)
    path = write_config(tmp_path, digits_doctor(digits, tmp_path / "report",
                                                external={"path": str(dumps)}))
    result = run_cli("evaluate", str(path))
    assert result.returncode == 0, result.stderr
    assert "808 images with external outputs; 90 without" in " ".join(result.stdout.split())
    page = " ".join((tmp_path / "report" / "index.html").read_text().split())
    assert "90 of 898 images have none and are left out" in page
    report = quantdoctor.evaluate(quantdoctor.load_config(path), write=False)
    assert report.contexts["external"].n == 808 and report.contexts["native"].n == 898
    missing = finding(report, "setup.external_missing")
    assert missing.evidence["missing"] == 90
    assert set(missing.evidence["files"]) == {str(int8["paths"][i]) for i in skip}
    external_cmps = [c for c in report.comparisons if c["context"] == "external"]
    assert {c["reference"] for c in external_cmps} == {"native", "quantized", "int8"}
    assert all(c["n"] == 808 and "90 without" in c["images"] for c in external_cmps)
    # paired on the same 808 images: external is int8 there, exactly
    vs_int8 = next(c for c in external_cmps if c["reference"] == "int8")
    assert vs_int8["difference"] == 0.0 and vs_int8["agreement"] == 100.0
    keep = np.array([i for i in range(898) if i not in skip])
    correct = (int8["logits"][keep].argmax(1) == int8["labels"][keep]).mean() * 100
    assert report.contexts["external"].value == pytest.approx(correct)


def test_one_npz_keyed_by_file_name(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    file = tmp_path / "device.npz"
    np.savez(file, **{p.name: int8["logits"][i] for i, p in enumerate(int8["paths"])})
    report = evaluate(digits, tmp_path, str(file))  # the short form: external: file.npz
    assert report.contexts["external"].value == report.contexts["int8"].value
    assert report.contexts["external"].n == 898


def test_integer_dumps_are_dequantized_with_scale_and_zero_point(tmp_path: Path) -> None:
    from quantdoctor.data import ImageSet

    q = np.array([[0, 128, 255], [10, 20, 30]], dtype=np.uint8)
    paths = [Path(f"/images/{n}.png") for n in ("a", "b")]
    for path, row in zip(paths, q, strict=True):
        np.savez(tmp_path / f"{path.stem}.npz", scores=row[None], boxes=row[:2].astype(np.int16))
    images = ImageSet(paths, np.zeros((2, 1, 1, 3), np.uint8), None, [None, None])  # type: ignore[list-item]
    specs = [OutputSpec("scores", (3,)), OutputSpec("boxes", (2,))]
    config = ExternalConfig(path=tmp_path, scale=0.5, zero_point=128,
                            per_output={"boxes": {"scale": 0.25, "zero_point": 10}})
    ext = read_external(config, specs, images)
    np.testing.assert_array_equal(ext.outputs["scores"], (q.astype(np.float32) - 128) * 0.5)
    np.testing.assert_array_equal(ext.outputs["boxes"], (q[:, :2].astype(np.float32) - 10) / 4)
    assert ext.stored_dtypes == {"scores": "uint8", "boxes": "int16"}
    assert ext.dequantized == {"scores": (0.5, 128.0), "boxes": (0.25, 10.0)}


def test_equal_file_names_in_two_folders_need_mirrored_dumps(tmp_path: Path) -> None:
    from quantdoctor.data import ImageSet
    from quantdoctor.errors import DataError

    paths = [Path("/images/cat/0001.png"), Path("/images/dog/0001.png")]
    images = ImageSet(paths, np.zeros((2, 1, 1, 3), np.uint8), None, [None, None])  # type: ignore[list-item]
    specs = [OutputSpec("logits", (3,))]
    np.save(tmp_path / "0001.npy", np.ones(3, np.float32))
    with pytest.raises(DataError, match=r"matches two images .*\(e.g. dog/0001.npy\)"):
        read_external(ExternalConfig(path=tmp_path), specs, images)
    for i, cls in enumerate(("cat", "dog")):
        (tmp_path / cls).mkdir()
        np.save(tmp_path / cls / "0001.npy", np.full(3, i, np.float32))
    ext = read_external(ExternalConfig(path=tmp_path), specs, images)  # the longer name wins
    np.testing.assert_array_equal(ext.outputs["logits"], [[0, 0, 0], [1, 1, 1]])
    assert ext.unmatched == 1  # the flat 0001.npy


def test_example_script_writes_uint8_dumps_that_read_back_as_int8(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_config(tmp_path, digits_doctor(digits, tmp_path / "report"))
    out = tmp_path / "external.yaml"
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "write_device_dumps.py"), str(path),
         "-o", str(tmp_path / "dumps"), "--uint8", "--drop", "0.1", "--config-out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    cfg = quantdoctor.load_config(out)
    assert cfg.external is not None and cfg.external.dtype == "uint8" and cfg.external.scale
    report = quantdoctor.evaluate(cfg, write=False)
    assert report.setup["external"]["stored_dtypes"] == {"logits": "uint8"}
    assert report.contexts["external"].n == 898 - 90
    vs_int8 = next(c for c in report.comparisons
                   if c["context"] == "external" and c["reference"] == "int8")
    assert vs_int8["agreement"] == 100.0
    m = finding(report, "evaluation.external_mismatch")
    assert m.evidence["output_snr_db"]["int8"] == {"logits": 200.0}  # bit for bit


# --- bad input: one sentence, exit 2 -----------------------------------------------------------


def _cli(
    digits: dict[str, Path], tmp_path: Path, external: Any
) -> subprocess.CompletedProcess[str]:
    path = write_config(tmp_path, digits_doctor(digits, tmp_path / "report", external=external))
    return run_cli("evaluate", str(path))


def test_missing_folder(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert_clean_error(_cli(digits, tmp_path, {"path": "no_such_dumps/"}),
                       "external.path", "no_such_dumps", "not found")


def test_dumps_with_the_wrong_shape(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dumps = write_dumps(tmp_path / "dumps", int8, logits=int8["logits"][:, :9])
    assert_clean_error(_cli(digits, tmp_path, str(dumps)),
                       "output 'logits' has shape [9]", "[10] per image")


def test_dumps_with_the_wrong_names(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "dumps").mkdir()
    for i, p in enumerate(int8["paths"]):
        np.savez(tmp_path / "dumps" / f"{p.stem}.npz", scores=int8["logits"][i])
    assert_clean_error(_cli(digits, tmp_path, str(tmp_path / "dumps")),
                       "no array named 'logits'", "it has 'scores'")


def test_a_folder_without_npy_or_npz_files(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "dumps").mkdir()
    for p in int8["paths"][:5]:
        (tmp_path / "dumps" / f"{p.stem}.bin").write_bytes(b"\0" * 40)
    assert_clean_error(_cli(digits, tmp_path, str(tmp_path / "dumps")),
                       "holds no .npy/.npz files", ".bin")


def test_a_dump_that_is_not_npy(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dumps = write_dumps(tmp_path / "dumps", int8)
    bad = dumps / int8["paths"][3].relative_to(int8["root"]).with_suffix(".npy")
    bad.write_text("0.1 0.2 0.3\n")
    assert_clean_error(_cli(digits, tmp_path, str(dumps)), str(bad), "not a readable .npy")


def test_an_integer_dump_without_scale(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dumps = write_dumps(tmp_path / "dumps", int8, logits=int8["logits"].astype(np.int8))
    assert_clean_error(_cli(digits, tmp_path, str(dumps)),
                       "holds integers (int8) but no scale", "external.scale")


def test_more_than_half_missing_is_a_naming_error(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dumps = write_dumps(tmp_path / "dumps", int8, skip=set(range(500)))
    assert_clean_error(_cli(digits, tmp_path, str(dumps)),
                       "500 of 898 evaluation images have no dump", "name each dump")


def test_zero_point_without_scale_and_an_unknown_output(digits, int8, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert_clean_error(_cli(digits, tmp_path, {"path": "d/", "zero_point": 128}),
                       "external", "zero_point needs scale")
    dumps = write_dumps(tmp_path / "dumps", int8)
    assert_clean_error(
        _cli(digits, tmp_path, {"path": str(dumps), "per_output": {"scores": {"scale": 0.1}}}),
        "external.per_output.scores", "no output 'scores'", "logits",
    )



@pytest.mark.shared_data
def test_resnet20_with_channels_swapped_on_the_device(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import yaml

    from .conftest import SHARED_DATA
    from .test_real_models import EXAMPLES, _export

    weights = SHARED_DATA / "cifar10" / "resnet20-12fca82f.th"
    model = _export(tmp_path_factory, "export_resnet20", weights=weights)
    cfg = quantdoctor.load_config(EXAMPLES / "resnet20_cifar10.yaml")
    raw = cfg.model_copy(update={"model": model}).model_dump(mode="json", exclude={"source"})
    raw["report"] = {"dir": str(tmp_path / "report")}
    (tmp_path / "doctor.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "write_device_dumps.py"), str(tmp_path / "doctor.yaml"),
         "-o", str(tmp_path / "dumps"), "--swap-channels",
         "--config-out", str(tmp_path / "swapped.yaml")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = quantdoctor.evaluate(quantdoctor.load_config(tmp_path / "swapped.yaml"), write=False)
    m = finding(report, "evaluation.external_mismatch")
    # measured: top-1 -10.65 points (CI -12.70 … -8.70), McNemar p = 1e-27, SNR 5.5 dB
    assert m.severity == "error" and m.evidence["n"] == 2000
    assert m.evidence["ci95"][1] < -5.0 and m.evidence["p_value"] < 1e-10
    assert max(m.evidence["output_snr_db"]["int8"].values()) < 15.0
    assert "far from both" in m.recommendation
