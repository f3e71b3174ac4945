"""Suspect 2, the calibration set (DESIGN §4 step 2): every finding on deliberately bad
calibration sets, on the digits classifier (self-contained) and on the real models of
../shared/data (marked ``shared_data``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import quantdoctor
from quantdoctor.checks import calibration_stats as cs
from quantdoctor.checks.calibration import (
    CalibrationResult,
    calibration_checks,
    penultimate_tensor,
)
from quantdoctor.config import DataConfig, DoctorConfig, ImageSourceConfig
from quantdoctor.engine import Engine
from quantdoctor.quant.target import QuantScheme
from quantdoctor.tasks import make_task

from .conftest import REPO, SHARED_DATA


def run_checks(cfg: DoctorConfig, **kw: Any) -> CalibrationResult:
    engine = Engine(cfg)
    return calibration_checks(engine, make_task(cfg), **kw)


def by_id(result: CalibrationResult) -> dict[str, Any]:
    return {f.id: f for f in result.findings}


def errors(result: CalibrationResult) -> list[str]:
    return [f"{f.id}: {f.title}" for f in result.findings if f.severity == "error"]


def save_pngs(folder: Path, arrays: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:03d}.png")
    return folder


def noise_images(n: int, size: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def single_colour_images(n: int, size: int, seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8) for _ in range(n)]


def copies(folder: Path, source: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copyfile(source, folder / f"{i:03d}_{source.name}")
    return folder


def assert_json_plain(result: CalibrationResult) -> None:
    """Evidence must be plain JSON (no numpy types, no NaN/inf)."""
    json.dumps(result.evidence, allow_nan=False)
    for f in result.findings:
        json.dumps(f.evidence, allow_nan=False)


# --- statistics ---------------------------------------------------------------------------


def test_energy_test_separates_shifted_samples_only() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 16)), rng.normal(size=(300, 16))
    same = cs.energy_test(a, b, permutations=500, seed=0)
    assert same.p_value > 0.05 and abs(same.coefficient) < 0.02
    shifted = cs.energy_test(a + 1.0, b, permutations=500, seed=0)
    assert shifted.p_value < 0.01 and shifted.coefficient > 0.1
    # seeded: the same numbers twice
    assert cs.energy_test(a + 1.0, b, 500, 0) == shifted


def test_coverage_accumulator_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200_000).astype(np.float32)
    scheme = QuantScheme(bits=8, signed=False, symmetric=False)
    acc = cs.CoverageAccumulator(-1.0, 1.0, scheme, stride=1)
    acc.add(x[:100_000])
    acc.add(x[100_000:])
    got = acc.summary()
    # brute force: quantize with the same grid, clip, dequantize
    s, zp = acc.scale, acc.zero_point
    q = np.clip(np.rint(x.astype(np.float64) / s) + zp, 0, 255)
    deq = (q - zp) * s
    noise = ((x - deq) ** 2).sum()
    assert got["snr_db"] == pytest.approx(
        10 * np.log10((x.astype(np.float64) ** 2).sum() / noise), abs=0.05
    )
    outside = ((x > acc.q_hi + s / 2) | (x < acc.q_lo - s / 2)).mean()
    assert got["fraction_outside"] == pytest.approx(outside)
    assert 0.3 < got["fraction_outside"] < 0.34  # |N(0,1)| > 1
    assert got["clipping_cost_db"] > 20
    assert got["range_ratio"] < 0.5


def test_image_statistics_tell_photos_from_flat_and_noise() -> None:
    rng = np.random.default_rng(0)
    # a smooth "photo": low-pass filtered noise has strong neighbour correlation, 1/f^2 falloff
    f = np.fft.fftfreq(64)
    amp = 1.0 / np.maximum(np.hypot(f[:, None], f[None, :]), 1 / 64)
    smooth = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(64, 64))) * amp))
    smooth = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    photo = np.repeat(smooth[None, :, :, None], 3, axis=3)
    noise = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    flat = np.full((1, 64, 64, 3), 77, np.uint8)
    px = np.concatenate([photo, noise, flat])
    corr = cs.neighbour_correlation(px)
    slope = cs.spectral_slope(px)
    assert corr[0] > 0.6 and abs(corr[1]) < 0.1 and np.isnan(corr[2])
    assert slope[0] < -1.5 and slope[1] > -0.5 and np.isnan(slope[2])
    assert cs.pixel_std(px)[2] == 0.0
    assert cs.dominant_fraction(px)[2] == 1.0


def test_penultimate_tensor_walks_back_from_the_output() -> None:
    inits = [
        numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.ones((4, 5), np.float32), "fc"),
        numpy_helper.from_array(np.ones(5, np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["feat"], name="flat"),
        helper.make_node("MatMul", ["feat", "fc"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "bias"], ["logits"], name="add"),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph)
    assert penultimate_tensor(model) == "feat"
    # without a dense head: the global pooling's output
    del model.graph.node[3:]
    model.graph.output[0].name = "gap"
    assert penultimate_tensor(model) == "gap"


# --- digits (self-contained) ------------------------------------------------------------------


def digits_cfg(digits, digits_config, calibration: Path) -> DoctorConfig:  # type: ignore[no-untyped-def]
    data = {
        "calibration": {"path": str(calibration), "limit": 64},
        "evaluation": {"path": str(digits["test"])},
    }
    return quantdoctor.load_config(digits_config(data=data))


def test_digits_good_set_has_no_error(digits, digits_config) -> None:  # type: ignore[no-untyped-def]
    result = run_checks(digits_cfg(digits, digits_config, digits["train"]))
    found = by_id(result)
    assert set(found) == {
        "calibration.too_few",
        "calibration.duplicates",
        "calibration.constant_images",
        "calibration.noise_images",
        "calibration.out_of_domain",
        "calibration.range_coverage",
        "calibration.direct_test",
    }
    assert not errors(result), errors(result)
    # 8x8 digits: a pair of nearly identical sixes may count as near duplicates, no more
    assert found["calibration.too_few"].evidence["distinct_images"] >= 62
    assert found["calibration.duplicates"].severity in ("ok", "info")
    assert found["calibration.noise_images"].severity == "ok"
    assert found["calibration.constant_images"].severity == "ok"
    assert found["calibration.out_of_domain"].evidence["p_value"] > 0.01
    direct = result.evidence["direct_test"]
    assert direct["scoring_images"] + direct["holdout_calibration_images"] == 898
    assert direct["given_ranges"]["ci95"][0] <= direct["given_ranges"]["value"]
    assert_json_plain(result)


def test_digits_one_image_copied_64_times(digits, digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = sorted(digits["train"].rglob("*.png"))[0]
    folder = copies(tmp_path / "dup", source, 64)
    result = run_checks(digits_cfg(digits, digits_config, folder))
    found = by_id(result)
    dup, few = found["calibration.duplicates"], found["calibration.too_few"]
    assert dup.severity == "error" and few.severity == "error"
    assert dup.evidence["distinct_images"] == 1 == few.evidence["distinct_images"]
    group = dup.evidence["groups"][0]
    assert group["kind"] == "exact" and group["size"] == 64
    assert all(source.name in f for f in group["files"])  # the offending files are named
    assert found["calibration.out_of_domain"].severity in ("warning", "error")


def test_digits_near_duplicates_are_grouped(digits, digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 32 images and a slightly brightened copy of each: no exact duplicate, 32 near pairs
    folder = tmp_path / "near"
    folder.mkdir()
    for i, path in enumerate(sorted(digits["train"].rglob("*.png"))[:32]):
        a = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
        Image.fromarray(a.astype(np.uint8)).save(folder / f"{i:03d}a.png")
        Image.fromarray(np.clip(a + 3, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}b.png")
    result = run_checks(digits_cfg(digits, digits_config, folder))
    dup = by_id(result)["calibration.duplicates"]
    assert dup.evidence["exact_groups"] == 0
    assert dup.evidence["near_groups"] >= 30
    assert dup.evidence["distinct_images"] <= 34
    assert dup.severity == "error"  # half the set is redundant
    pair = next(g for g in dup.evidence["groups"] if g["size"] == 2)["files"]
    assert Path(pair[0]).name[:3] == Path(pair[1]).name[:3]  # an image and its own copy
    assert by_id(result)["calibration.too_few"].severity == "warning"  # 32-34 distinct < 64


def test_digits_noise_images(digits, digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = save_pngs(tmp_path / "noise", noise_images(64, 8))
    result = run_checks(digits_cfg(digits, digits_config, folder))
    noise = by_id(result)["calibration.noise_images"]
    assert noise.severity == "error"
    assert noise.evidence["noise_images"] == 64
    assert len(noise.evidence["files"]) == 64 and noise.evidence["files"][0].endswith("000.png")
    assert by_id(result)["calibration.constant_images"].severity == "ok"
    assert by_id(result)["calibration.out_of_domain"].severity == "error"


def test_digits_single_colour_images(digits, digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = save_pngs(tmp_path / "flat", single_colour_images(64, 8))
    result = run_checks(digits_cfg(digits, digits_config, folder))
    found = by_id(result)
    assert found["calibration.constant_images"].severity == "error"
    assert found["calibration.constant_images"].evidence["constant_images"] == 64
    assert found["calibration.noise_images"].severity == "ok"
    # flat images are not reported again as near duplicates of each other
    assert found["calibration.duplicates"].evidence["near_groups"] == 0
    # ranges from flat images clip real activations (the MLP's argmax happens to survive it)
    coverage = found["calibration.range_coverage"]
    assert coverage.severity in ("warning", "error")
    assert coverage.evidence["clipped"][0]["fraction_outside"] > 0.01
    direct = result.evidence["direct_test"]
    assert direct["cost_ci95"][0] <= direct["cost_points"] <= direct["cost_ci95"][1]


def test_digits_without_calibration_folder_excludes_overlap(digits, digits_config) -> None:  # type: ignore[no-untyped-def]
    # No calibration folder: the engine calibrates on a sample of the evaluation images, which
    # must then stay out of every comparison (they would match by construction).
    cfg = quantdoctor.load_config(digits_config(data={"evaluation": {"path": str(digits["test"])}}))
    result = run_checks(cfg)
    assert result.evidence["calibration_images"] == 64
    assert result.evidence["held_out_evaluation_images"] <= 898 - 64
    direct = result.evidence["direct_test"]
    assert direct["evaluation_images_excluded_as_calibration_images"] >= 64
    assert not errors(result), errors(result)


def test_tiny_sets_do_not_break_the_checks(digits, digits_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = copies(tmp_path / "one", sorted(digits["train"].rglob("*.png"))[0], 1)
    data = {
        "calibration": {"path": str(folder)},
        "evaluation": {"path": str(digits["test"]), "limit": 20},
    }
    result = run_checks(quantdoctor.load_config(digits_config(data=data)))
    found = by_id(result)
    assert found["calibration.too_few"].severity == "error"
    assert found["calibration.out_of_domain"].severity == "info"  # one image: no test
    assert "calibration.direct_test" not in found
    assert "20 held-out" in result.evidence["direct_test"]["skipped"]
    assert_json_plain(result)


def test_percentile_calibration_is_not_reported_as_clipping(digits, digits_config) -> None:  # type: ignore[no-untyped-def]
    data = {
        "calibration": {"path": str(digits["train"]), "limit": 64},
        "evaluation": {"path": str(digits["test"])},
    }
    recipe = [{"calibration": {"method": "percentile", "percentile": 99.9}}]
    result = run_checks(quantdoctor.load_config(digits_config(data=data, recipe=recipe)))
    coverage = by_id(result)["calibration.range_coverage"]
    assert coverage.evidence["min_fraction_outside"] == pytest.approx(0.02)
    assert not errors(result), errors(result)


def test_checks_are_deterministic(digits, digits_config) -> None:  # type: ignore[no-untyped-def]
    cfg = digits_cfg(digits, digits_config, digits["train"])
    a, b = run_checks(cfg), run_checks(cfg)
    drop = ("timings_s",)
    assert {k: v for k, v in a.evidence.items() if k not in drop} == {
        k: v for k, v in b.evidence.items() if k not in drop
    }
    assert [f.evidence for f in a.findings] == [f.evidence for f in b.findings]


# --- real models (../shared/data) ---------------------------------------------------------

EXAMPLES = REPO / "examples"


def _export(tmp_path_factory: pytest.TempPathFactory, script: str, **kwargs: object) -> Path:
    missing = [
        m for m in ("torch", "efficientnet_lite_pytorch") if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[examples]'")
    spec = importlib.util.spec_from_file_location(f"calib_{script}", EXAMPLES / f"{script}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.export(tmp_path_factory.mktemp("models") / f"{script}.onnx", **kwargs)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory, "export_efficientnet_lite0")


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = SHARED_DATA / "cifar10" / "resnet20-12fca82f.th"
    return _export(tmp_path_factory, "export_resnet20", weights=weights)


@pytest.fixture(scope="module")
def imagenet_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The ImageNet sample split in two: 64 random images as the good calibration set, a
    labels file of the other 936 for evaluation; plus the bad calibration sets."""
    root = tmp_path_factory.mktemp("imagenet_sets")
    folder = SHARED_DATA / "imagenet-sample"
    files = sorted(folder.glob("*.JPEG"))
    rng = np.random.default_rng(0)
    chosen = {files[i].name for i in rng.choice(len(files), 64, replace=False)}
    good = root / "good"
    good.mkdir()
    for name in sorted(chosen):
        shutil.copyfile(folder / name, good / name)
    lines = (EXAMPLES / "imagenet_sample_labels.txt").read_text().splitlines()
    keep = [line for line in lines if line.split()[0].split(",")[0] not in chosen]
    assert len(keep) == len(lines) - 64
    (root / "eval_labels.txt").write_text("\n".join(keep) + "\n")
    cifar = sorted((SHARED_DATA / "cifar10" / "train").rglob("*.jpg"))
    out_of_domain = root / "cifar"
    out_of_domain.mkdir()
    for i in rng.choice(len(cifar), 64, replace=False):
        shutil.copyfile(cifar[i], out_of_domain / f"{cifar[i].parent.name}_{cifar[i].name}")
    return {
        "good": good,
        "labels": root / "eval_labels.txt",
        "duplicates": copies(root / "duplicates", good / sorted(chosen)[0], 64),
        "noise": save_pngs(root / "noise", noise_images(64, 256)),
        "flat": save_pngs(root / "flat", single_colour_images(64, 256)),
        "cifar": out_of_domain,
    }


@pytest.fixture(scope="module")
def cifar_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cifar_sets")
    train = SHARED_DATA / "cifar10" / "train"
    return {
        "good": train,
        "duplicates": copies(root / "duplicates", sorted(train.rglob("*.jpg"))[0], 64),
        "noise": save_pngs(root / "noise", noise_images(64, 32)),
        "flat": save_pngs(root / "flat", single_colour_images(64, 32)),
    }


def lite0_checks(model: Path, sets: dict[str, Path], which: str) -> CalibrationResult:
    cfg = quantdoctor.load_config(EXAMPLES / "efficientnet_lite0.yaml")
    data = DataConfig(
        calibration=ImageSourceConfig(path=sets[which], limit=64),
        evaluation=ImageSourceConfig(
            path=SHARED_DATA / "imagenet-sample", labels=sets["labels"], limit=500
        ),
    )
    result = run_checks(cfg.model_copy(update={"model": model, "data": data}))
    assert result.evidence["held_out_evaluation_images"] == 500  # no overlap with calibration
    print(f"\nlite0/{which}: {direct_numbers(result)}")  # the measurement, shown with -s
    assert_json_plain(result)
    return result


def resnet20_checks(model: Path, sets: dict[str, Path], which: str) -> CalibrationResult:
    cfg = quantdoctor.load_config(EXAMPLES / "resnet20_cifar10.yaml")
    data = DataConfig(
        calibration=ImageSourceConfig(path=sets[which], limit=64),
        evaluation=ImageSourceConfig(path=SHARED_DATA / "cifar10" / "test"),
    )
    result = run_checks(cfg.model_copy(update={"model": model, "data": data}))
    assert result.evidence["held_out_evaluation_images"] == 2000
    print(f"\nresnet20/{which}: {direct_numbers(result)}")
    assert_json_plain(result)
    return result


def direct_numbers(result: CalibrationResult) -> str:
    d = result.evidence["direct_test"]
    return (
        f"float {d['float']['value']:.1f}, given {d['given_ranges']['value']:.1f} "
        f"{d['given_ranges']['ci95']} vs held-out "
        f"{d['holdout_ranges']['value']:.1f} {d['holdout_ranges']['ci95']}: cost "
        f"{d['cost_points']:+.2f} {d['cost_ci95']} p={d['p_value']:.2g}"
    )


@pytest.mark.shared_data
def test_lite0_good_set(lite0: Path, imagenet_sets: dict[str, Path]) -> None:
    result = lite0_checks(lite0, imagenet_sets, "good")
    assert not errors(result), errors(result)
    found = by_id(result)
    for check in ("duplicates", "constant_images", "noise_images"):
        assert found[f"calibration.{check}"].severity == "ok", found[f"calibration.{check}"].title
    assert found["calibration.out_of_domain"].severity in ("ok", "info")
    assert found["calibration.direct_test"].severity in ("ok", "info"), direct_numbers(result)
    assert result.evidence["feature_tensor"] == "/Flatten_output_0"  # found from the graph


@pytest.mark.shared_data
def test_lite0_one_image_repeated(lite0: Path, imagenet_sets: dict[str, Path]) -> None:
    result = lite0_checks(lite0, imagenet_sets, "duplicates")
    found = by_id(result)
    assert found["calibration.duplicates"].severity == "error"
    assert found["calibration.duplicates"].evidence["groups"][0]["size"] == 64
    assert found["calibration.too_few"].severity == "error"
    assert found["calibration.too_few"].evidence["distinct_images"] == 1
    # one scene's ranges clip the activations of others
    assert found["calibration.range_coverage"].severity in ("warning", "error")
    # measured here: 5.5 points (95% CI 3.2 … 8.0) of hailo8 top-1 for this image's ranges
    direct = found["calibration.direct_test"]
    assert direct.severity == "error", direct_numbers(result)
    assert direct.evidence["cost_ci95"][0] > 1.0


@pytest.mark.shared_data
def test_lite0_noise_images(lite0: Path, imagenet_sets: dict[str, Path]) -> None:
    result = lite0_checks(lite0, imagenet_sets, "noise")
    found = by_id(result)
    assert found["calibration.noise_images"].severity == "error"
    assert found["calibration.noise_images"].evidence["noise_images"] == 64
    assert found["calibration.constant_images"].severity == "ok"
    direct = found["calibration.direct_test"]
    assert direct.severity == "error", direct_numbers(result)
    assert direct.evidence["cost_ci95"][0] > 5.0  # measured: 11 points (7.8 … 14.9)


@pytest.mark.shared_data
def test_lite0_single_colour_images(lite0: Path, imagenet_sets: dict[str, Path]) -> None:
    result = lite0_checks(lite0, imagenet_sets, "flat")
    found = by_id(result)
    assert found["calibration.constant_images"].severity == "error"
    assert found["calibration.constant_images"].evidence["constant_images"] == 64
    assert found["calibration.noise_images"].severity == "ok"
    assert found["calibration.range_coverage"].severity == "error"
    direct = found["calibration.direct_test"]
    assert direct.severity == "error", direct_numbers(result)
    assert direct.evidence["cost_ci95"][0] > 20.0  # measured: 57 points (52 … 62)


@pytest.mark.shared_data
def test_lite0_cifar_images_are_out_of_domain(lite0: Path, imagenet_sets: dict[str, Path]) -> None:
    result = lite0_checks(lite0, imagenet_sets, "cifar")
    found = by_id(result)
    ood = found["calibration.out_of_domain"]
    assert ood.severity == "error", ood.title
    assert ood.evidence["p_value"] < 0.01
    assert ood.evidence["energy_coefficient"] > 0.05
    sizes = ood.evidence["input_statistics"]["original_size"]
    assert sizes["calibration"]["median_original_hw"] == [32.0, 32.0]
    assert any("upscaled" in note for note in ood.evidence["input_differences"])
    for check in ("duplicates", "constant_images", "noise_images"):
        assert found[f"calibration.{check}"].severity in ("ok", "info")
    assert "cost_points" in result.evidence["direct_test"], direct_numbers(result)


@pytest.mark.shared_data
def test_resnet20_good_set(resnet20: Path, cifar_sets: dict[str, Path]) -> None:
    result = resnet20_checks(resnet20, cifar_sets, "good")
    assert not errors(result), errors(result)
    found = by_id(result)
    assert found["calibration.out_of_domain"].severity == "ok"
    assert found["calibration.duplicates"].severity in ("ok", "info")
    assert found["calibration.direct_test"].severity in ("ok", "info"), direct_numbers(result)
    assert result.evidence["feature_tensor"] == "/Flatten_output_0"


@pytest.mark.shared_data
def test_resnet20_one_image_repeated(resnet20: Path, cifar_sets: dict[str, Path]) -> None:
    result = resnet20_checks(resnet20, cifar_sets, "duplicates")
    found = by_id(result)
    assert found["calibration.duplicates"].severity == "error"
    assert found["calibration.too_few"].severity == "error"
    assert found["calibration.out_of_domain"].severity == "error"
    direct = result.evidence["direct_test"]
    assert direct["cost_ci95"][0] <= direct["cost_points"] <= direct["cost_ci95"][1]


@pytest.mark.shared_data
def test_resnet20_noise_images(resnet20: Path, cifar_sets: dict[str, Path]) -> None:
    result = resnet20_checks(resnet20, cifar_sets, "noise")
    found = by_id(result)
    assert found["calibration.noise_images"].severity == "error"
    assert found["calibration.noise_images"].evidence["noise_images"] == 64
    assert found["calibration.out_of_domain"].severity == "error"
    direct = result.evidence["direct_test"]
    assert direct["cost_ci95"][0] <= direct["cost_points"] <= direct["cost_ci95"][1]


@pytest.mark.shared_data
def test_resnet20_single_colour_images(resnet20: Path, cifar_sets: dict[str, Path]) -> None:
    result = resnet20_checks(resnet20, cifar_sets, "flat")
    found = by_id(result)
    assert found["calibration.constant_images"].severity == "error"
    assert found["calibration.noise_images"].severity == "ok"
    assert found["calibration.range_coverage"].severity in ("warning", "error")
    direct = result.evidence["direct_test"]
    assert direct["cost_ci95"][0] <= direct["cost_points"] <= direct["cost_ci95"][1]
