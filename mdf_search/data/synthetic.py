"""A synthetic fundus study written in the real datasets' layouts, so the real readers are what runs.

``generate(out, ...)`` writes ``out/FIVES`` (``train|test/Original/{n}_{L}.png``, masks in
``Ground truth/`` for train and the misspelt ``Groud truth/`` for test, plus a stray ``Thumbs.db`` and
``Quality Assessment.xlsx``), ``out/HRF`` (3:2 JPEGs ``NN_h.jpg``, ``NN_g.jpg``, ``NN_dr.JPG``, vessel masks
``manual1/NN_x.tif``, FOV masks ``mask/NN_x_mask.tif``) and ``out/StoneRounds`` (PNG images of inherited
cases, several per case, and ``manifest.csv`` with clinical text). Pictures are drawn by
:mod:`mdf_search.data.render`.

The study is built so that the research question (does fusing U-Net features help, and where?) stays
open instead of being answered by construction. Where each signal lives:

======================  ===================================  ==================  ======================
label / signal          image sign (size at 160 px)          vision tower        clinical text
======================  ===================================  ==================  ======================
normal                  none; cup/disc 0.2-0.4               --                  none
dr   microaneurysms     dark dots 1-3 px                     sub-patch (tiny:    none
                                                             <1 px at 64 px;
                                                             small: ~1 px at
                                                             112 px): U-Net only
dr   haemorrhages       blots 5-9 px                         visible             none
dr   hard exudates      yellow dots 1-3 px near the macula   sub-patch           none
amd  drusen             yellow dots 2-4 px around the macula marginal            none
glaucoma                cup/disc grows by 0.5*severity       visible (large)     none
rp   spicules           dark 3-5 arm stars, 2-5 px, periph.  marginal            night blindness,
     + thin vessels     vessel width x(1-0.6*s*0.7)          U-Net (vessels)     tunnel vision, genes
     + pale disc        disc pallor                          visible             RHO / USH2A / RPGR ...
stargardt flecks        yellow lines 2-4 px around macula    sub-patch/marginal  central vision loss,
     + atrophy          darker macula                        weak                ABCA4, recessive
======================  ===================================  ==================  ======================

Inherited signs (rp, stargardt) are drawn at 70 % of the acquired signs' strength, so at low
``severity`` rp vs stargardt is mostly a text question; 15 % of inherited cases get uninformative text
(distractors only), so neither modality alone is perfect. Acquired cases (FIVES, HRF) have no text, as
in the real data: the type task's "inherited" class is partly readable from text presence, which is
also true of the real study. Every image's randomness comes from ``(seed, image index)``, so files are
bit-identical across runs and machines.
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

from mdf_search.data.render import render_fundus
from mdf_search.data.schema import commit_dir, read_manifest, temp_sibling, write_manifest
from mdf_search.data.sources import prepare

log = logging.getLogger(__name__)

SYNTH_VERSION = 1  # bump when the pictures change: it is part of ensure_synthetic's directory key
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
    """Split ``images`` between the three layouts: ~45 % FIVES, ~15 % HRF, the rest StoneRounds cases."""
    if images < 12:
        raise ValueError(f"need at least 12 images (4 FIVES, 3 HRF, 5 StoneRounds), got {images}")
    rng = np.random.default_rng([seed, 999_983])
    per_letter = max(1, int(0.45 * images) // 4)
    per_code = max(1, int(0.15 * images) // 3)
    items: list[Planned] = []

    def add(
        source: str, label: str, path: str, mask: str = "", fov: str = "", eye: str = "OD", case: int = -1
    ) -> None:
        items.append(Planned(len(items), source, label, path, mask, fov, eye, case))

    n_train = max(1, round(per_letter * 0.75)) if per_letter > 1 else 1
    counters = {"train": 0, "test": 0}
    for letter, label in (("A", "amd"), ("D", "dr"), ("G", "glaucoma"), ("N", "normal")):
        for k in range(per_letter):
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
        for k in range(1, per_code + 1):
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
        count = min(remaining, int(rng.integers(2, 5)))
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


def _draw(item: Planned, out: Path, size: int, severity: float, seed: int) -> None:
    rng = np.random.default_rng([seed, item.index])
    fundus = render_fundus(rng, size, item.label, severity * float(rng.uniform(0.6, 1.0)), item.eye)
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
        writer.writerow(
            [
                item.path.removeprefix("StoneRounds/"),
                f"SR{item.case:03d}",
                text,
                names[item.label],
                gene,
                item.eye,
            ]
        )
    return buffer.getvalue()


def generate(
    out: str | Path,
    *,
    images: int = 240,
    size: int = 160,
    seed: int = 0,
    severity: float = 1.0,
    progress: Progress | None = None,
) -> list[Planned]:
    """Write the synthetic study under ``out`` (FIVES/, HRF/, StoneRounds/); returns what was drawn."""
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], but got {severity}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, but got {size}")
    out = Path(out)
    items = plan(images, seed)
    for done, item in enumerate(items, start=1):
        _draw(item, out, size, severity, seed)
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
    )
    return result.path


def ensure_synthetic(
    cache_root: str | Path,
    images: int = 240,
    size: int = 160,
    severity: float = 1.0,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """The manifest of a synthetic study with these parameters, generating it on first use.

    Generation happens in a temp directory that is renamed into place when complete (the commit point);
    when two processes race, the loser deletes its copy and returns the winner's manifest.
    """
    cache_root = Path(cache_root)
    final = cache_root / f"synthetic-v{SYNTH_VERSION}-n{images}-px{size}-sev{severity:g}-seed{seed}"
    manifest = final / "manifest.parquet"
    if manifest.is_file():
        return manifest
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        generate(tmp, images=images, size=size, seed=seed, severity=severity, progress=progress)
        # Read from the temp tree, but record the paths the files will have after the rename.
        build_manifest(tmp, tmp / "manifest.parquet")
        table, _ = read_manifest(tmp / "manifest.parquet")
        table = _rebase(table, tmp, final)
        write_manifest(table, tmp / "manifest.parquet")
        commit_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _rebase(table: pa.Table, old: Path, new: Path) -> pa.Table:
    """Rewrite the temp directory's prefix of every path column to the final directory's."""
    old_prefix, new_prefix = str(old.resolve()), str(new.resolve())
    for name in ("image_path", "vessel_mask_path", "fov_mask_path"):
        column = pc.replace_substring(table.column(name), old_prefix, new_prefix, max_replacements=1)
        table = table.set_column(table.column_names.index(name), name, column)
    return table
