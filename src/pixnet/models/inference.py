"""A trained network made faster for prediction, with the same outputs.

:func:`inference_network` returns a copy of a :class:`~pixnet.models.pixnet.PixNet` or
:class:`~pixnet.models.ensemble.PixNetEnsemble` for inference only:

- every BatchNorm that directly follows a convolution is folded into it (its running
  statistics and affine become the conv's weight and bias; eval-mode BatchNorm is an
  affine map, so the outputs are the same up to float rounding). The pairs are the
  ``conv_bn_pairs`` each block class declares next to its layers;
- on the CPU, weights (and :func:`as_input` tiles) are in ``channels_last`` memory
  layout: oneDNN runs the decoder's depthwise and 1x1 convolutions faster that way, and
  the row attention's ``(B, H, W, d)`` views of a ``channels_last`` tensor need no copy.

Measured on this project's 2-core machine (``bench/predict.py --parts fast``,
BENCHMARKS "The prediction copy"): the forward pass of a ``cpu``-preset model over a
Her2ST section's 640 px tiles 2.0-2.1x faster (a whole-slide 2 um prediction took
0.64x the time, before the faster gather of 2 um bins). Training is untouched: folding
freezes the statistics, and ``channels_last`` did not speed up a training step here.

The original network is not changed, so BatchNorm adaptation
(:func:`~pixnet.predict.adapt.adapt_batchnorm`) must run before the copy is made.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pixnet.models.pixnet import model_device


def _conv_bn_pairs(module: nn.Module) -> tuple[tuple[str, str], ...]:
    return tuple(getattr(type(module), "conv_bn_pairs", ()))


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every eval-mode BatchNorm that a block declares as following a
    conv (``conv_bn_pairs``) into that conv; the BatchNorm becomes ``nn.Identity``.

    Returns:
        The number of BatchNorm layers folded.

    Raises:
        ValueError: ``model`` is in training mode (batch statistics cannot be folded).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (call .eval() first)")
    n = 0
    for module in list(model.modules()):
        for conv_name, bn_name in _conv_bn_pairs(module):
            try:
                conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
            except AttributeError:  # an optional layer this instance does not have
                continue
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue  # already folded
            _replace(module, conv_name, fuse_conv_bn_eval(conv, bn))
            _replace(module, bn_name, nn.Identity())
            n += 1
    return n


def inference_network(model: nn.Module) -> nn.Module:
    """A prediction-only copy of ``model`` (a PixNet or an ensemble), on its device:
    BatchNorm folded into the convs (:func:`fold_batchnorm`), activations in place and,
    on the CPU, ``channels_last`` weights. ``model`` itself is left as it is.

    The copy gives the same outputs up to float rounding; do not train it.
    """
    net = copy.deepcopy(model).eval()
    fold_batchnorm(net)
    for module in net.modules():
        if isinstance(module, nn.LeakyReLU):
            module.inplace = True  # the decoder's act on a tensor no one else reads
    cpu = model_device(net).type == "cpu"
    for p in net.parameters():
        p.requires_grad_(False)
        if cpu and p.dim() == 4:  # conv weights
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return net


def as_input(x: Tensor, net: nn.Module) -> Tensor:
    """``x (B, 3, H, W)`` in the memory layout :func:`inference_network` chose for ``net``."""
    if model_device(net).type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


__all__ = ["as_input", "fold_batchnorm", "inference_network"]
