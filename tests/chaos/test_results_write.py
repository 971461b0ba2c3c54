"""A results write killed half-way (SIGKILL of the writing process inside pyarrow's write, and inside a
compaction): readers never see a partial Parquet file, and the rows written before are intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mdf_search.results.store import ResultsStore

from .helpers import ROOT, Figures

pytestmark = pytest.mark.integration

# The writer: N trial rows, then a kill inside the (N+1)-th write or inside a compaction.
WRITER = """
import os, signal, sys
import pyarrow.parquet as pq
from mdf_search.results import store
from mdf_search.results.store import ResultsStore

root, rows, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = ResultsStore(root)
row = lambda i: {"experiment": "x", "trial_id": f"t{i}", "attempt": 1, "arm": "a", "status": "completed",
                 "val/loss": float(i), "epochs": 1}
for i in range(rows):
    s.write_trial(row(i))
if where == "write":
    real = pq.write_table
    def half(table, sink, **kw):  # the first half of the file's bytes reach the sink, then the kill
        import io
        buf = io.BytesIO(); real(table, buf, **kw); data = buf.getvalue()
        sink.write(data[: len(data) // 2]); sink.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    pq.write_table = half
    s.write_trial(row(rows))
else:  # compaction: the compact file is written, then the kill after deleting the first folded part
    fs = s.fs
    class Dying:
        def __getattr__(self, name): return getattr(fs, name)
        def delete_file(self, path): fs.delete_file(path); os.kill(os.getpid(), signal.SIGKILL)
    s.fs = Dying()
    s.compact("trials")
"""


@pytest.mark.parametrize("where", ["write", "compaction"])
def test_a_killed_results_write_leaves_no_partial_file(where: str, tmp_path: Path) -> None:
    figures = Figures(f"results write SIGKILLed half-way ({where})")
    root = tmp_path / "exp"
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(root), "5", where],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    figures.runs, figures.faults = 1, 1
    assert done.returncode == -9, done.stderr[-2000:]
    store = ResultsStore(str(root))
    trials = store.trials()
    visible = sorted(p.name for p in (root / "trials").glob("*.parquet"))
    hidden = sorted(p.name for p in (root / "trials").iterdir() if p.name.startswith("."))
    if where == "write":
        assert hidden and all(h.endswith(".tmp") for h in hidden)  # the partial file is hidden, in flight
        assert "t5-a1.parquet" not in visible
    figures.trials_lost = 5 - trials.height
    figures.rows_duplicated = trials.height - trials["trial_id"].n_unique()
    figures.wrong_results = sum(
        r["val/loss"] != float(r["trial_id"][1:]) for r in trials.iter_rows(named=True)
    )
    assert sorted(trials["trial_id"].to_list()) == [f"t{i}" for i in range(5)]
    assert figures.rows_duplicated == 0 and figures.wrong_results == 0
    # the writer carries on where it was killed: the next write and compaction succeed
    again = ResultsStore(str(root))
    again.write_trial({"experiment": "x", "trial_id": "t5", "attempt": 1, "arm": "a", "status": "completed",
                       "val/loss": 5.0, "epochs": 1})  # fmt: skip
    again.compact("trials")
    assert sorted(ResultsStore(str(root)).trials()["trial_id"].to_list()) == [f"t{i}" for i in range(6)]
    figures.record()
