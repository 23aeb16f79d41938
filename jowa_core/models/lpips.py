"""LPIPS perceptual distance (VGG16 variant of taming-transformers, as used by the JOWA tokenizer), in plain torch.

Structure and parameter names equal the official ``lpips.*`` keys without that prefix:
``scaling_layer.{shift,scale}`` (buffers), ``net.slice{1..5}.<i>.{weight,bias}`` where ``<i>`` is the layer's
index in torchvision's ``vgg16().features`` (slices end at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) and
``lin{0..4}.model.1.weight`` (Dropout, then a 1x1 conv without bias, 64/128/256/512/512 -> 1). 14,716,160
parameters, all frozen.

The weights cannot be downloaded here. ``load_lpips(path)`` reads them from what the user has:

* the official JOWA ``tokenizer.pt`` (it contains ``lpips.*``, possibly behind ``module.``), or any torch /
  safetensors state dict with ``lpips.``-prefixed or bare names;
* several files at once, e.g. torchvision's ``vgg16-397923af.pth`` (``features.<i>.*`` keys, mapped onto the
  slices) together with taming-transformers' ``vgg.pth`` (the ``lin*`` weights).

Inputs are images in [-1, 1] with 1 or 3 channels (1 is repeated to 3), shape (B, C, H, W); the output is
(B, 1, 1, 1): the sum over the 5 layers of the spatially averaged, channel-weighted squared differences of
unit-normalised features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from jowa_core import checkpoint as ckpt
from jowa_core.checkpoint import CheckpointError

CHANNELS = (64, 128, 256, 512, 512)
# torchvision vgg16 `features`: conv widths, "M" = max pool; slices end after relu1_2/2_2/3_3/4_3/5_3.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_SLICE_ENDS = (4, 9, 16, 23, 30)  # exclusive layer index where each slice ends
NUM_PARAMETERS = 14_716_160


class ScalingLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class VGG16Features(nn.Module):
    """``vgg16().features[:30]`` cut into ``slice1..slice5``; layers keep their torchvision index as name."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = int(v)
        start = 0
        for s, end in enumerate(_SLICE_ENDS, start=1):
            seq = nn.Sequential()
            for i in range(start, end):
                seq.add_module(str(i), layers[i])
            setattr(self, f"slice{s}", seq)
            start = end

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for s in range(1, len(_SLICE_ENDS) + 1):
            x = getattr(self, f"slice{s}")(x)
            outs.append(x)
        return outs


class NetLinLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))


def _normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """Learned perceptual distance. Built with random weights: use ``load_lpips`` to get a usable one."""

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Features()
        for i, c in enumerate(CHANNELS):
            setattr(self, f"lin{i}", NetLinLayer(c))
        self.freeze()

    def freeze(self) -> LPIPS:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always eval mode: the ``lin*`` layers' Dropout(0.5) stays off. Unlike the official code, whose
        tokenizer ``train()`` switches LPIPS's dropout on with it (reference §1.8): the expected loss is the same
        and ours has less noise. Deliberate; documented in docs/tokenizer.md."""
        return super().train(False)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.shape[1] == 1:
            input = input.repeat_interleave(3, dim=1)
        if target.shape[1] == 1:
            target = target.repeat_interleave(3, dim=1)
        feats0 = self.net(self.scaling_layer(input))
        feats1 = self.net(self.scaling_layer(target))
        val = None
        for i, (f0, f1) in enumerate(zip(feats0, feats1, strict=True)):
            diff = (_normalize(f0) - _normalize(f1)) ** 2
            res = getattr(self, f"lin{i}").model(diff).mean(dim=(2, 3), keepdim=True)
            val = res if val is None else val + res
        return val


def lpips_keys() -> list[str]:
    """The names ``load_lpips`` needs (parameters and buffers)."""
    return list(LPIPS().state_dict())


def _from_torchvision(key: str) -> str | None:
    """``features.<i>.weight`` (torchvision vgg16) -> ``net.slice<s>.<i>.weight``; None for other keys."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "features" or not parts[1].isdigit():
        return None
    i = int(parts[1])
    for s, end in enumerate(_SLICE_ENDS, start=1):
        if i < end:
            return f"net.slice{s}.{i}.{parts[2]}"
    return None


def _lpips_state(raw: dict[str, Tensor]) -> dict[str, Tensor]:
    """The LPIPS entries of one state dict, under LPIPS's own names."""
    state, _ = ckpt.strip_wrapper_prefix(raw)
    if any(k.startswith("lpips.") for k in state):  # a whole tokenizer (official tokenizer.pt)
        return {k[len("lpips."):]: v for k, v in state.items() if k.startswith("lpips.")}
    out = {}
    for k, v in state.items():
        name = _from_torchvision(k) or k
        out[name] = v
    return out


def load_lpips(path: str | Path | Sequence[str | Path], device: str | torch.device = "cpu") -> LPIPS:
    """A frozen LPIPS (eval mode, no gradients to its parameters) with weights read from ``path``.

    ``path``: a safetensors file or a torch file (read with ``torch.load(weights_only=True)``) holding the
    LPIPS names (optionally prefixed ``lpips.``, itself optionally behind ``module.``), or a list of such
    files whose entries are merged (later files win). An incomplete set raises ``CheckpointError`` naming
    the file(s) and the missing keys.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise CheckpointError("load_lpips: no weights file given")
    model = LPIPS()
    wanted = set(model.state_dict())
    merged: dict[str, Tensor] = {}
    for p in paths:
        merged.update({k: v for k, v in _lpips_state(ckpt.read_state_file(p)).items() if k in wanted})
    source = ", ".join(str(p) for p in paths)
    if not merged:
        raise CheckpointError(f"{source}: no LPIPS weights found (expected keys like 'lpips.net.slice1.0.weight' "
                              f"or 'net.slice1.0.weight')")
    for k, v in model.state_dict().items():  # the scaling layer is a constant; vgg.pth-style files omit it
        if k.startswith("scaling_layer."):
            merged.setdefault(k, v)
    ckpt.load_state_dict_checked(model, merged, source)
    return model.to(device).freeze()


def lpips_distance(model: LPIPS, x: Tensor, y: Tensor) -> Tensor:
    """(B,) LPIPS between batches in [-1, 1]."""
    return model(x, y).flatten()


__all__ = ["LPIPS", "NUM_PARAMETERS", "load_lpips", "lpips_keys", "lpips_distance"]
