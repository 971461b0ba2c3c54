"""The synthetic study: deterministic bytes, fundus-like pictures, signs that respond to severity."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdf_search.data.render import control_frequency, planted_texture, render_fundus
from mdf_search.data.schema import read_manifest
from mdf_search.data.synthetic import clinical_text, ensure_synthetic, generate, plan


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate(tmp_path / name, images=12, size=48, seed=seed)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a) > 10


def test_layout_counts_and_progress(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    items = generate(tmp_path, images=30, size=40, seed=0, progress=lambda d, t: calls.append((d, t)))
    assert len(items) == 30 and calls[-1] == (30, 30) and len(calls) == 30
    sr = [i for i in items if i.source == "stonerounds"]
    assert all(sum(j.case == i.case for j in sr) >= 2 for i in sr)
    assert {i.label for i in items} == {"normal", "dr", "amd", "glaucoma", "rp", "stargardt"}
    with pytest.raises(ValueError, match="at least 12"):
        plan(11, 0)


def test_picture_looks_like_a_fundus() -> None:
    f = render_fundus(np.random.default_rng(0), 160, "normal", 1.0, "OD")
    assert f.rgb.shape == (160, 160, 3) and f.rgb.dtype == np.uint8
    assert f.rgb[:4, :4].max() == 0 and f.rgb[-4:, -4:].max() == 0  # black outside the circular FOV
    inside = f.rgb[f.fov > 0].astype(float)
    assert inside[:, 0].mean() > inside[:, 1].mean() > inside[:, 2].mean()  # orange-red
    centre = f.rgb[60:100, 60:100].mean()
    rim = f.rgb[f.fov > 0][:500].mean()
    assert centre > rim  # illumination falls off
    vessel_fraction = (f.vessels > 0).mean()
    assert 0.02 < vessel_fraction < 0.25 and not (f.vessels[f.fov == 0] > 0).any()
    # Vessels are darker than the background around them.
    assert f.rgb[f.vessels > 0, 1].mean() < f.rgb[(f.vessels == 0) & (f.fov > 0), 1].mean()


@pytest.mark.parametrize("label", ["dr", "amd", "glaucoma", "rp", "stargardt"])
def test_signs_scale_with_severity(label: str) -> None:
    """Same random state: a diseased picture differs from the normal one by its signs only."""

    def diff(severity: float) -> float:
        base = render_fundus(np.random.default_rng(5), 160, "normal", severity).rgb.astype(float)
        sick = render_fundus(np.random.default_rng(5), 160, label, severity).rgb.astype(float)
        return float(np.abs(sick - base).mean())

    assert diff(0.0) == 0.0 and 0.01 < diff(0.3) < diff(1.0)


def test_planted_texture_leaves_a_hole_where_the_disease_lives() -> None:
    """The envelope covers the posterior pole except the disease's region (amd: the macula)."""
    size, fov_r = 128, 0.47 * 128
    centre = (size - 1) / 2
    disc, macula = (centre + 0.36 * fov_r, centre), (centre - 0.14 * fov_r, centre)
    freq = control_frequency(size, 128)
    for label, hole in (("amd", macula), ("glaucoma", (disc[0] + 2.6 * 0.085 * fov_r, centre))):
        wave = planted_texture(
            np.random.default_rng(0), size, label, 1.0, disc, 0.085 * fov_r, macula, fov_r, freq
        )
        x, y = round(hole[0]), round(hole[1])
        assert np.abs(wave[y - 1 : y + 2, x - 1 : x + 2]).max() < 0.1
        assert np.abs(wave).max() > 0.95 and np.abs(wave[:4]).max() == 0.0  # full swing; none outside
    assert abs(float(wave.mean())) < 0.01  # zero mean


def test_clinical_text_is_informative_but_noisy() -> None:
    texts = [clinical_text(np.random.default_rng(i), "rp")[0] for i in range(200)]
    starg = [clinical_text(np.random.default_rng(i), "stargardt")[0] for i in range(200)]
    night = sum("night" in t or "dim light" in t or "peripheral" in t or "tunnel" in t for t in texts)
    assert 100 < night < 200  # mostly informative, never perfectly
    assert sum("ABCA4" in t for t in starg) > 20 and not any("ABCA4" in t for t in texts)
    assert any("year-old" in t for t in texts)


def _ensure(root: Path) -> str:
    return str(ensure_synthetic(root, images=12, size=40, severity=0.5, seed=4))


def test_ensure_synthetic_once_and_race_safe(tmp_path: Path) -> None:
    """Two independent processes generate the same study at once: one result, no temp dir left."""
    code = (
        "import sys; from mdf_search.data.synthetic import ensure_synthetic; "
        "print(ensure_synthetic(sys.argv[1], images=12, size=40, severity=0.5, seed=4))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert paths[0] == paths[1]
    table, _ = read_manifest(paths[0])
    assert table.num_rows == 12
    assert all(Path(p).is_file() for p in table.column("image_path").to_pylist())
    assert [p.name for p in tmp_path.iterdir()] == [Path(paths[0]).parent.name]  # no temp dir left
    stamp = Path(paths[0]).stat().st_mtime_ns
    assert _ensure(tmp_path) == paths[0] and Path(paths[0]).stat().st_mtime_ns == stamp
    Image.open(table.column("image_path").to_pylist()[0]).verify()
