"""Quantization-aware training (QAT) of ResNet-20 with your own labels and training loop:
``to_torch`` → a short training loop on the CIFAR-10 training JPEGs → ``save_trained_weights``
/ ``from_torch`` → ``quantdoctor evaluate``.

What it does
    1. Writes a variant of ``examples/resnet20_cifar10.yaml`` into ``--out`` (``before.yaml``)
       whose recipe quantizes the weights of every layer to 4 bits
       (``quantization_param: {layers: ["*"], precision: a8_w4}``, hailo8: per-tensor
       symmetric weights, uint8 activations): int8 is nearly lossless on ResNet-20, 4-bit
       weights are not, so QAT has something to recover.
    2. Before: ``quantdoctor.evaluate`` (the three-way test: native and quantized top-1 on
       the 2000 CIFAR-10 test JPEGs, each with its 95% bootstrap CI, and the paired drop).
    3. ``quantdoctor.train.to_torch(engine)``: the torch copy of the quantized model
       (fake quantization at exactly the QDQ model's points, straight-through gradients),
       verified against ONNX Runtime before use.
    4. Trains it on the 1000 training JPEGs (100 per class) with their folder labels:
       cross-entropy on the labels plus distillation from the float model (ONNX Runtime, the
       fp_optimized model), Adam, cosine learning rate, random flips and shifts. The images
       are fed exactly as quantdoctor feeds the model: the training folder is registered as
       a split of the same engine (``engine.add_split``) and batches come from
       ``engine.batches`` (the config's preprocessing). The test images are not looked at
       during training (no early stopping on them).
    5. After: ``save_trained_weights`` writes the float model with the trained weights;
       ``after.yaml`` adds the recipe line ``trained_weights: {model: ...}``, so
       ``quantdoctor evaluate after.yaml`` quantizes the trained weights with the same recipe
       (exactly the module's quantization: the scales are not learned) and measures them
       against the *original* float model (native), with CIs. The command line is printed.
    6. Check: ``from_torch`` → ``resnet20_qat.qdq.onnx``; ONNX Runtime on it must reproduce
       the module's quant-mode predictions on the test images (top-1 agreement) and the
       quantized top-1 of step 5.

Measured (``--epochs 4``, the default; 2 CPU cores shared with other jobs; 2000 test images)
    before: native 81.35% [79.60, 83.00], quantized (a8_w4) 72.30% [70.35, 74.30]: a drop of
            9.05 points [7.15, 10.90] (McNemar p = 8e-23)
    after:  native 81.35% [79.60, 83.00], quantized (a8_w4) 81.95% [80.25, 83.50]: +0.60
            points [-0.80, 2.00] (p = 0.44, within noise of the float model); the int8
            context (ONNX Runtime's integer kernels) gives the same 81.95%
    check:  the from_torch QDQ model is the one ``after.yaml`` evaluates (same initializers);
            ONNX Runtime on it agrees with the module on 100% of the test images
    time:   4.2 min in all (3 min CPU): evaluate before 8 s, to_torch 5 s, training 141 s
            (23-47 s per epoch), evaluate after 13 s, from_torch check 87 s; 6.2 min under
            heavier load (training 292 s). ``--limit 10 --epochs 1``: about 5 s.

How to run
    pip install -e '.[train]'          # torch (CPU is enough)
    # the model: examples/models/resnet20_cifar10.onnx, exported first when absent
    # (examples/export_resnet20.py; --model PATH for another place)
    python examples/qat_resnet20.py --out qat_out        # about 4 minutes on 2 cores
    python examples/qat_resnet20.py --limit 10 --epochs 1 --out /tmp/qat_smoke  # smoke run
    quantdoctor evaluate qat_out/after.yaml              # the QAT result, again
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("QUANTDOCTOR_DATA", REPO.parent / "shared" / "data"))
CONFIG = REPO / "examples" / "resnet20_cifar10.yaml"
MODEL = REPO / "examples" / "models" / "resnet20_cifar10.onnx"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Timer:
    """Wall time per phase."""

    phases: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def run(self, name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        self.phases[name] = time.perf_counter() - t0
        print(f"  [{name}: {self.phases[name]:.1f} s]", flush=True)
        return out

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


# --- configs -------------------------------------------------------------------------------
def write_configs(
    out: pathlib.Path,
    model: pathlib.Path,
    precision: str,
    limit: int | None,
    trained: pathlib.Path,
) -> tuple[pathlib.Path, pathlib.Path]:
    """``before.yaml`` (the ResNet-20 config with ``precision`` on every layer) and
    ``after.yaml`` (the same plus ``trained_weights``), absolute paths, in ``out``.
    ``limit``: that many test images (a seeded sample) and calibration images at most."""
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    raw["model"] = str(model)
    raw["data"] = {
        "calibration": {"path": str(DATA / "cifar10" / "train")},
        "evaluation": {"path": str(DATA / "cifar10" / "test")},
    }
    recipe = list(raw["recipe"])
    if limit:
        raw["data"]["evaluation"]["limit"] = limit
        for step in recipe:
            if "calibration" in step:
                step["calibration"]["size"] = min(step["calibration"].get("size", 64), limit)
    raw["recipe"] = [*recipe, {"quantization_param": {"layers": ["*"], "precision": precision}}]
    paths = []
    for name, extra in (("before", []), ("after", [{"trained_weights": {"model": str(trained)}}])):
        cfg = {
            **raw,
            "recipe": raw["recipe"] + extra,
            "report": {"dir": str(out / f"report_{name}")},
        }
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


# --- evaluation ----------------------------------------------------------------------------
def evaluate(config: pathlib.Path) -> dict[str, Any]:
    """``quantdoctor evaluate``: native and quantized top-1 (95% CI) and the paired drop."""
    import quantdoctor

    report = quantdoctor.evaluate(quantdoctor.load_config(config))
    # quantized against its float reference: native here (the recipe has no float transforms)
    cmp = next(c for c in report.comparisons if c["context"] == "quantized")
    return {
        "native": report.contexts["native"],
        "quantized": report.contexts["quantized"],
        "difference": cmp["difference"],
        "difference_ci95": cmp["ci95"],
    }


def show(name: str, result: dict[str, Any]) -> None:
    def fmt(ctx: Any) -> str:
        return f"{ctx.value:6.2f}%  [{ctx.ci95[0]:.2f}, {ctx.ci95[1]:.2f}]"

    lo, hi = result["difference_ci95"]
    print(f"  {name:6s} native    {fmt(result['native'])}  (n = {result['native'].n})")
    print(f"  {name:6s} quantized {fmt(result['quantized'])}")
    print(f"  {name:6s} drop      {-result['difference']:6.2f}   [{-hi:.2f}, {-lo:.2f}] points")


# --- training ------------------------------------------------------------------------------
def augment(pixels: np.ndarray, rng: np.random.Generator, shift: int = 4) -> np.ndarray:
    """Random horizontal flips and shifts (zero-padded by ``shift``, cropped back) of a uint8
    NHWC batch, before the preprocessing."""
    n, h, w, _ = pixels.shape
    flip = rng.random(n) < 0.5
    out = pixels.copy()
    out[flip] = out[flip, :, ::-1]
    if shift:
        padded = np.pad(out, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
        dy, dx = rng.integers(0, 2 * shift + 1, size=(2, n))
        out = np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    return out


def minibatches(
    engine: Any, images: Any, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled, augmented (model input, labels) batches, preprocessed by ``engine.batches``
    (exactly what the engine feeds the fp_optimized and quantized contexts)."""
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch_size):
        batch = images.subset(order[start : start + batch_size])
        batch = dataclasses.replace(batch, stored=augment(batch.pixels, rng), rows=None)
        x = np.concatenate(list(engine.batches(batch, "fp_optimized")))
        yield x, batch.labels


def train(
    module: Any,
    engine: Any,
    images: Any,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    distill: float,
    temperature: float = 4.0,
    seed: int = 0,
) -> None:
    """Cross-entropy on the labels (+ ``distill`` × distillation from the float model),
    Adam with a cosine schedule, the module in quant mode throughout."""
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    options = ort.SessionOptions()  # no busy-waiting threads competing with torch's
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    teacher = ort.InferenceSession(
        engine.model("fp_optimized").SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    output = module.output_names[0]
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps = epochs * -(-len(images) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    module.quant_mode().train()
    for epoch in range(epochs):
        t0, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in minibatches(engine, images, batch_size, rng):
            labels = torch.from_numpy(y.astype(np.int64))
            logits = module(torch.from_numpy(x))[output]
            loss = F.cross_entropy(logits, labels)
            if distill:
                soft = torch.from_numpy(teacher.run(None, {module.input_names[0]: x})[0])
                kd = F.kl_div(
                    F.log_softmax(logits / temperature, 1),
                    F.log_softmax(soft / temperature, 1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = loss + distill * temperature**2 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(y)
        print(
            f"  epoch {epoch + 1}/{epochs}: loss {total / seen:.3f}, quantized train top-1 "
            f"{100 * correct / seen:.1f}% ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    module.eval()


def load_training_split(engine: Any, limit: int | None) -> Any:
    """The CIFAR-10 training JPEGs with their folder labels, registered as the engine's
    split ``train`` (decoded and resized by the engine's preprocessor)."""
    from quantdoctor.data.imageset import load_images
    from quantdoctor.data.sources import read_classification_source

    source = read_classification_source(DATA / "cifar10" / "train")
    # labels are class-folder indices (sorted names): the same classes, same order, as the
    # test folders that quantdoctor scores against
    if not tuple(source.class_names) == tuple(engine.class_names or ()) == CLASSES:
        raise SystemExit(
            f"training classes {source.class_names} differ from the test classes "
            f"{engine.class_names} or from {CLASSES}"
        )
    records = source.records
    if limit:
        rng = np.random.default_rng(0)
        records = [records[i] for i in np.sort(rng.choice(len(records), limit, replace=False))]
    engine.add_split("train", load_images(records, engine.preprocessor, what="training images"))
    return engine.images("train")


# --- the round trip check ------------------------------------------------------------------
def check_qdq(
    module: Any, engine: Any, path: pathlib.Path, after_cfg: pathlib.Path
) -> dict[str, Any]:
    """``from_torch`` → ONNX. Is it the model that ``quantdoctor evaluate after.yaml``
    quantizes (same graph, same initializers)? ONNX Runtime on it (QDQ kept, as the
    ``quantized`` context runs it) against the module's quant-mode outputs on the test
    images: top-1 agreement, and its top-1 against the labels."""
    import onnx
    from onnx import numpy_helper

    import quantdoctor
    from quantdoctor.engine.engine import Engine
    from quantdoctor.engine.runner import OrtRunner
    from quantdoctor.train import from_torch
    from quantdoctor.train.convert import run_module

    qdq = from_torch(module, engine)
    onnx.save(qdq, str(path))
    evaluated = Engine(quantdoctor.load_config(after_cfg)).model("quantized")
    mine = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    theirs = {i.name: numpy_helper.to_array(i) for i in evaluated.graph.initializer}
    same = (
        [n.op_type for n in qdq.graph.node] == [n.op_type for n in evaluated.graph.node]
        and mine.keys() == theirs.keys()
        and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    )
    images = engine.images("evaluation")
    runner = OrtRunner(qdq, "emulate")
    name = module.output_names[0]
    got = np.concatenate([runner.run(x)[name] for x in engine.batches(images)])
    ref = run_module(module.quant_mode(), engine, images)[name]
    return {
        "same_as_evaluated": same,
        "agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "top1": float(100 * (got.argmax(1) == images.labels).mean()),
    }


def export_resnet20(path: pathlib.Path) -> pathlib.Path:
    """The pretrained ResNet-20 exported by ``examples/export_resnet20.py``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "export_resnet20", REPO / "examples" / "export_resnet20.py"
    )
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("export_resnet20", script)
    spec.loader.exec_module(script)
    return script.export(path, DATA / "cifar10" / "resnet20-12fca82f.th")


# --- main ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("qat_resnet20_out"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--precision", default="a8_w4", help="for every layer (default a8_w4)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam (default 1e-4)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument(
        "--distill", type=float, default=1.0, help="weight of the distillation loss (0: off)"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only this many test, training and calibration images (a smoke run)",
    )
    parser.add_argument(
        "--model", type=pathlib.Path, default=MODEL, help="the ResNet-20 ONNX (exported if absent)"
    )
    args = parser.parse_args(argv)

    import quantdoctor
    from quantdoctor.engine.engine import Engine
    from quantdoctor.train import save_trained_weights, to_torch

    if not (DATA / "cifar10" / "train").is_dir():
        raise SystemExit(f"CIFAR-10 JPEGs not found under {DATA} (set QUANTDOCTOR_DATA)")
    timer = Timer()
    model = args.model.resolve()
    if not model.is_file():
        print(f"0. exporting ResNet-20 to {model} (examples/export_resnet20.py)", flush=True)
        timer.run("export", export_resnet20, model)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    trained = out / "resnet20_qat.onnx"
    before_cfg, after_cfg = write_configs(out, model, args.precision, args.limit, trained)

    print(f"1. before: quantdoctor evaluate {before_cfg}", flush=True)
    before = timer.run("evaluate before", evaluate, before_cfg)
    show("before", before)

    print("2. to_torch (verified against ONNX Runtime)", flush=True)
    engine = Engine(quantdoctor.load_config(before_cfg))
    module = timer.run("to_torch", to_torch, engine)
    print(f"  {module.verification.summary()}")

    print(f"3. training on the CIFAR-10 training JPEGs ({args.epochs} epochs)", flush=True)
    images = timer.run("decode training images", load_training_split, engine, args.limit)
    timer.run(
        "train",
        train,
        module,
        engine,
        images,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        distill=args.distill,
    )

    print(f"4. after: quantdoctor evaluate {after_cfg}", flush=True)
    save_trained_weights(module, trained)
    after = timer.run("evaluate after", evaluate, after_cfg)
    show("after", after)

    print("5. from_torch → ONNX Runtime vs the module", flush=True)
    qdq_path = out / "resnet20_qat.qdq.onnx"
    check = timer.run("from_torch check", check_qdq, module, engine, qdq_path, after_cfg)
    print(
        f"  {qdq_path.name}: the model after.yaml evaluates: "
        f"{'yes' if check['same_as_evaluated'] else 'NO'}; ONNX Runtime vs the module: top-1 "
        f"agreement {100 * check['agreement']:.2f}%; top-1 {check['top1']:.2f}% "
        f"(quantdoctor evaluate: {after['quantized'].value:.2f}%)"
    )

    gain = after["quantized"].value - before["quantized"].value
    print(
        f"\nquantized top-1 {before['quantized'].value:.2f}% → {after['quantized'].value:.2f}% "
        f"({gain:+.2f} points); drop vs native {-before['difference']:.2f} → "
        f"{-after['difference']:.2f} points"
    )
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timer.phases.items()))
    print(f"total {timer.total:.0f} s ({timer.total / 60:.1f} min)")
    print(f"again: quantdoctor evaluate {after_cfg}")
    return {
        "before": before,
        "after": after,
        "check": check,
        "times": dict(timer.phases),
        "total_s": timer.total,
    }


if __name__ == "__main__":
    main()
