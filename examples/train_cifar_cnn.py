"""Train a small CIFAR-10 CNN with or without BatchNorm on the JPEGs in ../shared/data/cifar10
and export it to ONNX: twins for the ``layers.bn_missing`` check.

What it does
    Builds a 5-convolution VGG-style network (3x3 convolutions, 16/32/64 channels, ReLU, two
    max-pools, global average pool, Linear(64, 10)), with a BatchNorm after every convolution
    (``--batchnorm``) or without any (``--no-batchnorm``; the convolutions then have biases),
    trains it on the 1000 training JPEGs (100 per class; random crops and flips) with Adam and
    the same seed, schedule and learning rate for both twins (10 epochs, under a minute on two
    CPU cores), and exports it with the
    TorchScript ONNX exporter (opset 17, dynamic batch, input ``input`` [N, 3, 32, 32],
    output ``logits`` [N, 10]).

    By default the BatchNorm twin keeps its ``BatchNormalization`` nodes in the ONNX graph
    (graph evidence for the check); ``--fold-bn`` lets the exporter fold them into the
    convolutions, as deployment exports usually do, so that only the activation statistics
    can tell the twins apart.

    The float accuracy on the 2000 test JPEGs is printed; it is modest (measured: 29% without,
    40% with BatchNorm after 10 epochs on 1000 images) and irrelevant here: the twins exist to
    compare the statistics of their pre-activations, not to be good classifiers.

Preprocessing the models expect
    RGB, ``x / 255``, then mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), NCHW (the
    same as ``examples/resnet20_cifar10.yaml``).

How to run
    pip install -e '.[train]'          # torch (CPU is enough)
    python examples/train_cifar_cnn.py --no-batchnorm -o cnn_nobn.onnx
    python examples/train_cifar_cnn.py --batchnorm -o cnn_bn.onnx
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = (
    pathlib.Path(os.environ.get("QUANTDOCTOR_DATA", REPO.parent / "shared" / "data")) / "cifar10"
)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def load_split(root: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images of ``root/<split>/<class>/*.jpg`` as float32 NCHW (normalized) and labels."""
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((root / split / name).glob("*.jpg")):
            with Image.open(path) as im:
                xs.append(np.asarray(im.convert("RGB"), np.float32))
            ys.append(label)
    if not xs:
        raise FileNotFoundError(f"no CIFAR-10 JPEGs under {root / split}")
    x = (np.stack(xs) / 255.0 - MEAN) / STD
    return x.transpose(0, 3, 1, 2).astype(np.float32), np.asarray(ys, np.int64)


def build_model(batchnorm: bool) -> torch.nn.Module:
    """Conv(3→16)-Conv(16→16)-pool-Conv(16→32)-Conv(32→32)-pool-Conv(32→64)-GAP-Linear(64→10),
    each convolution followed by ReLU, with or without a BatchNorm in between."""
    from torch import nn

    layers: list[nn.Module] = []
    in_ch = 3
    for out_ch, pool in ((16, False), (16, True), (32, False), (32, True), (64, False)):
        layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU())
        if pool:
            layers.append(nn.MaxPool2d(2))
        in_ch = out_ch
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, len(CLASSES))]
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            # He initialization, the usual choice for ReLU networks (PyTorch's default
            # shrinks the signal at every layer, so the twin without BatchNorm barely learns).
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def train(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 10,
    lr: float = 3e-3,
    batch: int = 100,
    seed: int = 0,
) -> torch.nn.Module:
    """Adam (PyTorch defaults, one-cycle learning-rate schedule) with random 4-pixel-padded
    crops and horizontal flips; the same recipe for both twins."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x) - batch + 1, batch):
            idx = order[start : start + batch]
            xb = F.pad(xt[idx], (4, 4, 4, 4))
            dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
            xb = xb[:, :, dy : dy + 32, dx : dx + 32]
            if torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i : i + 500])) for i in range(0, len(x), 500)])
    return float((pred.argmax(1).numpy() == y).mean() * 100)


def export(
    path: pathlib.Path,
    *,
    batchnorm: bool,
    data: pathlib.Path = DEFAULT_DATA,
    epochs: int = 10,
    seed: int = 0,
    fold_bn: bool = False,
    model: torch.nn.Module | None = None,
) -> pathlib.Path:
    """Train (unless ``model`` is given) and export one twin to ``path``; returns ``path``.

    ``fold_bn``: let the exporter fold BatchNorm into the convolutions (no BatchNormalization
    node left in the graph)."""
    import torch

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model is None:
        torch.manual_seed(seed)
        x, y = load_split(pathlib.Path(data), "train")
        model = train(build_model(batchnorm), x, y, epochs=epochs, seed=seed)
    dummy = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            # EVAL folds BatchNorm into the convolutions; PRESERVE keeps the nodes (the model
            # is in eval mode, so they use their running statistics either way).
            training=(
                torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
            ),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        )
    return path


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, required=True)
    parser.add_argument("-o", "--output", type=pathlib.Path, required=True)
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold-bn", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    x, y = load_split(args.data, "train")
    model = train(build_model(args.batchnorm), x, y, epochs=args.epochs, seed=args.seed)
    xt, yt = load_split(args.data, "test")
    acc = accuracy(model, xt, yt)
    export(args.output, batchnorm=args.batchnorm, fold_bn=args.fold_bn, model=model)
    print(
        f"wrote {args.output} (batchnorm={args.batchnorm}): float top-1 {acc:.1f}% on "
        f"{len(yt)} test images, {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
