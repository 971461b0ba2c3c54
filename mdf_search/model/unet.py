"""A U-Net with four encoder levels, a bottleneck, a vessel-segmentation decoder, and FiLM sites.

Level ``i`` (1..4) has its skip features at ``H / 2**(i-1)``; the bottleneck sits at ``H / 16``. These
skip features are what the fusion module patch-projects into the language model. Normalisation is
GroupNorm, not BatchNorm: DeepSpeed micro-batches here are 1-8 images per rank.

FiLM (Perez et al., 2018) modulates a feature map per channel as ``(1 + gamma) * F + beta``, with
``gamma`` and ``beta`` produced from a text vector by a zero-initialised linear layer, so a freshly
built model is exactly the unmodulated U-Net. The generators live in :class:`FiLM`, outside the U-Net,
so that freezing the U-Net (``freeze=unet``) still trains the text conditioning.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_ch), out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_ch), out_ch),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


FilmParams = dict[str, tuple[torch.Tensor, torch.Tensor]]  # site → (gamma, beta), each (B, C)


def film(x: torch.Tensor, params: FilmParams | None, site: str) -> torch.Tensor:
    if params is None or site not in params:
        return x
    gamma, beta = params[site]
    return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class UNetOutput(NamedTuple):  # a NamedTuple: ZeRO-3's hooks see the tensors inside
    skips: list[torch.Tensor]  # 4 levels, finest first
    bottleneck: torch.Tensor | None  # None when the decoder did not run
    seg_logits: torch.Tensor | None  # (B, 1, H, W) vessel logits when the decoder ran


class UNet(nn.Module):
    def __init__(self, channels: tuple[int, int, int, int], bottleneck: int, in_channels: int = 3) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.bottleneck_channels = bottleneck
        widths = (in_channels, *channels)
        self.encoders = nn.ModuleList(ConvBlock(widths[i], widths[i + 1]) for i in range(4))
        self.mid = ConvBlock(channels[3], bottleneck)
        ups = (bottleneck, *reversed(channels))  # bottleneck, c4, c3, c2, c1
        self.upsamples = nn.ModuleList(nn.ConvTranspose2d(ups[i], ups[i + 1], 2, stride=2) for i in range(4))
        self.decoders = nn.ModuleList(ConvBlock(2 * ups[i + 1], ups[i + 1]) for i in range(4))
        self.seg_head = nn.Conv2d(channels[0], 1, 1)

    @property
    def site_channels(self) -> dict[str, int]:
        """Channels modulated at each FiLM site (the decoder site modulates every decoder stage)."""
        sites = {f"enc{i + 1}": c for i, c in enumerate(self.channels)}
        sites["bottleneck"] = self.bottleneck_channels
        for i, c in enumerate(reversed(self.channels)):
            sites[f"dec{4 - i}"] = c
        return sites

    def forward(
        self, x: torch.Tensor, film_params: FilmParams | None = None, decode: bool = True
    ) -> UNetOutput:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"U-Net input sides must be multiples of 16, but got {tuple(x.shape[-2:])}")
        skips: list[torch.Tensor] = []
        h = x
        for i, encoder in enumerate(self.encoders):
            if i:
                h = F.max_pool2d(h, 2)
            h = film(encoder(h), film_params, f"enc{i + 1}")
            skips.append(h)
        if not decode:  # skip features do not depend on the bottleneck: don't compute it
            return UNetOutput(skips=skips, bottleneck=None, seg_logits=None)
        bottleneck = film(self.mid(F.max_pool2d(h, 2)), film_params, "bottleneck")
        seg = None
        if decode:
            h = bottleneck
            for i, (up, dec) in enumerate(zip(self.upsamples, self.decoders, strict=True)):
                h = dec(torch.cat([up(h), skips[3 - i]], dim=1))
                h = film(h, film_params, f"dec{4 - i}")
            seg = self.seg_head(h)
        return UNetOutput(skips=skips, bottleneck=bottleneck, seg_logits=seg)


class FiLM(nn.Module):
    """Text vector → per-site (gamma, beta). Sites follow ``film.placement`` ('decoder' = dec1..dec4)."""

    def __init__(self, sites: tuple[str, ...], site_channels: dict[str, int], text_dim: int) -> None:
        super().__init__()
        expanded = [
            s for site in sites for s in (("dec1", "dec2", "dec3", "dec4") if site == "decoder" else (site,))
        ]
        self.generators = nn.ModuleDict()
        for site in expanded:
            layer = nn.Linear(text_dim, 2 * site_channels[site])
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
            self.generators[site] = nn.Sequential(nn.LayerNorm(text_dim), layer)

    def forward(self, text: torch.Tensor) -> FilmParams:
        out: FilmParams = {}
        for site, gen in self.generators.items():
            gamma, beta = gen(text).chunk(2, dim=-1)
            out[site] = (gamma, beta)
        return out
