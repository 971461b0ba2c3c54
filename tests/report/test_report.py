"""The ablation report from complete, partial and failing experiments: every file, no external URL,
escaped arm ids and messages, and (integration) the HTML rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mdf_search.cli.results import report_command
from mdf_search.report.ablation import write_report
from mdf_search.report.synthetic import synthetic_experiment

FIGURES = ("factor_fusion_levels", "per_class", "confusion", "pareto_cost", "learning_curves", "importance")
EVIL = '<script>alert("x")</script>'


def _check_files(out: Path) -> str:
    for name in (
        "report.md",
        "report.html",
        "tables/status_by_arm.csv",
        "tables/design_matrix.csv",
        "deepcave/trials.csv",
    ):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    # self-contained: no external URL anywhere (figures are data: URIs)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html
    return html


def test_complete_experiment_writes_every_section_and_figure(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "full", failures=False)
    assert report_command(str(root), str(tmp_path / "out")) == 0
    html = _check_files(tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    for name in FIGURES:
        assert (tmp_path / "out" / "figures" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "out" / "figures" / f"{name}.svg").is_file()
        assert f"figures/{name}.png" in md
    assert html.count("data:image/png;base64,") == len(list((tmp_path / "out" / "figures").glob("*.png")))
    assert "this section failed" not in md and "Baseline MLLM" in md and "p (sign-flip, Holm)" in md
    assert (
        "p (paired t, Holm)" in md
        and "95 % Student-t CI over n seeds" in md
        and "bootstrap of the mean" not in md
    )
    assert "Δ test accuracy" in md and "supported at α=0.05 by" in md
    assert "mdf-search sweep" in md and "mdf-search resume" in md
    # the cost section says where the time goes: per arm the median phase times, and each phase's share
    phases = (tmp_path / "out" / "tables" / "phase_times.csv").read_text().splitlines()
    assert phases[0].startswith(
        "arm,trials,wall_s,launch_s,init_s,data_s,train_s,eval_s,ckpt_s,report_s,other_s"
    )
    assert len(phases) == 1 + 4  # one row per arm
    assert "where the time goes: median seconds per trial" in md and "trials' " in md and "launch " in md


def test_partial_and_failing_experiments_degrade_with_notes(tmp_path: Path) -> None:
    cases = {
        "running": dict(running=3),
        "one_arm": dict(only_arms=1, seeds=(0,)),
        "failing": dict(failures=True, seeds=(0, 1)),
    }
    for name, kwargs in cases.items():
        root = synthetic_experiment(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        out = tmp_path / f"out_{name}"
        assert write_report(str(root), str(out)) == out
        md = (out / "report.md").read_text()
        _check_files(out)
        assert "this section failed" not in md, name
    assert "still running" in (tmp_path / "out_running" / "report.md").read_text()
    one = (tmp_path / "out_one_arm" / "report.md").read_text()
    assert "fewer than 2 completed seeds" in one and "adequate" not in one
    failing = (tmp_path / "out_failing" / "report.md").read_text()
    assert "high failure rate" in failing and "CUDA error" in failing


def test_no_baseline_and_test_metrics_shown_twice(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "nobase")
    spec = root / "spec.yaml"
    spec.write_text(
        "\n".join(line for line in spec.read_text().splitlines() if not line.startswith("baseline"))
    )
    design = json.loads((root / "arms.json").read_text())  # the design a spec without baseline records
    for arm in design["arms"]:
        arm["baseline"] = False
    (root / "arms.json").write_text(json.dumps(design))
    write_report(str(root), str(tmp_path / "r1"))
    write_report(str(root), str(tmp_path / "r2"))
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "no baseline arm" in md and "test metrics have been shown 2 times" in md
    assert len((root / "reports.log").read_text().splitlines()) == 2


def test_missing_or_empty_experiment_exits_2(tmp_path: Path) -> None:
    assert report_command(str(tmp_path / "nope"), str(tmp_path / "o")) == 2
    (tmp_path / "empty").mkdir()
    assert report_command(str(tmp_path / "empty"), str(tmp_path / "o")) == 2


def test_malicious_arm_ids_and_messages_are_escaped(tmp_path: Path) -> None:
    root = synthetic_experiment(
        tmp_path / "evil",
        arm_names=[f"fusion.levels=none{EVIL}", "a", "b", "c"],
        messages={1: f"boom {EVIL}"},
    )
    write_report(str(root), str(tmp_path / "out"))
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    md = (tmp_path / "out" / "report.md").read_text()
    assert "<script>" not in md


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.integration
def test_report_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is missing: apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    root = synthetic_experiment(tmp_path / "browser")
    out = tmp_path / "out"
    write_report(str(root), str(out))
    html = (out / "report.html").read_text()
    probe = (
        "<script>(function(){function c(){var im=document.images,ok=0;for(var i=0;i<im.length;i++)"
        "{if(im[i].complete&&im[i].naturalWidth>0)ok++}document.title='figures-loaded:'+ok+'/'+im.length;"
        "if(ok<im.length)setTimeout(c,50)}window.addEventListener('load',c)})();</script>"
    )
    probed = out / "probe.html"
    probed.write_text(html.replace("</body>", probe + "</body>"))
    n_images = html.count("<img ")
    assert n_images >= len(FIGURES)
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile1'}", f"--screenshot={shot}", "--window-size=1280,4000",
         (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 10_000, run.stderr[-2000:]
    assert "Uncaught" not in run.stderr and "ERROR:CONSOLE" not in run.stderr
    dom = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile2'}", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f"<title>figures-loaded:{n_images}/{n_images}</title>" in dom.stdout, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "ERROR:CONSOLE" not in dom.stderr
