"""Retraining with BatchNorm: a BatchNorm inserted after convolutions of the trainable copy
(the checklist's advice for ``layers.bn_missing``), trained with it, and folded back into the
convolutions by :func:`~quantdoctor.train.from_torch`, so that the exported QDQ graph has the
structure it had before.

>>> names = bn_missing_layers(engine)              # what the check names  # doctest: +SKIP
>>> module = to_torch(engine, batchnorm=names)     # eval mode, quant mode  # doctest: +SKIP
>>> module.train()     # batch statistics; then QAT (float_mode(): plain)   # doctest: +SKIP
>>> qdq = from_torch(module.eval(), engine)        # BatchNorms folded in   # doctest: +SKIP

The BatchNorm sits on the convolution's output, before its fused activation and before the
activation quantizer of the layer's output. It is initialised from the data so that the
function does not change: running mean and variance are the per-channel statistics of the
convolution's output on the calibration images (float mode), and ``gamma = sqrt(var + eps)``,
``beta = mean``. In eval mode the BatchNorm is then the identity (bit for bit on the folded
weights: ``gamma / sqrt(running_var + eps)`` is exactly 1); in train mode it normalises with
the batch's statistics, close to the identity on typical batches.

Fake quantization applies to the *folded* weights, as the deployed model quantizes them
(BatchNorm folding for QAT: Jacob et al. 2018 §3.2, Krishnamoorthi 2018 §3.2; PyTorch's
``ConvBn2d``): with ``s = gamma / sqrt(running_var + eps)`` per output channel,

- eval mode (``module.eval()``, or a frozen BatchNorm ``bn.eval()``): the convolution runs
  with ``fq(W * s)`` and ``fq_int32(s * b + beta - s * running_mean)``, the weight scale
  computed from the folded weight: exactly what the QDQ model of :func:`from_torch`
  computes, so training in eval mode trains the deployed function;
- train mode: ``y = conv(x, fq(W * s)) / s + b`` and then the BatchNorm with the batch's
  statistics (which also updates the running ones): the quantization error of the deployed
  weights is seen, while the batch normalisation still conditions the gradients. The
  running statistics, not the batch's, fold the weights (folding with batch statistics
  would make the weights, and so their quantization grid, jitter from batch to batch);
- float mode: the plain convolution followed by the BatchNorm (train mode), or the folded
  float convolution (eval mode).

The activation quantizers keep their scales (they are learned only with
``learnable_scales``); a model saved with :func:`~quantdoctor.train.save_trained_weights` and
evaluated with the recipe line ``trained_weights`` is quantized with the same activation
ranges (calibrated on the original float model), as the module was.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import QuantdoctorError
from ..quant.plan import LayerInfo
from . import fake_quant as fq
from .interpreter import QuantizedTorchModel, _ActQuant, _key, _Node, _WeightQuant
from .ops import OPS

if TYPE_CHECKING:
    from ..data.imageset import ImageSet
    from ..engine.engine import Engine
    from ..report import Finding, Report

#: BatchNorm modules by the number of spatial dimensions of the convolution.
_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

BN_MISSING = "layers.bn_missing"


def bn_missing_layers(
    source: Engine | Finding | Report, *, unnormalized_only: bool = False, images: int = 64
) -> list[str]:
    """The convolutions that the check ``layers.bn_missing`` names: those the source graph
    shows without a BatchNorm (prediction layers excepted), or with ``unnormalized_only``
    only those of them with unnormalized pre-activations. ``source``: the check's finding,
    a report holding it, or an engine to run the check on (``images`` evaluation images,
    no metric measured)."""
    from ..report import Finding, Report

    if isinstance(source, Report):
        found = [f for f in source.findings if f.id == BN_MISSING]
        if not found:
            raise QuantdoctorError(
                f"the report has no {BN_MISSING} finding: run analyze or diagnose first"
            )
        source = found[0]
    if not isinstance(source, Finding):
        from ..checks.layers import LayerAnalysis
        from ..tasks import make_task

        source = LayerAnalysis(source, make_task(source.config), images, metrics=False).bn_missing()
    if source.id != BN_MISSING:
        raise QuantdoctorError(f"finding {source.id} is not {BN_MISSING}")
    return list(source.evidence["unnormalized" if unnormalized_only else "without_batchnorm"])


@dataclass
class _Inserted:
    """One BatchNorm after a convolution of the copy: where it sits and what it folds into."""

    layer: LayerInfo
    key: str  # in ``module.batchnorms``
    conv: _Node
    weight: str  # ONNX name of the convolution's float weight
    bias: str | None  # ONNX name of its float bias (None: it has none; folding adds one)
    quant: _WeightQuant | None  # the layer's weight quantizer (None: float weights)


class BatchNormTorchModel(QuantizedTorchModel):
    """A :class:`QuantizedTorchModel` with BatchNorms after some convolutions (made by
    :func:`insert_batchnorm`; see the module docstring). ``batchnorms``: the BatchNorm
    modules by key; :meth:`folded` gives a layer's folded weight and bias."""

    batchnorms: nn.ModuleDict
    inserted: dict[str, _Inserted]  # by layer (Conv node) name

    def batchnorm(self, layer: str) -> nn.modules.batchnorm._BatchNorm:
        """The BatchNorm after convolution ``layer``."""
        return self.batchnorms[self.inserted[layer].key]  # type: ignore[return-value]

    def folded(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Convolution ``layer``'s weight and bias with its BatchNorm (running statistics)
        folded in, and the per-channel factor ``s = gamma / sqrt(running_var + eps)``."""
        entry = self.inserted[layer]
        bn = self.batchnorms[entry.key]
        w = self.weights[self.param_keys[entry.weight]]
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w_fold = w * s.reshape(-1, *([1] * (w.ndim - 1)))
        shift = bn.bias - s * bn.running_mean  # 0 after the initialisation (s = 1, beta = mean)
        if entry.bias is None:
            return w_fold, shift, s
        return w_fold, s * self.weights[self.param_keys[entry.bias]] + shift, s

    def weight_scale(
        self,
        step: _WeightQuant,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As :meth:`QuantizedTorchModel.weight_scale`, of the folded weight for a
        convolution with a BatchNorm."""
        if weight is None and step.layer.name in self.inserted:
            weight, bias, _ = self.folded(step.layer.name)
        return super().weight_scale(step, weight, bias)

    def _run_step(
        self, step: _Node | _ActQuant | _WeightQuant, env: dict[str, torch.Tensor]
    ) -> None:
        if isinstance(step, _WeightQuant) and step.layer.name in self.inserted:
            return  # quantized with the folded weight where the convolution runs
        if isinstance(step, _Node) and step.op == "Conv" and step.name in self.inserted:
            self._run_conv(self.inserted[step.name], env)
            return
        super()._run_step(step, env)

    def _run_conv(self, entry: _Inserted, env: dict[str, torch.Tensor]) -> None:
        conv, bn = entry.conv, self.batchnorms[entry.key]
        x = self._get(conv.inputs[0], env)
        step = entry.quant
        quantize = self.quantize_weights and step is not None
        if bn.training and not quantize:  # the float convolution, then the BatchNorm
            w = self.weights[self.param_keys[entry.weight]]
            b = self.weights[self.param_keys[entry.bias]] if entry.bias is not None else None
            y = bn(OPS["Conv"]([x, w, b], conv.attrs, self.opset))
        else:
            w, b, s = self.folded(entry.layer.name)
            if quantize:
                assert step is not None
                scale = self.weight_scale(step, w, b)
                w = fq.fake_quantize_weight(w, scale, step.scheme.qmin, step.scheme.qmax, step.axis)
                if step.input_scale is not None and self.quantize_activations and not bn.training:
                    b = fq.fake_quantize_bias(b, self.scales[step.input_scale], scale)
            if bn.training:  # folded, quantized weights; unfolded; batch statistics
                shape = (1, -1) + (1,) * (w.ndim - 2)
                y = OPS["Conv"]([x, w, None], conv.attrs, self.opset) / s.reshape(shape)
                if entry.bias is not None:
                    y = y + self.weights[self.param_keys[entry.bias]].reshape(shape)
                y = bn(y)
            else:  # the deployed convolution
                y = OPS["Conv"]([x, w, b], conv.attrs, self.opset)
        env[conv.outputs[0]] = y


def _resolve(module: QuantizedTorchModel, names: Sequence[str]) -> list[LayerInfo]:
    """The Conv layers that ``names`` (layer names or fnmatch patterns) match, graph order."""
    convs = [layer for layer in module.layers if layer.op_type == "Conv"]
    chosen: set[str] = set()
    for name in names:
        hits = [layer.name for layer in convs if fnmatch.fnmatchcase(layer.name, name)]
        if hits:
            chosen.update(hits)
            continue
        other = [layer for layer in module.layers if fnmatch.fnmatchcase(layer.name, name)]
        if other:
            raise QuantdoctorError(
                f"batchnorm: '{name}' names no convolution (it matches the {other[0].op_type} "
                f"layer '{other[0].name}'); a BatchNorm goes after a Conv"
            )
        close = difflib.get_close_matches(name, [layer.name for layer in convs], n=3, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise QuantdoctorError(f"batchnorm: no convolution named '{name}'{hint}")
    return [layer for layer in convs if layer.name in chosen]


def _conv_statistics(
    module: QuantizedTorchModel,
    engine: Engine,
    images: ImageSet,
    outputs: list[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and (biased) variance of each tensor over the images, in float mode
    and eval mode (the module's modes are restored)."""
    sums = {name: [0.0, 0.0, 0] for name in outputs}  # sum, sum of squares, count
    flags = (module.quantize_activations, module.quantize_weights, module.training)
    module.float_mode().eval()
    try:
        with torch.no_grad():
            for x in engine.batches(images, "fp_optimized"):
                got = module.run({module.input_names[0]: torch.from_numpy(x)}, keep=outputs)
                for name, acc in sums.items():
                    t = got[name].double().movedim(1, 0).flatten(1)  # channels x values
                    acc[0] = acc[0] + t.sum(1).numpy()
                    acc[1] = acc[1] + t.square().sum(1).numpy()
                    acc[2] = acc[2] + t.shape[1]
    finally:
        module.quantize_activations, module.quantize_weights = flags[0], flags[1]
        module.train(flags[2])
    out = {}
    for name, (total, squares, n) in sums.items():
        mean = np.asarray(total) / max(n, 1)
        out[name] = (mean, np.maximum(np.asarray(squares) / max(n, 1) - mean * mean, 0.0))
    return out


def insert_batchnorm(
    module: QuantizedTorchModel,
    engine: Engine,
    layers: Sequence[str],
    images: ImageSet | None = None,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> BatchNormTorchModel:
    """Insert a BatchNorm after each convolution that ``layers`` names (layer names or
    fnmatch patterns; one that matches no convolution: :class:`QuantdoctorError` with the
    closest names), initialised on ``images`` (default: the calibration images) so that the
    function is preserved (see the module docstring). ``momentum``, ``eps``: the BatchNorm's.
    Changes ``module`` in place (its class becomes :class:`BatchNormTorchModel`) and returns
    it in eval mode (BatchNorm on its running statistics: the function :func:`from_torch`
    writes); ``module.train()`` trains with batch statistics."""
    chosen = _resolve(module, layers)
    if isinstance(module, BatchNormTorchModel):
        chosen = [layer for layer in chosen if layer.name not in module.inserted]
    weight_steps = {s.layer.name: s for s in module.weight_steps()}
    uses: dict[str, int] = {}
    for node in module.source_model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    entries = []
    for layer in chosen:
        conv = module._steps[module.node_step(layer.name)]
        assert isinstance(conv, _Node)
        step = weight_steps.get(layer.name)
        weight = step.weight if step is not None else conv.inputs[1]
        if weight not in module.param_keys:
            raise QuantdoctorError(
                f"batchnorm: the weight of '{layer.name}' is not a trainable parameter of the "
                "torch copy (weights stored dequantized, e.g. at 16 bits)"
            )
        if uses.get(weight, 0) > 1:
            raise QuantdoctorError(
                f"batchnorm: the weight '{weight}' of '{layer.name}' is shared with other "
                "nodes; a BatchNorm folded into it would change them too"
            )
        bias = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2] else None
        if step is not None:
            bias = step.bias
        elif bias is not None and bias not in module.param_keys:
            bias = None
        if bias is None and len(conv.inputs) > 2 and conv.inputs[2]:
            raise QuantdoctorError(
                f"batchnorm: the bias of '{layer.name}' is not a trainable parameter"
            )
        entries.append((layer, conv, weight, bias, step))
    if not entries:
        return module  # type: ignore[return-value]
    images = images if images is not None else engine.images("calibration")
    stats = _conv_statistics(module, engine, images, [c.outputs[0] for _, c, *_ in entries])
    if not isinstance(module, BatchNormTorchModel):
        module.__class__ = BatchNormTorchModel  # the same module, with the BatchNorm steps
        module.batchnorms = nn.ModuleDict()
        module.inserted = {}
    assert isinstance(module, BatchNormTorchModel)
    for layer, conv, weight, bias, step in entries:
        mean, var = stats[conv.outputs[0]]
        w = module.weights[module.param_keys[weight]]
        bn = _BATCHNORM[w.ndim - 2](w.shape[0], eps=eps, momentum=momentum)
        with torch.no_grad():
            bn.running_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            bn.running_var.copy_(torch.from_numpy(var.astype(np.float32)))
            # the same float32 arithmetic as the fold's denominator: s is exactly 1
            bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))
            bn.bias.copy_(bn.running_mean)
        key = _key("bn_" + layer.name, module._keys)
        module.batchnorms[key] = bn
        module.inserted[layer.name] = _Inserted(layer, key, conv, weight, bias, step)
    return module.eval()


def fold_batchnorm(module: QuantizedTorchModel, model: onnx.ModelProto) -> None:
    """Write the folded weights and biases of the module's BatchNorms into ``model`` (a copy
    of its float model, in place), adding a bias where a convolution has none. Does nothing
    for a module without BatchNorms."""
    if not isinstance(module, BatchNormTorchModel) or not module.inserted:
        return
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    taken = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node for o in list(n.input) + list(n.output)
    }
    with torch.no_grad():
        for name, entry in module.inserted.items():
            w, b, _ = module.folded(name)
            node = nodes.get(name)
            if node is None or entry.weight not in inits:
                raise QuantdoctorError(f"batchnorm: the float model has no Conv '{name}'")
            inits[entry.weight].CopyFrom(
                numpy_helper.from_array(w.numpy().astype(np.float32), entry.weight)
            )
            bias = entry.bias
            if bias is None:
                bias = f"{entry.weight}__batchnorm_bias"
                while bias in taken:
                    bias += "_"
                taken.add(bias)
                model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32)))
                inits[bias] = model.graph.initializer[-1]
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = bias
            inits[bias].CopyFrom(numpy_helper.from_array(b.numpy().astype(np.float32), bias))
