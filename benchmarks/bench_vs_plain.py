"""The platform against the same study written by hand, side by side in one run (issue #12's benchmark).

One study description (the smoke study's two arms, tiny preset, synthetic data, 2 ZeRO-3 workers on
CPU) is written twice: as a search-space file for ``mdf-search sweep`` (which also evaluates every epoch
on the validation and test splits, checkpoints every rank and writes Parquet) and as the JSON that
``plain_study.py`` reads (Ray Tune + Optuna + Ray Train + DeepSpeed ZeRO-3, training only). Both run as
subprocesses, one after the other, each with its own embedded Ray, over data prepared beforehand (so
neither pays for generating the synthetic images). The platform runs once per ``--concurrent`` value
(``auto``: ``resources.concurrent_trials: auto``), and once more from ``--base-tree`` (a checkout of an
earlier commit, with ``concurrent_trials: 1``) for a before/after in the same run. Printed:

- study wall time of each (process start to exit), the CPU seconds of its process tree (sampled; less
  sensitive to other load than wall time) and the ratios platform / plain (target: wall <= 0.8);
- per-trial medians: trial wall, training steps, evaluation, overhead = wall - training - evaluation
  (target < 10 s for tiny), start-up to the first step;
- per-phase medians of the platform's trial rows (``launch_s``, ``init_s``, ``data_s``, ``train_s``,
  ``eval_s``, ``ckpt_s``, ``report_s``, ``other_s``, ``startup_s``: whichever the rows have).

    python benchmarks/bench_vs_plain.py [--seeds 2] [--epochs 2] [--images 240] [--concurrent auto 1]
                                        [--base-tree /path/to/worktree] [--keep DIR]
    python benchmarks/bench_vs_plain.py --quick      # seconds: write both, check both parse, run nothing

Timed numbers taken while other work shares the machine are noisy: compare the ratios, measured in one
run, and say what else was running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The smoke study's arms and fixed keys (search_spaces/smoke.yaml): the baseline MLLM and U-Net levels 2+3.
ARMS: dict[str, dict[str, Any]] = {
    "baseline": {"fusion.levels": "none", "fusion.injection": "none", "fusion.scale_init": 0.0},
    "fused23": {"fusion.levels": "23", "fusion.injection": "parallel", "fusion.scale_init": 1.0},
}
FIXED: dict[str, Any] = {
    "model.preset": "tiny",
    "fusion.projection": "pool",
    "film.placement": "none",
    "optim.lr": 3.0e-4,
    "optim.lr_unet_mult": 1.0,
    "optim.class_weights": "balanced",
    "data.synthetic_size": 128,
    "optim.micro_batch": 4,
    "run.device": "cpu",
}
PHASES = ("launch_s", "init_s", "data_s", "train_s", "eval_s", "ckpt_s", "report_s", "other_s", "startup_s")


def study(args: argparse.Namespace) -> dict[str, Any]:
    """The one description both runs are written from."""
    return {
        "experiment": "vs_plain",
        "fixed": {**FIXED, "data.synthetic_images": args.images},
        "arms": {name: ARMS[name] for name in args.arms},
        "seeds": list(range(args.seeds)),
        "epochs": args.epochs,
        "workers": args.workers,
        "concurrent_trials": args.concurrent,
    }


def platform_spec(desc: dict[str, Any], path: Path) -> Path:
    """The description as a search-space file: a grid over the arms (scientific) and the seeds."""
    levels = [desc["arms"][a]["fusion.levels"] for a in desc["arms"]]

    def fused() -> dict[str, Any]:
        return {"fusion.levels": {"not": "none"}}

    body = {
        "experiment": desc["experiment"],
        "description": "bench_vs_plain: the platform side",
        "metric": "val/macro_f1",
        "mode": "max",
        "design": "grid",
        "seeds": desc["seeds"],
        "budget": {"trials": len(levels) * len(desc["seeds"]), "epochs": desc["epochs"]},
        "scheduler": {"type": "none"},
        "baseline": {"fusion.levels": "none"} if "none" in levels else None,
        "scientific": {"fusion.levels": levels},
        "nuisance": {
            "fusion.injection": {"choices": ["parallel"], "when": fused(), "otherwise": "none"},
            "fusion.scale_init": {"choices": [1.0], "when": fused(), "otherwise": 0.0},
        },
        "fixed": desc["fixed"],
        "resources": {"workers": desc["workers"], "concurrent_trials": desc["concurrent_trials"]},
    }
    if body["baseline"] is None:
        del body["baseline"]
    path.write_text(f"# mdf-search sweep {path}\n" + yaml.safe_dump(body, sort_keys=False))
    return path


def check_same_trials(desc: dict[str, Any], spec_path: Path) -> int:
    """Both sides run the same trial configs: the spec's resolved trials equal the plain study's."""
    from mdf_search.config import TrialConfig
    from mdf_search.search.designs import arms, num_trials, trial_params
    from mdf_search.search.space import load_spec
    from mdf_search.search.validate import validate_spec

    spec = load_spec(spec_path)
    problems = validate_spec(spec)
    if problems:
        raise SystemExit(f"{spec_path}: {problems}")
    platform = {
        (TrialConfig.from_flat(trial_params(spec, arm, seed)).config_hash(), seed)
        for arm in arms(spec)
        for seed in spec.seeds
    }
    plain = {
        (
            TrialConfig.from_flat(
                {
                    **desc["fixed"],
                    **arm,
                    "seed": seed,
                    "run.workers": desc["workers"],
                    "optim.epochs": desc["epochs"],
                }
            ).config_hash(),
            seed,
        )
        for arm in desc["arms"].values()
        for seed in desc["seeds"]
    }
    if platform != plain or num_trials(spec) != len(plain):
        raise SystemExit(f"{spec_path} and the plain study describe different trials")
    return len(plain)


def prepare(desc: dict[str, Any]) -> None:
    """Generate the synthetic data, cache and tokenizer both sides find (neither pays for them in its time)."""
    from mdf_search.config import TrialConfig
    from mdf_search.train.builders import prepare_trial_data

    prepare_trial_data(TrialConfig.from_flat({**desc["fixed"], "run.workers": desc["workers"]}))


def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Add the CPU seconds so far of ``root`` and its descendants (Ray's processes included) to ``seen``."""
    tick = os.sysconf("SC_CLK_TCK")
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                stack.extend(int(c) for c in handle.read().split())
        except OSError:  # gone meanwhile
            continue
        seen[pid] = (int(fields[11]) + int(fields[12])) / tick


def _run(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> tuple[float, float]:
    """Run ``cmd``; its wall time and the CPU seconds of its process tree, sampled every 0.2 s (Ray's
    processes are not the command's waited-for children: their CPU shows up only while they live)."""
    seen: dict[int, float] = {}
    started = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            _tree_cpu(proc.pid, seen)
            time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}; its output: {log}")
    return wall, sum(seen.values())


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def platform_rows(root: Path) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """Per trial: wall, training, evaluation and overhead; and the medians of the phase columns."""
    import polars as pl

    from mdf_search.results.store import ResultsStore

    store = ResultsStore(str(root))
    trials, epochs = store.trials(), store.epochs()
    rows = []
    for row in trials.iter_rows(named=True):
        if row.get("train_s") is not None and row.get("eval_s") is not None:  # the phase columns
            train, evaluate = float(row["train_s"]), float(row["eval_s"])
        else:  # rows without them: the epochs' step and evaluation times
            own = epochs.filter(
                (pl.col("trial_id") == row["trial_id"]) & (pl.col("attempt") == row["attempt"])
            )
            train = float(own["epoch_time_s"].sum())
            evaluate = float(own["eval_time_s"].sum()) if "eval_time_s" in own.columns else 0.0
        rows.append({"wall_s": row["wall_s"], "train_s": train, "eval_s": evaluate, "status": row["status"]})
    phases = {p: _median(trials[p].to_list()) if p in trials.columns else None for p in PHASES}
    return rows, phases


def report(
    desc: dict[str, Any], runs: dict[str, tuple[float, float]], plain: dict[str, Any], roots: dict[str, Path]
) -> None:
    """The table: plain beside every platform variant, and each variant's ratio to plain."""
    med = _median
    n = len(plain["trials"])
    cols: dict[str, dict[str, float | None]] = {}
    plain_over = [t["wall_s"] - t["train_s"] for t in plain["trials"]]
    cols["plain"] = {
        "trial wall (median s)": med([t["wall_s"] for t in plain["trials"]]),
        "training steps (median s)": med([t["train_s"] for t in plain["trials"]]),
        "evaluation (median s)": 0.0,
        "overhead: wall-train-eval (median)": med(plain_over),
        "start-up to first step (median s)": med([t["startup_s"] for t in plain["trials"]]),
    }
    phases_of: dict[str, dict[str, float | None]] = {}
    for name, root in roots.items():
        rows, phases = platform_rows(root)
        bad = [r for r in rows if r["status"] != "completed"]
        if bad or len(rows) != n:
            raise SystemExit(f"{name}: {len(rows)} trial rows, {n} expected; not completed: {bad}")
        cols[name] = {
            "trial wall (median s)": med([r["wall_s"] for r in rows]),
            "training steps (median s)": med([r["train_s"] for r in rows]),
            "evaluation (median s)": med([r["eval_s"] for r in rows]),
            "overhead: wall-train-eval (median)": med(
                [r["wall_s"] - r["train_s"] - r["eval_s"] for r in rows]
            ),
            "start-up to first step (median s)": phases.get("startup_s"),
        }
        phases_of[name] = phases
    print(
        f"\n{n} trials ({len(desc['arms'])} arms x {len(desc['seeds'])} seeds), {desc['epochs']} epochs, "
        f"{desc['fixed']['data.synthetic_images']} images, {desc['workers']} workers; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    )
    names = list(cols)
    print(f"{'':36s}" + "".join(f"{k:>16s}" for k in names))
    fmt = lambda v: f"{v:16.1f}" if v is not None else f"{'-':>16s}"  # noqa: E731
    print(f"{'study wall time (s)':36s}" + "".join(fmt(runs[k][0]) for k in names))
    print(f"{'study CPU time (s, process tree)':36s}" + "".join(fmt(runs[k][1]) for k in names))
    print(f"{'study wall per trial (s)':36s}" + "".join(fmt(runs[k][0] / n) for k in names))
    for key in cols["plain"]:
        print(f"{key:36s}" + "".join(fmt(cols[k][key]) for k in names))
    for name, phases in phases_of.items():
        present = {p: v for p, v in phases.items() if v is not None}
        if present:
            print(f"{name} phases (median s): " + ", ".join(f"{p} {v:.2f}" for p, v in present.items()))
    for name in roots:
        print(
            f"ratio {name} / plain: study wall {runs[name][0] / runs['plain'][0]:.3f} (target <= 0.8), "
            f"CPU {runs[name][1] / runs['plain'][1]:.3f}; per-trial overhead "
            f"{cols[name]['overhead: wall-train-eval (median)']:.1f} s (target < 10 s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--concurrent",
        nargs="+",
        default=["auto"],
        help="the platform's resources.concurrent_trials; several values run the platform once each",
    )
    parser.add_argument(
        "--base-tree",
        type=Path,
        default=None,
        help="also run the platform from this checkout (e.g. a worktree of the commit before a change), "
        "concurrent_trials 1",
    )
    parser.add_argument("--report", action="store_true", help="the platform also writes its report")
    parser.add_argument("--plain-last", action="store_true", help="run the plain study after the platform")
    parser.add_argument("--keep", type=Path, default=None, help="keep every run's files here")
    parser.add_argument("--quick", action="store_true", help="write both and check they parse; run nothing")
    args = parser.parse_args()
    variants = {f"platform-{c}": (c if c == "auto" else int(c), ROOT) for c in args.concurrent}
    if args.base_tree is not None:
        variants["before"] = (1, args.base_tree.resolve())
    args.concurrent = next(iter(variants.values()))[0]
    desc = study(args)
    work = Path(tempfile.mkdtemp(prefix="bench-vs-plain-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    (work / "plain.json").write_text(json.dumps(desc, indent=1))
    plain_cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "plain_study.py"),
        str(work / "plain.json"),
        "--storage",
        str(work / "plain"),
        "--out",
        str(work / "plain-out.json"),
    ]
    cmds: dict[str, tuple[list[str], Path]] = {"plain": (plain_cmd, ROOT)}
    roots: dict[str, Path] = {}
    for name, (concurrent, tree) in variants.items():
        experiment = f"vs_plain_{name.replace('-', '_')}"
        spec_path = platform_spec(
            {**desc, "experiment": experiment, "concurrent_trials": concurrent}, work / f"{name}.yaml"
        )
        trials = check_same_trials(desc, spec_path)
        cmd = [
            sys.executable,
            "-m",
            "mdf_search.cli",
            "sweep",
            str(spec_path),
            "--storage",
            str(work / "runs"),
        ]
        cmd += ["--report-dir", str(work / f"report-{name}")] if args.report else ["--no-report"]
        cmds[name] = (cmd, tree)
        roots[name] = work / "runs" / experiment
    if args.quick:
        subprocess.run([*plain_cmd[:2], "--help"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"quick: {trials} trials written both ways under {work}; both parse")
        for name, (cmd, tree) in cmds.items():
            print(f"{name}: (in {tree})", " ".join(cmd))
        if args.keep is None:
            shutil.rmtree(work)
        return
    prepare(desc)
    runs: dict[str, tuple[float, float]] = {}
    order = [*variants, "plain"] if args.plain_last else ["plain", *variants]
    for name in order:
        cmd, tree = cmds[name]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(tree)}
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=f"bvp-{name}-", dir="/tmp")
        runs[name] = _run(cmd, env, work / f"{name}.log", cwd=tree)
        print(f"{name}: {runs[name][0]:.1f} s wall, {runs[name][1]:.1f} s CPU", flush=True)
    plain = json.loads((work / "plain-out.json").read_text())
    report(desc, runs, plain, roots)
    print(f"files: {work}")


if __name__ == "__main__":
    main()
