"""Bad-input catalogue, dataset trees and manifests: every hostile or mistaken dataset input to
``mdf-search data prepare|synth|split|cache`` exits 2 naming the file, the field and the fix, prints no
traceback, and changes nothing in the case's folder.

Each case lays out a real fundus-like tree (a copy of the generated study of ``tests/data``: FIVES,
HRF and StoneRounds in their published layouts) and damages one thing in it. Images too large to
decode are made from a PNG header alone (a few dozen bytes), so no case decodes a big picture.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdf_search.data.schema import read_manifest, write_manifest
from mdf_search.data.sources import prepare
from tests.badinput.harness import Case, check, ids
from tests.data.conftest import (
    png_header,
    synth_study,  # noqa: F401  (the generated study, made once a session)
)

STUDY: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _study(synth_study: Path) -> None:  # noqa: F811
    STUDY["root"] = synth_study


# ---------------------------------------------------------------------------------------------------
# Layout helpers (each returns a setup for Case)
# ---------------------------------------------------------------------------------------------------
def copy_study(tmp: Path) -> Path:
    dest = tmp / "study"
    shutil.copytree(STUDY["root"], dest, symlinks=True)
    (dest / "manifest.parquet").unlink()
    return dest


def fives_image(tmp: Path, name: str = "1_A.png", split: str = "train") -> Path:
    return tmp / "study/FIVES" / split / "Original" / name


def with_study(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """Copy the study into the case's folder, then apply ``change`` to the copy."""

    def setup(tmp: Path) -> None:
        change(copy_study(tmp))

    return setup


def write_csv(text: str | bytes, name: str = "g.csv") -> Callable[[Path], None]:
    """A generic manifest next to a copy of the study; ``{img}`` is the study's first FIVES image,
    relative to the manifest (``study/FIVES/train/Original/1_A.png``)."""

    def setup(tmp: Path) -> None:
        copy_study(tmp)
        data = text.replace("{img}", "study/FIVES/train/Original/1_A.png") if isinstance(text, str) else text
        path = tmp / name
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)

    return setup


def made_manifest(change: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A study copy with its manifest prepared at ``m.parquet``, then ``change`` applied to the folder."""

    def setup(tmp: Path) -> None:
        study = copy_study(tmp)
        prepare(tmp / "m.parquet", fives=study / "FIVES")
        if change is not None:
            change(tmp)

    return setup


def unreadable(relative: str) -> Callable[[Path], None]:
    def change(study: Path) -> None:
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their permissions")
        (study / relative).chmod(0)

    return change


def _symlink(link: str, target: str) -> Callable[[Path], None]:
    def change(study: Path) -> None:
        path = study / link
        path.unlink(missing_ok=True)
        path.symlink_to(target)

    return change


def _replace(relative: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def change(study: Path) -> None:
        path = study / relative
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return change


def _mkdir(relative: str) -> Callable[[Path], None]:
    return lambda study: (study / relative).mkdir(parents=True)


def _table_manifest(
    table_change: Callable[[pa.Table], pa.Table], name: str = "m.parquet"
) -> Callable[[Path], None]:
    """A manifest Parquet (prepared from FIVES, then changed) written without the library's checks."""

    def setup(tmp: Path) -> None:
        study = copy_study(tmp)
        prepare(tmp / "good.parquet", fives=study / "FIVES")
        table, _ = read_manifest(tmp / "good.parquet")
        (tmp / "good.parquet").unlink()
        pq.write_table(table_change(table), tmp / name)

    return setup


def _null_column(name: str) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        values = pa.nulls(table.num_rows, table.schema.field(name).type)
        return table.set_column(table.column_names.index(name), name, values)

    return change


def _huge_row(table: pa.Table) -> pa.Table:
    """The first row claims a 12000 x 12000 image (a manifest written by hand or by an old version)."""
    width = [12000, *table.column("width").to_pylist()[1:]]
    return table.set_column(table.column_names.index("width"), "width", pa.array(width, pa.int32()))


FIVES = ("data", "prepare", "--fives", "study/FIVES", "--out", "out.parquet")
HRF = ("data", "prepare", "--hrf", "study/HRF", "--out", "out.parquet")
GENERIC = ("data", "prepare", "--manifest", "g.csv", "--out", "out.parquet")
SKIP = r"--skip-bad"
GOOD_HEADER = "image_path,case_id,label\n"

CASES: list[Case] = [
    # --- Finding 8: images too large, symlinks, an existing manifest --------------------------------
    Case(
        "png-decompression-bomb",
        FIVES,
        (r"train/Original/1_A\.png", r"900000000 pixels", r"decompression bomb", r"at most 8192 px", SKIP),
        with_study(_replace("FIVES/train/Original/1_A.png", png_header(30000, 30000))),
    ),
    Case(
        "png-12000-square-refused-at-prepare",
        FIVES,
        (r"1_A\.png", r"12000x12000", r"at most 8192 px", SKIP),
        with_study(_replace("FIVES/train/Original/1_A.png", png_header(12000, 12000))),
    ),
    Case(
        "png-one-side-too-long",
        HRF,
        (r"01_h\.jpg", r"20000x96", r"at most 8192 px", SKIP),
        with_study(_replace("HRF/images/01_h.jpg", png_header(20000, 96))),
    ),
    Case(
        "symlink-loop-in-originals",
        FIVES,
        (r"train/Original/9_G\.png", r"symbolic link loop", SKIP),
        with_study(_symlink("FIVES/train/Original/9_G.png", "9_G.png")),
    ),
    Case(
        "dangling-symlink-in-originals",
        FIVES,
        (r"test/Original/7_D\.png", r"broken symbolic link", r"gone\.png", SKIP),
        with_study(_symlink("FIVES/test/Original/7_D.png", "gone.png")),
    ),
    Case(
        "symlink-loop-as-hrf-images-folder",
        HRF,
        (r"HRF/images", r"symbolic link loop"),
        with_study(lambda s: (shutil.rmtree(s / "HRF/images"), (s / "HRF/images").symlink_to("images"))),
    ),
    Case(
        "existing-manifest-not-overwritten",
        FIVES,
        (r"out\.parquet", r"already exists", r"--force", r"another --out"),
        lambda tmp: (copy_study(tmp), (tmp / "out.parquet").write_bytes(b"the user's earlier manifest")),
    ),
    Case(
        "out-is-a-directory",
        FIVES,
        (r"out\.parquet", r"is a directory", r"--out"),
        lambda tmp: (copy_study(tmp), (tmp / "out.parquet").mkdir()),
    ),
    Case(
        "out-overwrites-its-own-input-even-with-force",
        (*GENERIC[:-1], "g.csv", "--force"),
        (r"g\.csv", r"is one of the inputs", r"another --out"),
        write_csv(GOOD_HEADER + "{img},p1,amd\n"),
    ),
    # --- Image files ---------------------------------------------------------------------------
    Case(
        "truncated-png",
        FIVES,
        (r"1_A\.png", r"corrupt|truncated", SKIP),
        with_study(_replace("FIVES/train/Original/1_A.png", lambda b: b[: len(b) // 2])),
    ),
    Case(
        "truncated-jpeg",
        HRF,
        (r"01_h\.jpg", r"truncated", SKIP),
        with_study(_replace("HRF/images/01_h.jpg", lambda b: b[: len(b) // 2])),
    ),
    Case(
        "html-page-saved-as-jpg",
        HRF,
        (r"01_g\.jpg", r"not an image", r"HTML", SKIP),
        with_study(_replace("HRF/images/01_g.jpg", b"<!DOCTYPE html><html><body>Sign in</body></html>")),
    ),
    Case(
        "git-lfs-pointer-as-png",
        FIVES,
        (r"2_A\.png", r"Git LFS pointer", r"git lfs pull"),
        with_study(
            _replace(
                "FIVES/train/Original/2_A.png",
                b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 123456\n",
            )
        ),
    ),
    Case(
        "zero-byte-image",
        FIVES,
        (r"3_A\.png", r"empty file", SKIP),
        with_study(_replace("FIVES/train/Original/3_A.png", b"")),
    ),
    Case(
        "directory-named-like-an-image",
        FIVES,
        (r"20_N\.png", r"is a directory", SKIP),
        with_study(_mkdir("FIVES/train/Original/20_N.png")),
    ),
    Case(
        "vessel-mask-of-another-size",
        FIVES,
        (r"vessel mask \S*/Ground truth/1_A\.png is 48x48 px", r"image is 96x96", SKIP),
        with_study(lambda s: _small_mask(s / "FIVES/train/Ground truth/1_A.png")),
    ),
    Case(
        "corrupt-vessel-mask",
        HRF,
        (r"manual1/01_h\.tif", r"vessel mask", r"corrupt|not an image", SKIP),
        with_study(_replace("HRF/manual1/01_h.tif", b"II*\x00garbage")),
    ),
    Case(
        "unreadable-image",
        FIVES,
        (r"4_D\.png", r"permission denied", r"chmod", SKIP),
        with_study(unreadable("FIVES/train/Original/4_D.png")),
    ),
    Case(
        "unreadable-originals-folder",
        FIVES,
        (r"test/Original", r"permission denied", r"chmod"),
        with_study(unreadable("FIVES/test/Original")),
    ),
    Case(
        "fives-without-images",
        FIVES,
        (r"FIVES", r"no FIVES images", r"train\|test/Original"),
        with_study(
            lambda s: [p.unlink() for p in (s / "FIVES").glob("*/Original/*.png")]  # type: ignore[func-returns-value]
        ),
    ),
    Case(
        "fives-is-a-file",
        ("data", "prepare", "--fives", "study/StoneRounds/manifest.csv", "--out", "out.parquet"),
        (r"manifest\.csv", r"is a file", r"--fives"),
        with_study(lambda s: None),
    ),
    # --- Manifest tables -----------------------------------------------------------------------
    Case(
        "manifest-image-missing",
        GENERIC,
        (r"g\.csv", r"row 1", r"nowhere/9_N\.png", r"image file not found", SKIP),
        write_csv(GOOD_HEADER + "study/nowhere/9_N.png,p1,normal\n"),
    ),
    Case(
        "manifest-image-is-a-directory",
        GENERIC,
        (r"row 1", r"study/FIVES/train", r"is a directory", SKIP),
        write_csv(GOOD_HEADER + "study/FIVES/train,p1,normal\n"),
    ),
    Case(
        "manifest-latin-1",
        GENERIC,
        (r"g\.csv", r"not UTF-8", r"Latin-1", r"save it as UTF-8"),
        write_csv(
            (GOOD_HEADER[:-1] + ",clinical_text\n{img},p1,amd,Sehschärfe vermindert\n").encode("latin-1")
        ),
    ),
    Case(
        "manifest-utf-16",
        GENERIC,
        (r"g\.csv", r"UTF-16", r"save it as UTF-8"),
        write_csv(
            (GOOD_HEADER + "{img},p1,amd\n")
            .replace("{img}", "study/FIVES/train/Original/1_A.png")
            .encode("utf-16")
        ),
    ),
    Case(
        "manifest-is-a-spreadsheet-renamed-csv",
        GENERIC,
        (r"g\.csv", r"not a text CSV", r"export"),
        write_csv(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(256))),
    ),
    Case(
        "manifest-missing-label-column",
        GENERIC,
        (r"g\.csv", r"missing column 'label'", r"image_path, case_id, label"),
        write_csv("image_path,case_id\n{img},p1\n"),
    ),
    Case(
        "manifest-semicolon-separated",
        GENERIC,
        (r"g\.csv", r"missing column", r"';'", r"comma"),
        write_csv("image_path;case_id;label\n{img};p1;amd\n"),
    ),
    Case(
        "manifest-ragged-row",
        GENERIC,
        (r"g\.csv", r"row|line", r"fields|columns"),
        write_csv(GOOD_HEADER + "{img},p1,amd\n{img},p2,amd,extra,cells\n"),
    ),
    Case(
        "manifest-unknown-label",
        GENERIC,
        (r"g\.csv", r"row 1", r"label 'mystery'", r"disease_type"),
        write_csv(GOOD_HEADER + "{img},p1,mystery\n"),
    ),
    Case(
        "stonerounds-unknown-diagnosis",
        ("data", "prepare", "--stonerounds", "sr.csv", "--out", "out.parquet"),
        (r"sr\.csv", r"unknown diagnosis", r"Cone dystrophy", r"--diagnosis"),
        write_csv(
            "image_path,case_id,clinical_text,diagnosis\n{img},SR1,night blindness,Cone dystrophy\n", "sr.csv"
        ),
    ),
    Case(
        "manifest-duplicate-row",
        GENERIC,
        (r"g\.csv", r"rows? 1 and 2|rows \[1, 2\]", r"duplicate|listed twice", SKIP),
        write_csv(GOOD_HEADER + "{img},p1,amd\n{img},p1,amd\n"),
    ),
    Case(
        "manifest-same-image-two-labels",
        GENERIC,
        (r"1_A\.png", r"different labels", SKIP),
        write_csv(GOOD_HEADER + "{img},p1,amd\n{img},p2,dr\n"),
    ),
    Case(
        "manifest-header-only",
        GENERIC,
        (r"g\.csv", r"no rows", r"one row per image"),
        write_csv(GOOD_HEADER),
    ),
    Case(
        "manifest-zero-bytes",
        GENERIC,
        (r"g\.csv", r"empty file", r"image_path, case_id, label"),
        write_csv(""),
    ),
    Case(
        "manifest-path-escapes-its-folder",
        GENERIC,
        (r"g\.csv", r"row 1", r"\.\./\.\./etc/hostname", r"outside", r"absolute path"),
        write_csv(GOOD_HEADER + "../../etc/hostname,p1,normal\n"),
    ),
    Case(
        "manifest-path-with-nul-byte",
        GENERIC,
        (r"g\.csv", r"row 1", r"NUL"),
        write_csv(GOOD_HEADER + "study/FIVES/train/Original/1_A.png\x00.txt,p1,amd\n"),
    ),
    Case(
        "stonerounds-is-a-directory",
        ("data", "prepare", "--stonerounds", "study/StoneRounds", "--out", "out.parquet"),
        (r"study/StoneRounds", r"is a directory", r"manifest\.csv"),
        with_study(lambda s: None),
    ),
    Case(
        "manifest-unreadable",
        GENERIC,
        (r"g\.csv", r"permission denied", r"chmod"),
        lambda tmp: (write_csv(GOOD_HEADER + "{img},p1,amd\n")(tmp), unreadable("../g.csv")(tmp / "study")),
    ),
    Case(
        "manifest-corrupt-parquet",
        ("data", "prepare", "--manifest", "g.parquet", "--out", "out.parquet"),
        (r"g\.parquet", r"cannot read manifest table", r"Parquet"),
        write_csv(b"PAR1" + b"\x00" * 40, "g.parquet"),
    ),
    # --- split -------------------------------------------------------------------------------
    Case(
        "split-given-the-csv-not-the-parquet",
        ("data", "split", "--manifest", "g.csv", "--out", "splits"),
        (r"g\.csv", r"not a readable Parquet manifest", r"data prepare"),
        write_csv(GOOD_HEADER + "{img},p1,amd\n"),
    ),
    Case(
        "split-manifest-is-a-directory",
        ("data", "split", "--manifest", "study", "--out", "splits"),
        (r"study", r"is a directory", r"manifest Parquet"),
        with_study(lambda s: None),
    ),
    Case(
        "split-manifest-with-null-labels",
        ("data", "split", "--manifest", "m.parquet", "--out", "splits"),
        (r"m\.parquet", r"column 'label'", r"empty|null", r"data prepare"),
        _table_manifest(_null_column("label")),
    ),
    Case(
        "split-manifest-without-rows",
        ("data", "split", "--manifest", "m.parquet", "--out", "splits"),
        (r"m\.parquet", r"no rows", r"data prepare"),
        _table_manifest(lambda t: t.slice(0, 0)),
    ),
    Case(
        "split-out-is-a-file",
        ("data", "split", "--manifest", "m.parquet", "--out", "splits"),
        (r"splits", r"is a file", r"--out"),
        made_manifest(lambda tmp: (tmp / "splits").write_text("not a folder")),
    ),
    Case(
        "split-fractions-sum-to-one",
        (
            "data",
            "split",
            "--manifest",
            "m.parquet",
            "--out",
            "splits",
            "--val-frac",
            "0.6",
            "--test-frac",
            "0.5",
        ),
        (r"--val-frac", r"--test-frac", r"below 1"),
        made_manifest(),
    ),
    Case(
        "split-unknown-test-source",
        (
            "data",
            "split",
            "--manifest",
            "m.parquet",
            "--out",
            "splits",
            "--scheme",
            "leave_source_out",
            "--test-source",
            "messidor",
        ),
        (r"messidor", r"fives"),
        made_manifest(),
    ),
    # --- cache -------------------------------------------------------------------------------
    Case(
        "cache-root-is-a-file",
        ("data", "cache", "--manifest", "m.parquet", "--root", "c", "--size", "32"),
        (r"\bc\b", r"is a file", r"--root"),
        made_manifest(lambda tmp: (tmp / "c").write_text("not a folder")),
    ),
    Case(
        "cache-image-deleted-after-prepare",
        ("data", "cache", "--manifest", "m.parquet", "--root", "c", "--size", "32"),
        (r"1_A\.png", r"image file not found", r"data prepare"),
        made_manifest(lambda tmp: fives_image(tmp).unlink()),
        may_write=("c",),
    ),
    Case(
        "cache-image-became-a-bomb",
        ("data", "cache", "--manifest", "m.parquet", "--root", "c", "--size", "32"),
        (r"1_A\.png", r"decompression bomb|30000x30000"),
        made_manifest(lambda tmp: fives_image(tmp).write_bytes(png_header(30000, 30000))),
        may_write=("c",),
    ),
    Case(
        "cache-manifest-lists-a-huge-image",
        ("data", "cache", "--manifest", "m.parquet", "--root", "c", "--size", "32"),
        (r"m\.parquet", r"12000x", r"at most 8192 px", r"data prepare"),
        _table_manifest(_huge_row),
    ),
    # --- synth -------------------------------------------------------------------------------
    Case(
        "synth-over-an-existing-study",
        ("data", "synth", "--out", "study", "--images", "12", "--size", "32"),
        (r"study", r"already holds", r"--force", r"another --out"),
        lambda tmp: (
            copy_study(tmp),
            write_manifest(
                read_manifest(STUDY["root"] / "manifest.parquet")[0], tmp / "study/manifest.parquet"
            ),
        ),
    ),
    Case(
        "synth-out-is-a-file",
        ("data", "synth", "--out", "notes.txt", "--images", "12", "--size", "32"),
        (r"notes\.txt", r"is a file", r"--out"),
        lambda tmp: (tmp / "notes.txt").write_text("keep me"),
    ),
]


def _small_mask(path: Path) -> None:
    from PIL import Image

    Image.new("L", (48, 48)).save(path)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check(case, tmp_path, monkeypatch)
