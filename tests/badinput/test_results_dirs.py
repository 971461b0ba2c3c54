"""Bad results folders and bad options to the commands that read them (``leaderboard``, ``report``).

A results folder is written by the sweep, but anyone who can write the storage can leave a broken or
hostile file in it: a 0-byte or truncated part, a part of the wrong types, markup or escape codes in an
arm name, an alias bomb as spec.yaml. A bad option is refused with exit 2 and the option's name; a bad
part is named, moved to ``quarantine/<table>/`` (the one write a read may make, and never a deletion)
and the command goes on with what is readable, warning (exit 0) with the file and what was set aside.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdf_search.report.synthetic import synthetic_experiment
from mdf_search.results.store import ResultsStore
from tests.badinput.harness import Case, check, ids

PART = "exp/trials/t00001-a1.parquet"  # the part every corrupt-part case breaks
MOVED = "exp/quarantine/trials/t00001-a1.parquet"
ORIGINAL = "original.bin"  # a copy of the bad bytes beside the experiment: what the quarantine must hold


def _experiment(tmp: Path, **kw: Any) -> Path:
    """2 arms x 2 seeds, one epoch, every trial completed (t00000 ... t00003)."""
    options: dict[str, Any] = {"seeds": (0, 1), "only_arms": 2, "epochs": 1, "failures": False}
    options["predictions"] = False
    return synthetic_experiment(tmp / "exp", **{**options, **kw})


def _rewrite(root: Path, trial_id: str, **changes: Any) -> None:
    """Write a trial's row again through the real writer, with ``changes``."""
    store = ResultsStore(str(root))
    row = store.trials().filter(pl.col("trial_id") == trial_id).row(0, named=True)
    row.pop("written_at")
    store.write_trial({**row, **changes})


def _bad_part(make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Replace ``PART`` by ``make(its bytes)`` and keep a copy of the result in ``ORIGINAL``."""

    def setup(tmp: Path) -> None:
        _experiment(tmp)
        part = tmp / PART
        bad = make(part.read_bytes())
        part.write_bytes(bad)
        (tmp / ORIGINAL).write_bytes(bad)

    return setup


def _retyped(change: Callable[[pa.Table], pa.Table]) -> Callable[[bytes], bytes]:
    def make(data: bytes) -> bytes:
        table = change(pq.read_table(pa.BufferReader(data)))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return bytes(sink.getvalue().to_pybytes())

    return make


def _set_column(name: str, values: pa.Array) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        return table.set_column(table.schema.get_field_index(name), name, values)

    return change


def _duplicate_column(table: pa.Table) -> pa.Table:
    return table.append_column("status", table.column("status"))


def _no_trial_id(table: pa.Table) -> pa.Table:
    return table.drop_columns(["trial_id"])


def _arms(*names: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _experiment(tmp, arm_names=names)

    return setup


def _trial_values(trial_id: str, **changes: Any) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _rewrite(_experiment(tmp), trial_id, **changes)

    return setup


def _no_experiment(tmp: Path) -> None:
    return None


def _file_as_experiment(tmp: Path) -> None:
    (tmp / "exp").write_text("not a folder\n")


def _no_trials_folder(tmp: Path) -> None:
    (tmp / "exp").mkdir()
    (tmp / "exp/spec.yaml").write_text("experiment: exp\n")


def _empty_trials_folder(tmp: Path) -> None:
    (tmp / "exp/trials").mkdir(parents=True)


def _trials_is_a_file(tmp: Path) -> None:
    (tmp / "exp").mkdir()
    (tmp / "exp/trials").write_text("t00000,0.9\n")


def _corrupt_epochs_part(tmp: Path) -> None:
    root = _experiment(tmp)
    part = root / "epochs/t00002-a1-e1.parquet"
    part.write_bytes(part.read_bytes()[:40])
    (tmp / ORIGINAL).write_bytes(part.read_bytes())


def _corrupt_compact_file(tmp: Path) -> None:
    root = _experiment(tmp)
    store = ResultsStore(str(root))
    row = store.trials().filter(pl.col("trial_id") == "t00002").row(0, named=True)
    row.pop("written_at")
    store.compact("trials")
    compact = next((root / "trials").glob("compact-*.parquet"))
    compact.write_bytes(compact.read_bytes()[:-100])
    store.write_trial({**row, "message": "written after the compact file"})


def _earlier_quarantine(tmp: Path) -> None:
    root = _experiment(tmp)
    (root / "trials/quarantine").mkdir()
    (root / "trials/quarantine/t00009-a1.parquet").write_bytes(b"")


def _every_part_corrupt(tmp: Path) -> None:
    root = _experiment(tmp)
    for part in (root / "trials").glob("*.parquet"):
        part.write_bytes(b"PAR1")


def _hostile_param(tmp: Path) -> None:
    root = _experiment(tmp)
    _rewrite(root, "t00001", **{"data.manifest": "[link=https://example.invalid]manifest.csv[/link] [/]"})


def _hostile_experiment_name(tmp: Path) -> None:
    root = _experiment(tmp)
    arms = json.loads((root / "arms.json").read_text())
    arms["experiment"] = "exp [/] [bold red]\x1b[2J"
    (root / "arms.json").write_text(json.dumps(arms))


def _no_arms_json(tmp: Path, spec: bytes) -> Path:
    root = _experiment(tmp)
    (root / "arms.json").unlink()
    (root / "spec.yaml").write_bytes(spec)
    return root


def _alias_bomb(tmp: Path) -> None:
    lines = ["a: &a [" + ", ".join(["lol"] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines += ["experiment: exp", "scientific: {fusion.levels: *i}"]
    _no_arms_json(tmp, ("\n".join(lines) + "\n").encode())


def _binary_spec(tmp: Path) -> None:
    _no_arms_json(tmp, bytes(range(256)) * 4)


def _arms_json_folder(tmp: Path) -> None:
    root = _experiment(tmp)
    (root / "arms.json").unlink()
    (root / "arms.json").mkdir()


def _arms_json_deep(tmp: Path) -> None:
    root = _experiment(tmp)
    (root / "arms.json").write_text("[" * 100_000 + "]" * 100_000)


def _non_ascii_arm(tmp: Path) -> None:
    _experiment(tmp, arm_names=("fusion.levels=été", "fusion.levels=4"))


NESTED = "(" * 3000 + 'arm == "x"' + ")" * 3000
NOTS = "not " * 3000 + 'arm == "x"'
MANY_ORS = " or ".join(f'arm == "a{i}"' for i in range(1000))
LEADERBOARD = ("leaderboard", "exp")
CORRUPT = (PART, "exp/quarantine", "exp/quarantine/trials", MOVED)

# fmt: off
CASES: list[Case] = [
    # -- the folder ------------------------------------------------------------------------------------
    Case("missing-experiment-folder", LEADERBOARD, ("exp", "no such experiment directory", "runs/<experiment>"),
         _no_experiment),
    Case("file-instead-of-experiment-folder", LEADERBOARD, ("exp", "a file, not an experiment directory"),
         _file_as_experiment),
    Case("no-trials-folder", LEADERBOARD, ("exp", "no trial results yet", "sweep running"), _no_trials_folder),
    Case("empty-trials-folder", LEADERBOARD, ("exp", "no trial results yet"), _empty_trials_folder),
    Case("trials-is-a-file", LEADERBOARD, (r"exp/trials", "not a folder", "move it away"), _trials_is_a_file),
    # -- corrupt parts: named, set aside, the rest shown ---------------------------------------------
    Case("zero-byte-part", LEADERBOARD, ("t00001-a1.parquet", "set aside", "quarantine/trials", "t00000"),
         _bad_part(lambda data: b""), CORRUPT, code=0),
    Case("truncated-part", LEADERBOARD, ("t00001-a1.parquet", "not a readable parquet", "quarantine/trials"),
         _bad_part(lambda data: data[: len(data) // 2]), CORRUPT, code=0),
    Case("text-file-named-parquet", LEADERBOARD, ("t00001-a1.parquet", "set aside", "t00002"),
         _bad_part(lambda data: b"trial_id,val/macro_f1\nt00001,0.99\n"), CORRUPT, code=0),
    Case("metric-written-as-text", LEADERBOARD, ("t00001-a1.parquet", "val/macro_f1", "set aside", "1 row"),
         _bad_part(_retyped(_set_column("val/macro_f1", pa.array(["0.99"])))), CORRUPT, code=0),
    Case("attempt-written-as-text", LEADERBOARD, ("t00001-a1.parquet", "attempt", "int64", "set aside"),
         _bad_part(_retyped(_set_column("attempt", pa.array(["1"])))), CORRUPT, code=0),
    Case("part-without-trial-id", LEADERBOARD, ("t00001-a1.parquet", "trial_id", "set aside"),
         _bad_part(_retyped(_no_trial_id)), CORRUPT, code=0),
    Case("part-with-a-duplicate-column", LEADERBOARD, ("t00001-a1.parquet", "status", "set aside"),
         _bad_part(_retyped(_duplicate_column)), CORRUPT, code=0),
    Case("corrupt-epochs-part", LEADERBOARD, ("t00002-a1-e1.parquet", "quarantine/epochs"), _corrupt_epochs_part,
         ("exp/epochs/t00002-a1-e1.parquet", "exp/quarantine*"), code=0),
    Case("truncated-compact-file", LEADERBOARD, (r"compact-\d+\.parquet", "set aside", "t00002"),
         _corrupt_compact_file, ("exp/trials/compact-*", "exp/quarantine*"), code=0),
    Case("part-set-aside-earlier", LEADERBOARD, ("trials/quarantine", "t00009-a1.parquet", "not shown"),
         _earlier_quarantine, code=0),
    Case("every-part-corrupt", LEADERBOARD, ("no readable trial results", "4 parts set aside", "quarantine"),
         _every_part_corrupt, ("exp/trials/*", "exp/quarantine*")),
    Case("report-with-a-corrupt-part", ("report", "exp", "--out", "rep"), ("t00001-a1.parquet", "set aside"),
         _bad_part(lambda data: b"\x00" * 64), (*CORRUPT, "rep", "rep/*", "exp/reports.log"), code=0),
    # -- non-finite metrics: never a valid result ------------------------------------------------------
    Case("inf-metric", (*LEADERBOARD, "--format", "json"),
         (r'"rank": 4, "trial_id": "t00001"', "1 trial", "non-finite", "ranked last"),
         _trial_values("t00001", **{"val/macro_f1": float("inf")}), code=0),
    Case("nan-metric", (*LEADERBOARD, "--format", "csv"), ("1 trial", "non-finite", r"t00002,.*nan"),
         _trial_values("t00002", **{"val/macro_f1": float("nan")}), code=0),
    Case("minus-inf-cost", (*LEADERBOARD, "--by", "wall_s", "--format", "json"),
         (r'"rank": 4, "trial_id": "t00003"', "non-finite wall_s"),
         _trial_values("t00003", wall_s=float("-inf")), code=0),
    Case("inf-metric-grouped", (*LEADERBOARD, "--group-by", "arm", "--format", "csv"),
         ("non-finite", r"fusion.levels=none,1,"),
         _trial_values("t00000", **{"val/macro_f1": float("inf")}), code=0),
    # -- hostile data on the terminal and in text formats ----------------------------------------------
    Case("arm-with-closing-markup", LEADERBOARD, (r"\[/\]x", r"fusion\.levels=4"), _arms("[/]x", "fusion.levels=4"),
         code=0),
    Case("arm-with-link-markup", LEADERBOARD, (r"\[link=https://example\.invalid\]",),
         _arms("[link=https://example.invalid]ok[/link]", "b"), code=0),
    Case("arm-with-ansi-clear-screen", LEADERBOARD, (r"\\x1b\[2J",), _arms("a\x1b[2J\x1b[H", "b"), code=0),
    Case("param-with-markup", LEADERBOARD, (r"\[link=https://example\.invalid\]manifest\.csv",), _hostile_param,
         code=0),
    Case("experiment-name-with-markup", LEADERBOARD, (r"exp \[/\] \[bold red\]\\x1b\[2J",),
         _hostile_experiment_name, code=0),
    Case("arm-with-html-in-markdown", (*LEADERBOARD, "--format", "markdown"), ("&lt;script&gt;",),
         _arms("<script>alert(1)</script>|x", "b"), code=0),
    Case("arm-with-formula-in-csv", (*LEADERBOARD, "--format", "csv"), (r"'=HYPERLINK",),
         _arms('=HYPERLINK("https://example.invalid")', "b"), code=0),
    # -- --where ------------------------------------------------------------------------------------
    Case("where-3000-nested-parentheses", (*LEADERBOARD, "--where", NESTED), ("--where", "nested", "flatter"),
         _experiment),
    Case("where-3000-nots", (*LEADERBOARD, "--where", NOTS), ("--where", "nested"), _experiment),
    Case("where-1000-ors", (*LEADERBOARD, "--where", MANY_ORS + ' or arm == "fusion.levels=4"'),
         ("t00002",), _experiment, code=0),
    Case("where-bad-escape", (*LEADERBOARD, "--where", r'arm == "\q"'), ("--where", "escape", r"\\\\"),
         _experiment),
    Case("where-short-unicode-escape", (*LEADERBOARD, "--where", r'arm == "\u12"'), ("--where", "escape"),
         _experiment),
    Case("where-unterminated-string", (*LEADERBOARD, "--where", 'arm == "fusion'), ("--where", "unterminated"),
         _experiment),
    Case("where-unknown-column", (*LEADERBOARD, "--where", "val/macro_f2 > 0.5"),
         ("--where", "unknown column", "val/macro_f1"), _experiment),
    Case("where-text-for-a-number", (*LEADERBOARD, "--where", 'val/macro_f1 > "high"'),
         ("--where", "val/macro_f1", "number"), _experiment),
    Case("where-text-for-a-timestamp", (*LEADERBOARD, "--where", 'written_at > "yesterday"'),
         ("--where", "written_at"), _experiment),
    Case("where-non-ascii-value", (*LEADERBOARD, "--where", 'arm == "fusion.levels=été"', "--format", "csv"),
         ("t00000", "t00001"), _non_ascii_arm, code=0),
    # -- --by, --group-by, --top, --format -----------------------------------------------------------
    Case("by-unknown-column", (*LEADERBOARD, "--by", "val/nope"), ("--by", "val/nope", "val/macro_f1"), _experiment),
    Case("by-text-column", (*LEADERBOARD, "--by", "arm"), ("--by", "arm", "not a number"), _experiment),
    Case("by-empty", (*LEADERBOARD, "--by", ""), ("--by",), _experiment),
    Case("group-by-unknown", (*LEADERBOARD, "--group-by", "nope"), ("--group-by", "nope", "arm"), _experiment),
    Case("top-zero", (*LEADERBOARD, "--top", "0"), ("--top", ">= 1"), _experiment),
    Case("top-negative", (*LEADERBOARD, "--top", "-5"), ("--top", "-5"), _experiment),
    Case("top-not-a-number", (*LEADERBOARD, "--top", "ten"), ("--top", "valid integer"), _experiment),
    Case("top-huge", (*LEADERBOARD, "--top", "1" + "0" * 30, "--format", "csv"), ("t00003",), _experiment, code=0),
    Case("format-unknown", (*LEADERBOARD, "--format", "xml"), ("--format", "xml", "csv"), _experiment),
    # -- the recorded spec ---------------------------------------------------------------------------
    Case("alias-bomb-spec", LEADERBOARD, ("spec.yaml", "alias", "t00000"), _alias_bomb, code=0),
    Case("binary-spec", LEADERBOARD, ("spec.yaml", "does not load", "t00000"), _binary_spec, code=0),
    Case("arms-json-is-a-folder", LEADERBOARD, ("arms.json", "t00000"), _arms_json_folder, code=0),
    Case("arms-json-nested-100000-deep", LEADERBOARD, ("arms.json", "t00000"), _arms_json_deep, code=0),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check(case, tmp_path, monkeypatch)
    if MOVED in case.may_write:  # a corrupt part is moved aside whole, never lost
        assert not (tmp_path / PART).exists()
        assert (tmp_path / MOVED).read_bytes() == (tmp_path / ORIGINAL).read_bytes()
