"""Vectorised drawing of one synthetic fundus photograph and its vessel / field-of-view masks.

The picture is built on a float32 coordinate grid with numpy (background, illumination, disc, cup,
macula) and PIL ``ImageDraw`` on single-channel layers (vessel tree, spicules, flecks), which are then
alpha-blended in numpy: no per-pixel Python loop, so a 2048² image takes a fraction of a second.

Sizes of anatomy and inherited signs are given in pixels *of a 160 px image* and scaled with the image
side. Acquired labels (dr, amd, glaucoma) carry only the planted positive control of
:mod:`mdf_search.data.synthetic` (:func:`planted_texture`), whose frequency is set by ``control_size``
rather than by the picture's size. The strength of every disease sign is multiplied by ``severity``:
0 draws the healthy picture (bit for bit, for acquired labels), 1 the strongest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

# Colours (RGB in [0, 1]).
_BACKGROUND = np.array([0.80, 0.36, 0.15], np.float32)
_DISC = np.array([0.98, 0.80, 0.52], np.float32)
_CUP = np.array([1.00, 0.94, 0.78], np.float32)
_PALE_DISC = np.array([0.98, 0.93, 0.82], np.float32)
_PIGMENT = np.array([0.10, 0.05, 0.03], np.float32)
_FLECK = np.array([0.96, 0.90, 0.62], np.float32)
INHERITED_STRENGTH = 0.7  # inherited signs are drawn weaker than the control: the text must matter
FOV_RADIUS = 0.47  # field-of-view radius as a fraction of the image side

# The planted positive control (see mdf_search.data.synthetic): a zero-mean grating of spatial frequency
# CONTROL_CYCLES per pixel along both axes once the field of view is ``control_size`` px across. Below
# that image's Nyquist (0.5), far above the Nyquist of the half-size image a vision tower gets.
CONTROL_CYCLES = 0.35
CONTROL_AMPLITUDE = 1.0  # swing at severity 1, as a fraction of each channel's distance to 0 or 1
CONTROL_REGIONS = ("dr", "amd", "glaucoma")
CONTROL_RADIUS = 0.85  # posterior pole: this fraction of the field-of-view radius
_MAX_DRAWABLE = 0.45  # cycles per generated pixel beyond which the grating would alias where it is drawn


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


def control_frequency(size: int, control_size: int) -> float:
    """Cycles per pixel of a ``size`` px picture that become CONTROL_CYCLES when its field of view
    (cropped by the cache) is resized to ``control_size`` px; 0.0 when the picture cannot carry them."""
    if control_size <= 0:
        return 0.0
    freq = CONTROL_CYCLES * control_size / (2 * FOV_RADIUS * size + 1)
    return freq if freq <= _MAX_DRAWABLE else 0.0


def min_size_for_control(control_size: int) -> int:
    """The smallest picture side that carries the control tuned for ``control_size``."""
    return math.ceil((CONTROL_CYCLES * control_size / _MAX_DRAWABLE - 1) / (2 * FOV_RADIUS))


def planted_texture(
    rng: np.random.Generator,
    size: int,
    label: str,
    strength: float,
    disc: tuple[float, float],
    disc_r: float,
    macula: tuple[float, float],
    fov_r: float,
    freq: float,
) -> np.ndarray:
    """(S, S) zero-mean modulation in [-strength, strength]: a diagonal grating under a smooth envelope.

    The envelope covers the posterior pole, with a hole where the acquired disease's real signs would
    be: amd at the macula, glaucoma in a ring around the disc, dr in scattered blots. Edges are several
    grating periods wide, so the product stays in a narrow band around (±freq, ±freq).
    """
    centre = (size - 1) / 2.0
    rows, cols, xs, ys = _window(size, centre, centre, fov_r)
    r = np.sqrt((xs - centre) ** 2 + (ys - centre) ** 2) / fov_r
    env = np.zeros((size, size), np.float32)
    env[rows, cols] = np.clip((CONTROL_RADIUS - r) * 8.0, 0.0, 1.0)
    if label == "amd":
        holes = [(macula, 0.28 * fov_r, 0.0)]
    elif label == "glaucoma":
        holes = [(disc, 1.2 * disc_r, 2.6 * disc_r)]
    else:
        n = int(rng.integers(6, 11))
        points = _polar_points(rng, n, (centre, centre), 0.1, 0.7, fov_r)
        widths = rng.uniform(0.06, 0.1, n) * fov_r
        holes = [((float(x), float(y)), float(w), 0.0) for (x, y), w in zip(points, widths, strict=True)]
    keep = np.ones((size, size), np.float32)
    for (cx, cy), width, ring in holes:
        rows, cols, xs, ys = _window(size, cx, cy, ring + 3 * width)
        d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) - ring
        keep[rows, cols] = np.minimum(keep[rows, cols], 1.0 - np.exp(-0.5 * (d / width) ** 2))
    wave = 2 * math.pi * freq * np.arange(size, dtype=np.float32)
    direction = float(rng.choice((-1.0, 1.0)))  # either diagonal; a horizontal flip swaps them anyway
    grating = np.cos(wave[:, None] + direction * wave[None, :] + rng.uniform(0, 2 * math.pi))
    return (np.float32(CONTROL_AMPLITUDE * strength) * env * keep * grating).astype(np.float32)


def _headroom(img: np.ndarray, sigma: float) -> np.ndarray:
    """How far each pixel and channel may swing and stay in [0.05, 0.95] (so neither the grating nor the
    sensor noise clips, and the local mean is kept), made smooth: a minimum filter, then a Gaussian blur
    of ``sigma`` px. A sharp envelope (the edge of a vessel) would mix the grating down to low spatial
    frequencies, where the vision tower's resize keeps it. Large pictures are smoothed on a grid of
    block minima (``sigma / 2`` px blocks) and resized back: the same envelope at a fraction of the cost."""
    bound = np.maximum(np.minimum(img, 1.0 - img) - 0.05, 0.0)
    step = max(1, int(sigma // 2))
    coarse = bound
    if step > 1:
        side = -(-bound.shape[0] // step) * step
        padded = np.pad(bound, ((0, side - bound.shape[0]), (0, side - bound.shape[1]), (0, 0)), mode="edge")
        coarse = padded.reshape(side // step, step, side // step, step, 3).min(axis=(1, 3))
    reach = 2 * math.ceil(sigma / step) + 1
    smooth = ndimage.gaussian_filter(
        ndimage.minimum_filter(coarse, size=(reach, reach, 1)), (sigma / step, sigma / step, 0)
    )
    if step > 1:
        smooth = ndimage.zoom(smooth, (step, step, 1), order=1, grid_mode=True, mode="nearest")
        smooth = smooth[: bound.shape[0], : bound.shape[1]]
    return np.minimum(smooth, bound)


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
    rng: np.random.Generator,
    size: int,
    label: str,
    severity: float,
    eye: str = "OD",
    control_size: int = 128,
) -> Fundus:
    """Draw one fundus image of ``label`` (normal, dr, amd, glaucoma, rp, stargardt).

    ``control_size``: the U-Net input side the planted control is tuned for (0: no control).
    """
    s = float(np.clip(severity, 0.0, 1.0))
    scale = size / 160.0
    centre = (size - 1) / 2.0
    fov_r = FOV_RADIUS * size
    control_freq = control_frequency(size, control_size)
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
    # Label-specific draws come from their own generator, so a normal and a diseased picture drawn from
    # the same ``rng`` state differ in their signs only (the tests measure each sign that way).
    signs = np.random.default_rng(int(rng.integers(2**63)))

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

    # Optic disc and cup (pale, waxy disc in RP; the cup-to-disc ratio carries no label).
    cdr = float(rng.uniform(0.2, 0.4))
    disc_colour = _DISC
    if label == "rp":
        disc_colour = _DISC + (_PALE_DISC - _DISC) * min(1.0, 1.3 * inherited)
    rows, cols, xs, ys = _window(size, disc[0], disc[1], 1.2 * disc_r + 2 * scale)
    d = np.sqrt((xs - disc[0]) ** 2 + (ys - disc[1]) ** 2) / disc_r
    _blend(img[rows, cols], np.clip((1.0 - d) * disc_r / (1.2 * scale), 0, 1), disc_colour, 0.9)
    _blend(img[rows, cols], np.clip((cdr - d) * disc_r / (1.5 * scale), 0, 1), _CUP, 0.85)

    # Inherited signs, each on its own layer, drawn from their own generator (see ``signs`` above).
    lesion_im, draw = _layer(size)
    if label == "rp" and inherited > 0:
        n = int(signs.integers(30, 70) * (0.4 + 0.6 * s))
        for x, y in _polar_points(signs, n, (centre, centre), 0.6, 0.93, fov_r):
            _spicule(signs, draw, float(x), float(y), signs.uniform(2.0, 4.5) * scale)
        _blend_layer(img, lesion_im, 0.25 * scale, _PIGMENT, 0.9 * inherited)
    elif label == "stargardt" and inherited > 0:
        rows, cols, xs, ys = _window(size, macula[0], macula[1], 2.5 * sigma)
        atrophy = np.exp(-0.5 * ((xs - macula[0]) ** 2 + (ys - macula[1]) ** 2) / (0.6 * sigma) ** 2)
        _blend(img[rows, cols], atrophy, np.array([0.45, 0.32, 0.22], np.float32), 0.45 * inherited)
        n = int(signs.integers(10, 26) * (0.5 + 0.5 * s))
        for x, y in _polar_points(signs, n, macula, 0.3, 1.6, 0.2 * fov_r):
            angle = signs.uniform(0, math.pi)
            half = signs.uniform(1.0, 2.2) * scale
            draw.line(
                [
                    (x - half * math.cos(angle), y - half * math.sin(angle)),
                    (x + half * math.cos(angle), y + half * math.sin(angle)),
                ],
                fill=255,
                width=max(1, round(signs.uniform(0.8, 1.6) * scale)),
            )
        _blend_layer(img, lesion_im, 0.3 * scale, _FLECK, 0.85 * inherited)

    # The planted positive control (acquired labels only), added last: nothing drawn later multiplies it.
    if label in CONTROL_REGIONS and s > 0 and control_freq > 0:
        wave = planted_texture(signs, size, label, s, disc, disc_r, macula, fov_r, control_freq)
        img += wave[..., None] * _headroom(img, 0.8 / control_freq)

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
