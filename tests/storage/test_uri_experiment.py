"""An experiment on object storage (moto S3) read and written as a local one: its recorded spec and design
(arms.json) and provenance, `leaderboard`, `report` (built locally, uploaded to the URI, with the paired
comparisons), `resume`'s checks, and the sweep's own checks of a URI storage; no Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdf_search.data import storage
from mdf_search.report.experiment import load_experiment, reproduce_commands
from mdf_search.report.outdir import MARKER
from mdf_search.report.synthetic import synthetic_experiment
from mdf_search.search.record import record_spec
from mdf_search.search.space import load_spec
from tests.cli.helpers import invoke, plain

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def remote(bucket: str, tmp_path: Path) -> str:
    """A finished synthetic study (4 arms x 3 seeds) uploaded to ``<bucket>/runs/study``."""
    local = synthetic_experiment(tmp_path / "local" / "study", experiment="study", failures=False)
    root = f"{bucket}/runs/study"
    storage.upload_tree(local, root, "")
    return root


def test_the_experiment_reads_its_spec_design_and_provenance_from_the_uri(remote: str) -> None:
    exp = load_experiment(remote)
    assert exp.root == remote  # not folded to s3:/...
    assert exp.spec is not None and not exp.spec.reconstructed and exp.baseline_arm() == "fusion.levels=none"
    assert exp.factors == ["fusion.levels", "film.placement"] and exp.provenance()
    assert not any("spec.yaml" in n for n in exp.notes), exp.notes


def test_leaderboard_of_a_uri(remote: str) -> None:
    result = invoke("leaderboard", remote, "--format", "csv", "--group-by", "arm")
    assert result.exit_code == 0, result.output
    assert "fusion.levels=1234|film.placement=enc" in result.stdout
    assert "no spec.yaml" not in result.output


def test_report_of_a_uri_into_the_uri_has_the_paired_comparisons(remote: str, tmp_path: Path) -> None:
    out = f"{remote}/report"
    result = invoke("report", remote, "--out", out)
    assert result.exit_code == 0, result.output
    assert plain(result.stdout) == f"report: {out}/report.md and {out}/report.html"
    uploaded = storage.files(out)
    assert {"report.md", "report.html", MARKER} <= set(uploaded)
    assert any(f.startswith("figures/") and f.endswith(".pdf") for f in uploaded)
    md = storage.read_text(out, "report.md")
    assert "no spec.yaml" not in md, md[md.index("no spec.yaml") - 300 :][:600]
    assert "Δ val/macro\\_f1" in md and "p (paired t)" in md and "Δ 95 % Student-t CI" in md
    assert "Ablation path" in md and "Δ vs baseline" in md
    assert f"mdf-search resume {remote}" in md or "mdf-search resume ." in md
    # an earlier report there is replaced; a user's note beside it is kept
    storage.write_text(out, "NOTES.md", "mine")
    assert invoke("report", remote, "--out", out).exit_code == 0
    assert storage.read_text(out, "NOTES.md") == "mine"
    # a folder of other files is refused, listing only (nothing downloaded, nothing written)
    beside = remote.rsplit("/", 1)[0] + "/elsewhere"
    storage.write_text(beside, "data.csv", "a,b")
    refused = plain(invoke("report", remote, "--out", beside).stderr)
    assert "already holds files no report wrote (data.csv)" in refused
    assert storage.files(beside) == ["data.csv"]
    inside = invoke("report", remote, "--out", f"{remote}/trials")
    assert inside.exit_code == 2 and "is inside the experiment folder" in plain(inside.stderr)


def test_the_sweep_records_spec_design_and_provenance_on_object_storage(bucket: str, tmp_path: Path) -> None:
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    root = f"{bucket}/runs/smoke"
    record_spec(spec, root, {"git_sha": "abc"})
    assert storage.read_text(root, "spec.yaml") == (ROOT / "search_spaces" / "smoke.yaml").read_text()
    arms = json.loads(storage.read_text(root, "arms.json"))
    assert arms["experiment"] == "smoke" and len(arms["arms"]) == 3
    prov = json.loads(storage.read_text(root, "provenance.json"))
    assert prov["git_sha"] == "abc" and prov["spec"].endswith("smoke.yaml")
    # never overwritten: a resumed sweep keeps the first records
    storage.write_text(root, "spec.yaml", "# kept\n")
    record_spec(spec, root, {"git_sha": "def"})
    assert storage.read_text(root, "spec.yaml") == "# kept\n"
    assert json.loads(storage.read_text(root, "provenance.json"))["git_sha"] == "def"


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import typer

    import mdf_search.cli.study

    calls: list[str] = []

    def connect(*args: object, **kwargs: object) -> None:
        calls.append("connect")
        raise typer.Exit(99)

    monkeypatch.setattr(mdf_search.cli.study, "connect", connect)
    return calls


def test_resume_of_a_uri_checks_it_before_ray_starts(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_ray(monkeypatch)
    root = f"{bucket}/runs/smoke"
    missing = invoke("resume", root)
    assert missing.exit_code == 2 and f"{root}: no spec.yaml there" in plain(missing.stderr)
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    record_spec(spec, root, {})
    not_started = invoke("resume", root)
    assert not_started.exit_code == 2 and "nothing to resume" in plain(not_started.stderr)
    assert f"mdf-search sweep {root}/spec.yaml" in plain(not_started.stderr)
    storage.write_text(root, "experiment_state-2026-01-01_00-00-00.json", "{}")  # what Tune records
    monkeypatch.setattr("mdf_search.cli.study._started", lambda r: True)  # Tune's check of its state
    assert invoke("resume", root).exit_code == 99 and calls == ["connect"]
    # a recorded spec that no longer validates names the URI, not a temporary copy
    text = (
        (ROOT / "search_spaces" / "smoke.yaml")
        .read_text()
        .replace("budget: {trials: 9", "budget: {trials: 2")
    )
    storage.write_text(root, "spec.yaml", text)
    broken = invoke("resume", root)
    assert broken.exit_code == 2 and plain(broken.stderr).startswith(f"error: {root}/spec.yaml: 1 problem(s)")
    # the folder must be the experiment's own name
    storage.write_text(
        f"{bucket}/runs/other", "spec.yaml", (ROOT / "search_spaces" / "smoke.yaml").read_text()
    )
    renamed = invoke("resume", f"{bucket}/runs/other")
    assert renamed.exit_code == 2 and "names experiment 'smoke', but the folder is 'other'" in plain(
        renamed.stderr
    )


def test_sweep_to_a_uri_checks_the_recorded_spec_and_the_report_folder(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_ray(monkeypatch)
    storage_root = f"{bucket}/runs"
    smoke = str(ROOT / "search_spaces" / "smoke.yaml")
    assert invoke("sweep", smoke, "--storage", storage_root).exit_code == 99 and calls == ["connect"]
    # an experiment there started from another spec is refused, naming the difference
    storage.write_text(
        storage_root, "smoke/spec.yaml", Path(smoke).read_text().replace("seeds: [0, 1, 2]", "seeds: [0]")
    )
    changed = invoke("sweep", smoke, "--storage", storage_root)
    assert (
        changed.exit_code == 2
        and "differs from" in plain(changed.stderr)
        and "seeds" in plain(changed.stderr)
    )
    storage.delete(storage_root, "smoke/spec.yaml")
    # a --report-dir the report would refuse is refused now, not after the sweep
    storage.write_text(storage_root, "smoke/notes/x.txt", "x")
    refused = invoke("sweep", smoke, "--storage", storage_root, "--report-dir", f"{storage_root}/smoke/notes")
    assert refused.exit_code == 2 and "--report-dir: --out" in plain(refused.stderr)
    assert "is inside the experiment folder" in plain(refused.stderr)


def test_reproduce_commands_name_the_uri() -> None:
    where, commands = reproduce_commands("s3://b/runs/study/", "report")
    assert "anywhere" in where
    assert commands == [
        ["mdf-search", "sweep", "s3://b/runs/study/spec.yaml", "--storage", "s3://b/runs/rerun", "--fresh"],
        ["mdf-search", "resume", "s3://b/runs/study"],
        ["mdf-search", "report", "s3://b/runs/study", "--out", "s3://b/runs/study/report"],
    ]
    assert reproduce_commands("runs/study", "report")[1][1] == ["mdf-search", "resume", "."]


def test_sweep_takes_a_recorded_spec_by_its_uri(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reproduce command of an experiment on object storage: `sweep s3://.../spec.yaml`."""
    calls = _no_ray(monkeypatch)
    source = f"{bucket}/runs/smoke"
    storage.write_text(source, "spec.yaml", (ROOT / "search_spaces" / "smoke.yaml").read_text())
    result = invoke("sweep", f"{source}/spec.yaml", "--storage", f"{bucket}/rerun", "--fresh")
    assert result.exit_code == 99 and calls == ["connect"], result.output
    missing = invoke("sweep", f"{bucket}/nowhere/spec.yaml")
    assert missing.exit_code == 2 and f"{bucket}/nowhere/spec.yaml: no such file" in plain(missing.stderr)
