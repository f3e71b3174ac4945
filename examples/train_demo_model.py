"""Train the small CNN that ``quantdoctor demo`` ships, on scikit-learn's bundled digits.

What it does
    Loads ``sklearn.datasets.load_digits()`` (1797 greyscale 8x8 images, values 0..16, ten
    classes), converts the pixels to uint8 0..255 and splits them with a fixed seed, stratified
    by class, into train / calibration / evaluation images. It writes them to
    ``src/quantdoctor/demo/digits.npz`` (compressed: ``images`` [1797, 8, 8] uint8,
    ``targets`` [1797] uint8, ``split`` [1797] uint8 with 0 = train, 1 = calibration,
    2 = evaluation, and ``reference_top1``: the float top-1 on the evaluation images), so that
    the demo runs offline without scikit-learn.

    The network: three blocks Conv3x3 + BatchNorm + ReLU (16/32/64 channels) with a 2x2
    max-pool after the first two, global average pooling and ``Linear(64, 10)``. Trained with
    Adam (one-cycle schedule, random shifts of up to 2 pixels) for 20 epochs with a fixed
    seed: under a minute on two CPU cores. It is exported with the TorchScript ONNX
    exporter (opset 17, dynamic batch, BatchNorm nodes kept: quantdoctor folds them) to
    ``src/quantdoctor/demo/digits_cnn.onnx`` (about 100 KB); the script checks that ONNX
    Runtime reproduces PyTorch's predictions and prints the float top-1.

Preprocessing the model expects (the host pipeline the demo's doctor.yaml declares)
    the 8x8 image decoded as RGB (three equal channels), resized to 32x32 (bilinear, Pillow:
    quantdoctor's own :class:`~quantdoctor.data.Preprocessor` does it here, so training and
    the demo see the same pixels), then ``(x - 127.5) / 127.5`` per channel in 0..255 units
    (= ``x / 255`` then mean 0.5, std 0.5), NCHW. Input ``input`` [N, 3, 32, 32], output
    ``logits`` [N, 10] (pre-softmax); class i is the digit i.

How to run
    pip install -e '.[examples,dev]'    # torch (CPU) and scikit-learn
    python examples/train_demo_model.py [--out-dir src/quantdoctor/demo] [--epochs 20]
"""

from __future__ import annotations

import argparse
import pathlib
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "quantdoctor" / "demo"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
SIZE = 32
#: (x - MEAN) / STD in 0..255 units: x / 255 normalized with mean 0.5, std 0.5.
MEAN = 127.5
STD = 127.5
#: Images per split (stratified; the rest is for training).
CALIBRATION_IMAGES = 128
EVALUATION_IMAGES = 600
TRAIN, CALIBRATION, EVALUATION = 0, 1, 2


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 0..255 images [N, 8, 8] and their targets."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.clip(np.round(data.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
    return pixels, data.target.astype(np.uint8)


def make_split(targets: np.ndarray, seed: int = 0) -> np.ndarray:
    """Split codes per image (0 train, 1 calibration, 2 evaluation), stratified by class."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(targets))
    rest, evaluation = train_test_split(
        index, test_size=EVALUATION_IMAGES, stratify=targets, random_state=seed
    )
    train, calibration = train_test_split(
        rest, test_size=CALIBRATION_IMAGES, stratify=targets[rest], random_state=seed
    )
    split = np.full(len(targets), TRAIN, np.uint8)
    split[calibration] = CALIBRATION
    split[evaluation] = EVALUATION
    assert len(train) + len(calibration) + len(evaluation) == len(targets)
    return split


def model_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, 8, 8] → float32 [N, 3, 32, 32]: exactly the demo's host preprocessing."""
    from PIL import Image

    from quantdoctor.config import PreprocessConfig
    from quantdoctor.data import Preprocessor

    pre = Preprocessor(
        PreprocessConfig(
            resize={"size": SIZE, "interpolation": "bilinear"}, mean=MEAN, std=STD
        )
    )
    resized = np.stack([pre.geometry(Image.fromarray(p, "L").convert("RGB"))[0] for p in pixels])
    return pre.finish(resized)


def build_model() -> torch.nn.Module:
    """Conv-BN-ReLU (3→16), pool, Conv-BN-ReLU (16→32), pool, Conv-BN-ReLU (32→64), global
    average pool, Linear(64→10): 24k parameters."""
    from torch import nn

    layers: list[nn.Module] = []
    in_ch = 3
    for out_ch, pool in ((16, True), (32, True), (64, False)):
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)]
        layers.append(nn.ReLU())
        if pool:
            layers.append(nn.MaxPool2d(2))
        in_ch = out_ch
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, 10)]
    return nn.Sequential(*layers)


def train(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float = 5e-3,
    batch: int = 64,
    seed: int = 0,
) -> torch.nn.Module:
    """Adam with a one-cycle schedule; each batch shifted by up to 2 pixels (pad + crop)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    # The padding value is the normalized black background, not 0 (= mid grey).
    background = float((0 - MEAN) / STD)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x) - batch + 1, batch):
            idx = order[start : start + batch]
            xb = F.pad(xt[idx], (2, 2, 2, 2), value=background)
            dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()
            xb = xb[:, :, dy : dy + SIZE, dx : dx + SIZE]
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def export(model: torch.nn.Module, path: pathlib.Path) -> None:
    """TorchScript exporter, opset 17, dynamic batch; BatchNorm nodes kept (PRESERVE)."""
    import warnings

    import torch

    # The TorchScript exporter is deprecated but is the one that keeps a plain Conv/BN graph;
    # its constant-folding note is about models in training mode (this one is in eval mode).
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
    warnings.filterwarnings("ignore", message="It is recommended that constant folding")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        )


def main() -> None:
    import onnxruntime as ort
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    pixels, targets = load_digits_uint8()
    split = make_split(targets, args.seed)
    x = model_input(pixels)
    tr, ev = split == TRAIN, split == EVALUATION
    model = train(build_model(), x[tr], targets[tr], args.epochs, seed=args.seed)
    logits = predict(model, x[ev])
    top1 = float((logits.argmax(1) == targets[ev]).mean() * 100)

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "digits_cnn.onnx"
    export(model, onnx_path)
    # The shipped file must compute what PyTorch computed.
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = session.run(None, {INPUT_NAME: x[ev]})[0]
    agree = float((ort_logits.argmax(1) == logits.argmax(1)).mean() * 100)
    if agree < 100.0 or not np.allclose(ort_logits, logits, atol=1e-3):
        raise SystemExit(f"ONNX Runtime does not reproduce PyTorch (top-1 agreement {agree}%)")
    np.savez_compressed(
        out / "digits.npz",
        images=pixels,
        targets=targets,
        split=split,
        reference_top1=np.float64(top1),
    )
    counts = {name: int((split == code).sum()) for name, code in
              (("train", TRAIN), ("calibration", CALIBRATION), ("evaluation", EVALUATION))}
    print(
        f"float top-1 {top1:.2f}% on {counts['evaluation']} evaluation images "
        f"(train {counts['train']}, calibration {counts['calibration']}); wrote {onnx_path} "
        f"({onnx_path.stat().st_size / 1024:.0f} KB) and {out / 'digits.npz'} "
        f"({(out / 'digits.npz').stat().st_size / 1024:.0f} KB) in "
        f"{time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
