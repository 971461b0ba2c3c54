"""Vectorised drawing of one synthetic fundus photograph and its vessel / field-of-view masks.

The picture is built on a float32 coordinate grid with numpy (background, illumination, disc, cup,
macula) and PIL ``ImageDraw`` on single-channel layers (vessel tree, dots, spicules, flecks), which are
then alpha-blended in numpy: no per-pixel Python loop, so a 2048² image takes a fraction of a second.

Sizes of signs are given in pixels *of a 160 px image* and scaled with the image side, so a sign that is
1-3 px at the demo size stays sub-patch for the vision tower after the cache's resize (see the table in
:mod:`mdf_search.data.synthetic`). Strength of every disease sign is multiplied by ``severity``:
0 draws the healthy picture, 1 the textbook one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Colours (RGB in [0, 1]).
_BACKGROUND = np.array([0.80, 0.36, 0.15], np.float32)
_DISC = np.array([0.98, 0.80, 0.52], np.float32)
_CUP = np.array([1.00, 0.94, 0.78], np.float32)
_PALE_DISC = np.array([0.98, 0.93, 0.82], np.float32)
_BLOOD = np.array([0.42, 0.05, 0.03], np.float32)
_EXUDATE = np.array([0.96, 0.86, 0.38], np.float32)
_DRUSEN = np.array([0.95, 0.80, 0.45], np.float32)
_PIGMENT = np.array([0.10, 0.05, 0.03], np.float32)
_FLECK = np.array([0.96, 0.90, 0.62], np.float32)
INHERITED_STRENGTH = 0.7  # inherited signs are drawn weaker than acquired ones: the text must matter


@dataclass(frozen=True)
class Fundus:
    rgb: np.ndarray  # (S, S, 3) uint8
    vessels: np.ndarray  # (S, S) uint8, 0 / 255
    fov: np.ndarray  # (S, S) uint8, 0 / 255
    cup_to_disc: float


def _layer(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("L", (size, size), 0)
    return im, ImageDraw.Draw(im)


def _blend_layer(img: np.ndarray, im: Image.Image, blur: float, colour: np.ndarray, strength: float) -> None:
    """Alpha-blend ``colour`` where the layer is drawn, touching only the layer's bounding box."""
    box = im.getbbox()
    if box is None:
        return
    pad = math.ceil(3 * blur) + 1
    x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
    x1, y1 = min(im.width, box[2] + pad), min(im.height, box[3] + pad)
    im = im.crop((x0, y0, x1, y1))
    if blur > 0:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    alpha = np.asarray(im, dtype=np.float32) / 255.0
    _blend(img[y0:y1, x0:x1], alpha, colour, strength)


def _blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray, strength: float) -> None:
    a = (alpha * np.float32(strength))[..., None]
    img *= 1.0 - a
    img += a * colour


def _window(size: int, cx: float, cy: float, half: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Row/column slices of a square window around (cx, cy), plus its pixel coordinates."""
    x0, x1 = max(0, int(cx - half)), min(size, int(cx + half) + 2)
    y0, y1 = max(0, int(cy - half)), min(size, int(cy + half) + 2)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    return slice(y0, y1), slice(x0, x1), xs, ys


def _polar_points(
    rng: np.random.Generator, n: int, centre: tuple[float, float], r_lo: float, r_hi: float, radius: float
) -> np.ndarray:
    """``n`` points uniform in area in the annulus [r_lo, r_hi] * radius around ``centre``."""
    theta = rng.uniform(0, 2 * math.pi, n)
    r = np.sqrt(rng.uniform(r_lo**2, r_hi**2, n)) * radius
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)


def _dots(draw: ImageDraw.ImageDraw, points: np.ndarray, radii: np.ndarray) -> None:
    for (x, y), rad in zip(points, radii, strict=True):
        draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=255)


def _vessel_tree(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    size: int,
    disc: tuple[float, float],
    macula: tuple[float, float],
    fov_r: float,
    width_scale: float,
) -> None:
    """Four arcades leaving the disc, curving around the macula, branching and tapering.

    Each branch is a random walk whose heading drifts away from the macula (the temporal arcades
    wrap around it); children are thinner, and a branch stops when it leaves the field of view.
    """
    scale = size / 160.0
    step = 0.05 * fov_r
    centre = (size - 1) / 2.0
    stack: list[tuple[float, float, float, float, int]] = []
    temporal = math.copysign(1.0, macula[0] - disc[0])
    for vertical in (-1.0, 1.0):
        stack.append((disc[0], disc[1], math.atan2(vertical * 0.55, temporal), 2.9 * scale, 0))  # temporal
        stack.append((disc[0], disc[1], math.atan2(vertical * 0.8, -temporal), 2.3 * scale, 0))  # nasal
    while stack:
        x, y, heading, width, depth = stack.pop()
        points = [(x, y)]
        for i in range(int(rng.integers(8, 16))):
            # Bend away from the macula so arcades circle it instead of crossing it.
            away = math.atan2(y - macula[1], x - macula[0])
            heading += rng.normal(0, 0.18) + 0.08 * math.sin(away - heading)
            x += step * math.cos(heading)
            y += step * math.sin(heading)
            points.append((x, y))
            if (x - centre) ** 2 + (y - centre) ** 2 > (1.05 * fov_r) ** 2:
                break
            if depth < 4 and i > 2 and width > 0.9 * scale and rng.random() < 0.22:
                branch = heading + rng.choice((-1.0, 1.0)) * rng.uniform(0.4, 0.9)
                stack.append((x, y, branch, width * 0.68, depth + 1))
                width *= 0.9
        draw.line(points, fill=255, width=max(1, round(width * width_scale)), joint="curve")


def _spicule(rng: np.random.Generator, draw: ImageDraw.ImageDraw, x: float, y: float, length: float) -> None:
    """Bone spicule: three to five thin arms from a centre, like pigment migrating along vessels."""
    for _ in range(int(rng.integers(3, 6))):
        angle = rng.uniform(0, 2 * math.pi)
        arm = length * rng.uniform(0.5, 1.0)
        draw.line([(x, y), (x + arm * math.cos(angle), y + arm * math.sin(angle))], fill=255, width=1)


def render_fundus(
    rng: np.random.Generator, size: int, label: str, severity: float, eye: str = "OD"
) -> Fundus:
    """Draw one fundus image of ``label`` (normal, dr, amd, glaucoma, rp, stargardt)."""
    s = float(np.clip(severity, 0.0, 1.0))
    scale = size / 160.0
    centre = (size - 1) / 2.0
    fov_r = 0.47 * size
    axis = np.arange(size, dtype=np.float32)
    dx = (axis[None, :] - centre) / fov_r
    dy = (axis[:, None] - centre) / fov_r
    r = np.sqrt(dx * dx + dy * dy)

    # Background: orange-red, illumination falling off towards the rim, a low-frequency choroid texture.
    tint = _BACKGROUND * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    texture = Image.fromarray((rng.random((9, 9)) * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    illum = (1.0 - 0.45 * r * r) * (0.93 + 0.14 * np.asarray(texture, np.float32) / 255.0)
    img = illum[..., None] * tint

    side = 1.0 if eye.upper() == "OD" else -1.0  # optic disc on the nasal side
    disc = (centre + side * 0.36 * fov_r + rng.normal(0, 0.02) * fov_r, centre + rng.normal(0, 0.03) * fov_r)
    macula = (disc[0] - side * 0.5 * fov_r, disc[1] + rng.normal(0, 0.02) * fov_r)
    disc_r = 0.085 * fov_r * rng.uniform(0.92, 1.08)

    # Macula: a darker, wide Gaussian (only its 4-sigma window is touched).
    sigma = 0.13 * fov_r
    rows, cols, xs, ys = _window(size, macula[0], macula[1], 4 * sigma)
    m2 = ((xs - macula[0]) ** 2 + (ys - macula[1]) ** 2) / sigma**2
    img[rows, cols] *= (1.0 - 0.38 * np.exp(-0.5 * m2))[..., None]

    # Vessels (thin in RP): the drawn mask is the ground truth, the picture gets a softened, darker copy.
    inherited = s * INHERITED_STRENGTH
    vessel_im, vessel_draw = _layer(size)
    thin = 1.0 - 0.6 * inherited if label == "rp" else 1.0
    _vessel_tree(rng, vessel_draw, size, disc, macula, fov_r, thin)
    vessel_alpha = np.asarray(vessel_im.filter(ImageFilter.GaussianBlur(0.4 * scale)), np.float32)
    img *= 1.0 - vessel_alpha[..., None] * (np.array([0.30, 0.62, 0.60], np.float32) / 255.0)

    # Optic disc and cup (cup-to-disc ratio grows with glaucoma; pale, waxy disc in RP).
    cdr = float(rng.uniform(0.2, 0.4))
    if label == "glaucoma":
        cdr = min(0.9, cdr + 0.5 * s)
    disc_colour = _DISC
    if label == "rp":
        disc_colour = _DISC + (_PALE_DISC - _DISC) * min(1.0, 1.3 * inherited)
    rows, cols, xs, ys = _window(size, disc[0], disc[1], 1.2 * disc_r + 2 * scale)
    d = np.sqrt((xs - disc[0]) ** 2 + (ys - disc[1]) ** 2) / disc_r
    _blend(img[rows, cols], np.clip((1.0 - d) * disc_r / (1.2 * scale), 0, 1), disc_colour, 0.9)
    _blend(img[rows, cols], np.clip((cdr - d) * disc_r / (1.5 * scale), 0, 1), _CUP, 0.85)

    # Disease signs, each on its own layer.
    lesion_im, draw = _layer(size)
    if label == "dr" and s > 0:
        n = int(rng.integers(6, 14) * (0.5 + 0.5 * s))
        _dots(draw, _polar_points(rng, n, macula, 0.2, 2.6, 0.2 * fov_r), rng.uniform(0.5, 1.5, n) * scale)
        n = int(rng.integers(1, 5) * (0.5 + 0.5 * s))
        _dots(
            draw, _polar_points(rng, n, (centre, centre), 0.1, 0.75, fov_r), rng.uniform(2.5, 4.5, n) * scale
        )
        _blend_layer(img, lesion_im, 0.3 * scale, _BLOOD, 0.85 * s)
        lesion_im, draw = _layer(size)
        n = int(rng.integers(4, 14) * (0.5 + 0.5 * s))
        _dots(draw, _polar_points(rng, n, macula, 0.4, 1.6, 0.2 * fov_r), rng.uniform(0.5, 1.4, n) * scale)
        _blend_layer(img, lesion_im, 0.3 * scale, _EXUDATE, 0.9 * s)
    elif label == "amd" and s > 0:
        n = int(rng.integers(8, 24) * (0.5 + 0.5 * s))
        _dots(draw, _polar_points(rng, n, macula, 0.0, 1.0, 0.22 * fov_r), rng.uniform(0.8, 2.2, n) * scale)
        _blend_layer(img, lesion_im, 0.5 * scale, _DRUSEN, 0.8 * s)
    elif label == "rp" and inherited > 0:
        n = int(rng.integers(30, 70) * (0.4 + 0.6 * s))
        for x, y in _polar_points(rng, n, (centre, centre), 0.6, 0.93, fov_r):
            _spicule(rng, draw, float(x), float(y), rng.uniform(2.0, 4.5) * scale)
        _blend_layer(img, lesion_im, 0.25 * scale, _PIGMENT, 0.9 * inherited)
    elif label == "stargardt" and inherited > 0:
        rows, cols, xs, ys = _window(size, macula[0], macula[1], 2.5 * sigma)
        atrophy = np.exp(-0.5 * ((xs - macula[0]) ** 2 + (ys - macula[1]) ** 2) / (0.6 * sigma) ** 2)
        _blend(img[rows, cols], atrophy, np.array([0.45, 0.32, 0.22], np.float32), 0.45 * inherited)
        n = int(rng.integers(10, 26) * (0.5 + 0.5 * s))
        for x, y in _polar_points(rng, n, macula, 0.3, 1.6, 0.2 * fov_r):
            angle = rng.uniform(0, math.pi)
            half = rng.uniform(1.0, 2.2) * scale
            draw.line(
                [
                    (x - half * math.cos(angle), y - half * math.sin(angle)),
                    (x + half * math.cos(angle), y + half * math.sin(angle)),
                ],
                fill=255,
                width=max(1, round(rng.uniform(0.8, 1.6) * scale)),
            )
        _blend_layer(img, lesion_im, 0.3 * scale, _FLECK, 0.85 * inherited)

    # Sensor noise (one luminance field, cheaper than per channel), then the circular field of view with
    # an anti-aliased rim on black.
    img += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(0.012)
    fov_alpha = np.clip((1.0 - r) * fov_r + 0.5, 0.0, 1.0)
    img *= (fov_alpha * np.float32(255.0))[..., None]
    img += np.float32(0.5)
    np.clip(img, 0, 255, out=img)
    rgb = img.astype(np.uint8)
    fov = np.where(fov_alpha >= 0.5, 255, 0).astype(np.uint8)
    vessels = np.where((np.asarray(vessel_im) > 127) & (fov > 0), 255, 0).astype(np.uint8)
    return Fundus(rgb, vessels, fov, cdr)
