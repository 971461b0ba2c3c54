"""The planted positive control: healthy vs acquired is visible to the U-Net's input (128 px) and to
nothing that sees the vision tower's input (the same pixels after the collator's 2x antialiased resize).

These tests keep the control honest: if someone changes the renderer so that the sign leaks into 64 px
(or vanishes at 128 px), the smoke study's positive control stops meaning anything, and a test here fails.
The pipeline is the real one: files in the real layouts, the real readers, the real cache at 128 px, and
the collator's augmentation (flip, rotation up to 10 degrees, bilinear) and resize.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mdf_search.data.cache import build_cache, open_cache, preprocess_image
from mdf_search.data.render import control_frequency, render_fundus
from mdf_search.data.synthetic import build_manifest, generate

UNET, VISION = 128, 64  # the tiny preset's two image sizes


def _to_vision(x: torch.Tensor) -> torch.Tensor:
    """The collator's resize for the vision tower."""
    return F.interpolate(x, size=(VISION, VISION), mode="bilinear", antialias=True, align_corners=False)


def _augment(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The collator's geometric augmentation: horizontal flip (p = 0.5) and a rotation of up to 10 degrees."""
    gen = torch.Generator().manual_seed(seed)
    thetas = []
    for _ in range(len(x)):
        flip = -1.0 if torch.rand((), generator=gen).item() < 0.5 else 1.0
        angle = math.radians((torch.rand((), generator=gen).item() * 2 - 1) * 10.0)
        c, s = math.cos(angle), math.sin(angle)
        thetas.append(torch.tensor([[c * flip, -s, 0.0], [s * flip, c, 0.0]]))
    grid = F.affine_grid(torch.stack(thetas), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor]:
    """Healthy and acquired images of a generated study as the U-Net gets them, and 1 = acquired."""
    root = tmp_path_factory.mktemp("control")
    generate(root, images=240, size=UNET, seed=11)
    cache = open_cache(build_cache(build_manifest(root), root / "cache", UNET))
    types = np.asarray(cache.index.column("disease_type").to_pylist())
    rows = np.flatnonzero(types != "inherited")
    rows = rows[np.random.default_rng(0).permutation(rows.size)]
    x = torch.from_numpy(np.array(cache.images[rows])).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy((types[rows] == "acquired").astype(np.int64))
    return _augment(x, seed=1), y


def _local_energy(x: torch.Tensor, cells: int) -> np.ndarray:
    """Mean squared high-pass response (grey, minus its 3x3 mean) on a ``cells`` x ``cells`` grid."""
    grey = x.mean(1, keepdim=True)
    high = grey - F.avg_pool2d(grey, 3, 1, 1, count_include_pad=False)
    return F.adaptive_avg_pool2d(high.pow(2), cells).flatten(1).numpy()


def test_planted_sign_is_zero_mean_and_gone_after_the_vision_resize(tmp_path: Path) -> None:
    """Same random state, normal vs acquired: the pictures differ only by the planted texture, which the
    cache keeps at 128 px and the antialiased 2x resize removes (about 1 % is left, rounding noise and a
    sliver of the grating; measured 15.5 and 0.22 grey levels RMS)."""
    residual: dict[int, list[float]] = {UNET: [], VISION: []}
    for i, label in enumerate(["dr", "amd", "glaucoma"] * 2):
        pair = []
        for name in ("normal", label):
            f = render_fundus(np.random.default_rng(i), UNET, name, 1.0, ("OD", "OS")[i % 2])
            Image.fromarray(f.rgb).save(tmp_path / f"{i}_{name}.png")
            pair.append(preprocess_image(tmp_path / f"{i}_{name}.png", UNET)[0])
        x = torch.from_numpy(np.stack(pair)).permute(0, 3, 1, 2).float()
        assert abs(float((x[1] - x[0]).mean())) < 0.05  # zero mean over the picture (0..255 scale)
        for size, view in ((UNET, x), (VISION, _to_vision(x))):
            residual[size].append(float((view[1] - view[0]).pow(2).mean().sqrt()))
    at_unet, at_vision = float(np.mean(residual[UNET])), float(np.mean(residual[VISION]))
    assert at_unet > 8.0  # grey levels (RMS over the whole picture)
    assert at_vision < 0.025 * at_unet
    # Severity 0 is a negative control: then an acquired picture is the normal one, bit for bit.
    a = render_fundus(np.random.default_rng(5), UNET, "normal", 0.0).rgb
    assert np.array_equal(a, render_fundus(np.random.default_rng(5), UNET, "glaucoma", 0.0).rgb)


def test_control_needs_a_picture_that_can_carry_it() -> None:
    assert control_frequency(128, 128) > 0 and control_frequency(96, 128) == 0.0
    assert control_frequency(512, 0) == 0.0


def test_linear_probes(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Logistic regression: chance on the vision tower's pixels and local energies, near-perfect on the
    U-Net's local energies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = images
    n = len(y) * 2 // 3
    small = _to_vision(x)
    scores = {}
    for name, feats in (
        ("vision pixels", small.flatten(1).numpy()),
        ("vision energy", _local_energy(small, 8)),
        ("unet energy", _local_energy(x, 8)),
    ):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        probe.fit(feats[:n], y[:n].numpy())
        scores[name] = probe.score(feats[n:], y[n:].numpy())
    assert scores["unet energy"] >= 0.9, scores
    assert scores["vision pixels"] <= 0.7 and scores["vision energy"] <= 0.7, scores
    # Class-conditional difference of the whole-picture energy, in within-class standard deviations.
    for size, view, low, high in ((UNET, x, 1.5, np.inf), (VISION, small, -0.5, 0.5)):
        e = _local_energy(view, 1)[:, 0]
        d = (e[y == 1].mean() - e[y == 0].mean()) / np.sqrt(0.5 * (e[y == 1].var() + e[y == 0].var()))
        assert low < d < high, (size, d)


class _LevelOneProbe(torch.nn.Module):
    """The tiny U-Net's level 1 (two 3x3 convolutions with GroupNorm and SiLU, 8 channels, as
    ``mdf_search.model.unet.ConvBlock``) read through the fusion's ``pool`` projection (4x4 patch means)."""

    def __init__(self, channels: int = 8, grid: int = 4) -> None:
        super().__init__()
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(3, channels, 3, padding=1, bias=False),
            torch.nn.GroupNorm(channels, channels),
            torch.nn.SiLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            torch.nn.GroupNorm(channels, channels),
            torch.nn.SiLU(),
        )
        self.grid = grid
        self.head = torch.nn.Linear(channels * grid * grid, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.block(x), self.grid).flatten(1))


def _fit(x: torch.Tensor, y: torch.Tensor, epochs: int = 5, seed: int = 0) -> float:
    torch.manual_seed(seed)
    n = len(y) * 2 // 3
    probe = _LevelOneProbe()
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(n).split(8):
            loss = F.cross_entropy(probe(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((probe(x[n:]).argmax(1) == y[n:]).float().mean())


def test_small_conv_learns_it_at_unet_size_and_not_at_vision_size(
    images: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = images
    assert _fit(x, y) >= 0.9
    assert _fit(_to_vision(x), y) <= 0.7
