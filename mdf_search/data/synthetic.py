"""A synthetic fundus study written in the real datasets' layouts, so the real readers are what runs.

``generate(out, ...)`` writes ``out/FIVES`` (``train|test/Original/{n}_{L}.png``, masks in
``Ground truth/`` for train and the misspelt ``Groud truth/`` for test, plus a stray ``Thumbs.db`` and
``Quality Assessment.xlsx``), ``out/HRF`` (3:2 JPEGs ``NN_h.jpg``, ``NN_g.jpg``, ``NN_dr.JPG``, vessel masks
``manual1/NN_x.tif``, FOV masks ``mask/NN_x_mask.tif``) and ``out/StoneRounds`` (PNG images of inherited
cases, 2-5 per case, and ``manifest.csv`` with clinical text). Pictures are drawn by
:mod:`mdf_search.data.render`. Every image's randomness comes from ``(seed, image index)``, so files are
bit-identical across runs and machines.

Sources, and the shortcut they carry (as the real data does; README, "What a result means"): FIVES-like (normal,
amd, dr, glaucoma; one image per case, as FIVES has no patient ids), HRF-like (normal, glaucoma, dr) and
StoneRounds-like (rp, stargardt), the only source with clinical text. So inherited = StoneRounds = "the
prompt has a history": the type task reads inherited from text presence alone. Test it with
``data.text=off|shuffled``; ``data.split=leave_source_out`` refuses to hold StoneRounds out, since training
would then hold no inherited image. Types are balanced (a third each; FIVES+HRF proportions would give
acquired 2.6x healthy, which pushed the smoke model to the majority class), and HRF holds as many healthy
as acquired images, so its JPEG compression is no trace of the type.

Where each signal lives, at the tiny preset (U-Net 128 px; the vision tower gets those pixels after the
collator's antialiased bilinear 2x resize, 64 px):

=========  ==========================================  ====================  =======  =====================
label      image sign                                  vision tower (64 px)  U-Net    clinical text
=========  ==========================================  ====================  =======  =====================
normal     none (cup/disc 0.2-0.4 for every label)     --                    --       none
dr, amd,   PLANTED CONTROL: a zero-mean diagonal       no (removed by the    yes      none
glaucoma   grating, 0.35 cycles/px at 128 px, over     resize)
           the posterior pole, with a hole where the
           disease lives: amd the macula, glaucoma a
           ring round the disc, dr scattered blots
rp         spicules 2-5 px, thin vessels, pale disc    yes (weak)            yes      night blindness, RHO..
stargardt  flecks 2-4 px, darker macula                yes (weak)            yes      central loss, ABCA4..
=========  ==========================================  ====================  =======  =====================

The control is planted on purpose and is not a finding: healthy vs acquired is separable from the
U-Net's input and from nothing the vision tower gets, so a fused model must beat the baseline there or
the platform is broken. Built in :func:`~mdf_search.data.render.planted_texture`: the swing per channel
is its smoothed distance to [0.05, 0.95] (no clipping, local mean kept); 0.35 cycles/px is below 128 px's
Nyquist (0.5) and where the resize's filter passes about 1 % (cos³(πf) per axis, squared on a diagonal).
Measured by tests/data/test_data_control.py (real files, cache, augmentation): planted residual 15.5
grey levels RMS at 128 px, 0.22 at 64 px (rounding noise included); a probe shaped like the U-Net's level
1 with the fusion's 4x4 patch means reaches 0.93-1.0 test accuracy in 5 epochs at 128 px, chance at 64 px;
logistic regression is at chance on 64 px pixels and local energies, 1.0 on 128 px local energies.
It holds only while the tower sees half the U-Net's resolution: with ``data.vision_tiles=4`` (the tower
gets 128 px at tiny) or another preset both paths see it (``control_size`` retunes it); a picture below
:func:`~mdf_search.data.render.min_size_for_control` (105 px for 128) cannot carry it, and ``generate``
warns and plants none. ``severity=0`` is a negative control: acquired pictures equal healthy ones.
Version 1's acquired signs (microaneurysms, haemorrhages, drusen, a larger cup) were dropped: a 2-layer
conv on 64 px images separated healthy from acquired with them (67 % against 50 % chance).

Inherited signs are drawn at 70 % strength, so rp vs stargardt is partly a text question; 15 % of
inherited cases get uninformative text (distractors only), so neither modality alone is perfect.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from mdf_search.atomic import commit_dir, temp_sibling
from mdf_search.config import SYNTHETIC_MIN_IMAGES, SYNTHETIC_MIN_SIZE, DataConfig
from mdf_search.data.render import control_frequency, min_size_for_control, render_fundus
from mdf_search.data.schema import read_manifest, write_manifest
from mdf_search.data.sources import prepare

log = logging.getLogger(__name__)

SYNTH_VERSION = 2  # bump when the pictures change: it is part of ensure_synthetic's directory key
CONTROL_SIZE = 128  # the tiny preset's U-Net input: its vision tower (64 px) cannot see the control
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Planned:
    """One image to draw and where it goes."""

    index: int
    source: str  # fives | hrf | stonerounds
    label: str
    path: str  # relative to the output root
    mask_path: str  # relative; "" for none
    fov_path: str
    eye: str
    case: int  # StoneRounds case number (-1 otherwise)


def plan(images: int, seed: int) -> list[Planned]:
    """Split ``images`` so the three disease types are balanced (about a third each).

    Healthy: FIVES ``N`` and HRF ``h``; acquired: FIVES ``A``/``D``/``G`` and HRF ``g``/``dr``; inherited:
    StoneRounds cases. HRF (JPEG, a small second source) holds about 10 % of the images, the same number
    of healthy as of acquired ones, so a compression trace cannot tell the two types apart.
    """
    if images < SYNTHETIC_MIN_IMAGES:
        raise ValueError(
            f"need at least {SYNTHETIC_MIN_IMAGES} images (4 FIVES, 3 HRF, 5 StoneRounds), got {images}"
        )
    rng = np.random.default_rng([seed, 999_983])
    per_code = {"g": max(1, round(0.05 * images)), "dr": max(1, round(0.05 * images))}
    per_code["h"] = per_code["g"] + per_code["dr"]  # healthy and acquired: the same share of HRF JPEGs
    fives = max(1, images // 3 - per_code["h"])  # per type
    per_letter = {"N": fives, **dict.fromkeys("ADG", max(1, round(fives / 3)))}
    short = 5 - (images - sum(per_letter.values()) - sum(per_code.values()))  # StoneRounds: two cases
    for letter in ("N", "A", "D", "G") * 5:
        if short > 0 and per_letter[letter] > 1:
            per_letter[letter] -= 1
            short -= 1
    for code in ("h", "g", "dr"):
        if short > 0 and per_code[code] > 1:
            per_code[code] -= 1
            short -= 1
    items: list[Planned] = []

    def add(
        source: str, label: str, path: str, mask: str = "", fov: str = "", eye: str = "OD", case: int = -1
    ) -> None:
        items.append(Planned(len(items), source, label, path, mask, fov, eye, case))

    counters = {"train": 0, "test": 0}
    for letter, label in (("A", "amd"), ("D", "dr"), ("G", "glaucoma"), ("N", "normal")):
        count = per_letter[letter]
        n_train = max(1, round(count * 0.75)) if count > 1 else 1
        for k in range(count):
            split = "train" if k < n_train else "test"
            counters[split] += 1
            name = f"{counters[split]}_{letter}.png"
            truth = "Ground truth" if split == "train" else "Groud truth"
            add(
                "fives",
                label,
                f"FIVES/{split}/Original/{name}",
                f"FIVES/{split}/{truth}/{name}",
                eye=str(rng.choice(["OD", "OS"])),
            )
    for code, label, ext in (("h", "normal", "jpg"), ("g", "glaucoma", "jpg"), ("dr", "dr", "JPG")):
        for k in range(1, per_code[code] + 1):
            stem = f"{k:02d}_{code}"
            add(
                "hrf",
                label,
                f"HRF/images/{stem}.{ext}",
                f"HRF/manual1/{stem}.tif",
                f"HRF/mask/{stem}_mask.tif",
                eye=str(rng.choice(["OD", "OS"])),
            )
    remaining, case = images - len(items), 0
    while remaining > 0:
        count = min(remaining if case else remaining - 2, int(rng.integers(2, 5)))  # rp and stargardt
        if remaining - count == 1:
            count += 1  # never leave a one-image case behind
        label = ("rp", "stargardt")[case % 2]
        for k in range(count):
            eye = ("OD", "OS")[k % 2]
            add(
                "stonerounds",
                label,
                f"StoneRounds/images/case{case:03d}_{eye}_{k // 2}.png",
                eye=eye,
                case=case,
            )
        remaining -= count
        case += 1
    return items


# ---------------------------------------------------------------------------------------------------
# Clinical text for inherited cases: templates, noise, distractors.
# ---------------------------------------------------------------------------------------------------
_SYMPTOMS = {
    "rp": [
        "night blindness since childhood",
        "difficulty seeing in dim light",
        "progressive loss of peripheral vision",
        "tunnel vision",
        "bumps into objects at dusk",
        "constricted visual fields",
    ],
    "stargardt": [
        "central vision loss",
        "difficulty reading",
        "blurred central vision",
        "a central scotoma",
        "trouble recognising faces",
        "slowly worsening central acuity",
    ],
}
_SHARED = ["photophobia", "reduced visual acuity", "glare sensitivity", "mild colour vision problems"]
_INHERITANCE = {
    "rp": ["autosomal dominant", "autosomal recessive", "X-linked"],
    "stargardt": ["autosomal recessive"],
}
_GENES = {"rp": ["RHO", "USH2A", "RPGR", "PRPH2", "RP1"], "stargardt": ["ABCA4", "ABCA4", "ELOVL4"]}
_DISTRACTORS = [
    "No history of diabetes.",
    "Wears glasses for mild myopia.",
    "Blood pressure well controlled.",
    "Referred by the community optometrist.",
    "No ocular trauma.",
    "Non-smoker.",
    "Allergic to penicillin.",
    "Works as a teacher.",
    "Previous cataract assessment was unremarkable.",
    "Takes no regular medication.",
]


def clinical_text(rng: np.random.Generator, label: str) -> tuple[str, str]:
    """(text, gene) for an inherited case: age, symptoms, family history, inheritance, sometimes a gene."""
    age = int(rng.integers(8, 45) if label == "rp" else rng.integers(7, 35))
    who = (
        rng.choice(["A", "This", "The"])
        + " "
        + str(age)
        + "-year-old "
        + rng.choice(["man", "woman", "patient"])
    )
    gene = str(rng.choice(_GENES[label])) if rng.random() < 0.6 else ""
    if rng.random() < 0.15:  # uninformative case: only the shared symptoms and distractors
        parts = [f"{who} presents with {rng.choice(_SHARED)}."]
        gene = ""
    else:
        symptoms = rng.choice(_SYMPTOMS[label], size=int(rng.integers(1, 3)), replace=False)
        parts = [f"{who} reports {' and '.join(symptoms)}."]
        if rng.random() < 0.5:
            parts.append(f"Also notes {rng.choice(_SHARED)}.")
        inheritance = str(rng.choice(_INHERITANCE[label]))
        if rng.random() < 0.7:
            relative = rng.choice(["mother", "father", "brother", "sister", "maternal uncle", "cousin"])
            parts.append(f"Family history: {relative} affected; pattern suggests {inheritance} inheritance.")
        elif rng.random() < 0.5:
            parts.append("No known family history.")
        if gene:
            parts.append(f"Genetic testing: pathogenic variant in {gene}.")
    parts.extend(rng.choice(_DISTRACTORS, size=int(rng.integers(0, 3)), replace=False).tolist())
    order = rng.permutation(len(parts) - 1) + 1  # keep the presenting sentence first
    text = " ".join([parts[0], *(parts[i] for i in order)])
    return text, gene


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------
def _save(array: np.ndarray, path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=92)
    elif suffix in (".tif", ".tiff"):
        im.save(path, format="TIFF", compression="tiff_deflate" if size > 512 else None)
    else:
        im.save(path, format="PNG", compress_level=1 if size > 512 else 6)


def _draw(item: Planned, out: Path, size: int, severity: float, seed: int, control_size: int) -> None:
    rng = np.random.default_rng([seed, item.index])
    strength = severity * float(rng.uniform(0.6, 1.0))
    fundus = render_fundus(rng, size, item.label, strength, item.eye, control_size=control_size)
    rgb, vessels, fov = fundus.rgb, fundus.vessels, fundus.fov
    if item.source == "hrf":  # HRF photographs are 3:2 with the field of view centred
        pad = ((0, 0), (size // 4, size // 4))
        rgb = np.pad(rgb, (*pad, (0, 0)))
        vessels, fov = np.pad(vessels, pad), np.pad(fov, pad)
    _save(rgb, out / item.path, size)
    if item.mask_path:
        _save(vessels, out / item.mask_path, size)
    if item.fov_path:
        _save(fov, out / item.fov_path, size)


def _stonerounds_csv(items: list[Planned], seed: int) -> str:
    """manifest.csv text: one row per image; text and gene are per case (shared by its images)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_path", "case_id", "clinical_text", "diagnosis", "gene", "eye"])
    names = {"rp": "Retinitis pigmentosa", "stargardt": "Stargardt disease"}
    texts: dict[int, tuple[str, str]] = {}
    for item in items:
        if item.source != "stonerounds":
            continue
        if item.case not in texts:
            texts[item.case] = clinical_text(np.random.default_rng([seed, 7_000_003, item.case]), item.label)
        text, gene = texts[item.case]
        path = item.path.removeprefix("StoneRounds/")
        writer.writerow([path, f"SR{item.case:03d}", text, names[item.label], gene, item.eye])
    return buffer.getvalue()


def generate(
    out: str | Path,
    *,
    images: int = DataConfig.synthetic_images,
    size: int = DataConfig.synthetic_size,
    seed: int = 0,
    severity: float = DataConfig.synthetic_severity,
    control_size: int = CONTROL_SIZE,
    progress: Progress | None = None,
) -> list[Planned]:
    """Write the synthetic study under ``out`` (FIVES/, HRF/, StoneRounds/); returns what was drawn.

    ``control_size``: the U-Net input side the planted control is tuned for (0: plant none).
    """
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], but got {severity}")
    if size < SYNTHETIC_MIN_SIZE:
        raise ValueError(f"size must be at least {SYNTHETIC_MIN_SIZE} px, but got {size}")
    if control_size < 0:
        raise ValueError(f"control_size must be >= 0 (0: no planted control), but got {control_size}")
    if control_size and not control_frequency(size, control_size):
        log.warning(
            "%d px pictures cannot carry the positive control tuned for %d px (it would alias): acquired "
            "images get no planted sign; generate at size >= %d",
            size,
            control_size,
            min_size_for_control(control_size),
        )
    out = Path(out)
    items = plan(images, seed)
    for done, item in enumerate(items, start=1):
        _draw(item, out, size, severity, seed, control_size)
        if progress:
            progress(done, len(items))
    (out / "FIVES/train/Original/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    (out / "FIVES/Quality Assessment.xlsx").write_bytes(b"PK\x03\x04 not a real workbook")
    (out / "StoneRounds/manifest.csv").write_text(_stonerounds_csv(items, seed))
    log.info(
        "wrote %d synthetic images (%d px, severity %.2f, seed %d) to %s",
        len(items),
        size,
        severity,
        seed,
        out,
    )
    return items


def build_manifest(root: str | Path, out: str | Path | None = None) -> Path:
    """Run the real readers over a generated tree and write ``manifest.parquet``."""
    root = Path(root)
    result = prepare(
        out or root / "manifest.parquet",
        fives=root / "FIVES",
        hrf=root / "HRF",
        stonerounds=root / "StoneRounds/manifest.csv",
        force=True,  # the generated tree's own manifest, rewritten with the tree
    )
    return result.path


def ensure_synthetic(
    cache_root: str | Path,
    images: int = DataConfig.synthetic_images,
    size: int = DataConfig.synthetic_size,
    severity: float = DataConfig.synthetic_severity,
    seed: int = 0,
    progress: Progress | None = None,
    control_size: int = CONTROL_SIZE,
) -> Path:
    """The manifest of a synthetic study with these parameters, generating it on first use.

    Generation happens in a temp directory that is renamed into place when complete (the commit point);
    when two processes race, the loser deletes its copy and returns the winner's manifest.
    """
    cache_root = Path(cache_root)
    final = cache_root / (
        f"synthetic-v{SYNTH_VERSION}-n{images}-px{size}-sev{severity:g}-seed{seed}-ctl{control_size}"
    )
    manifest = final / "manifest.parquet"
    if manifest.is_file():
        return manifest
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        generate(
            tmp,
            images=images,
            size=size,
            seed=seed,
            severity=severity,
            control_size=control_size,
            progress=progress,
        )
        # Read from the temp tree, but record the paths the files will have after the rename.
        build_manifest(tmp, tmp / "manifest.parquet")
        table, _ = read_manifest(tmp / "manifest.parquet")
        table = rebase_paths(table, tmp, final)
        write_manifest(table, tmp / "manifest.parquet")
        commit_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def rebase_paths(table: pa.Table, old: Path, new: Path) -> pa.Table:
    """Rewrite the temp directory's prefix of every path column to the final directory's."""
    old_prefix, new_prefix = str(old.resolve()), str(new.resolve())
    for name in ("image_path", "vessel_mask_path", "fov_mask_path"):
        column = pc.replace_substring(table.column(name), old_prefix, new_prefix, max_replacements=1)
        table = table.set_column(table.column_names.index(name), name, column)
    return table
