"""Where one smoke trial's seconds go: its phase times (``train/phases.py``) and a cProfile per phase.

Runs one trial of the smoke study's shape (tiny preset, 2 ZeRO-3 workers on CPU, the smoke study's
fixed settings) under Ray Train, with ``MDF_PROFILE_DIR`` set so rank 0's phase clock keeps one
``cProfile`` profiler per phase. Prints:

1. the phases as the trial reported them (seconds and share of the time from launch to last report);
2. per phase, its largest costs by cumulative time (the wrappers that hold nearly all of a phase are
   left out), which is what the benchmark table's "ten largest costs" is read from;
3. the largest self-time costs over all phases;
4. without ``--quick``: the import time of the worker's loop module (``python -X importtime``), the part
   of ``launch_s`` a profiler inside the loop cannot see.

cProfile slows Python-heavy code, so the profiled phase times are above an unprofiled trial's; read the
shares and the ranking, and take the seconds from ``--no-profile`` (or from a sweep's trial rows).

    python benchmarks/profile_trial.py [--epochs 2] [--images 240] [--no-profile] [--set key=value ...]
    python benchmarks/profile_trial.py --quick    # seconds-long (CI): 1 worker, 1 epoch, 24 images
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMOKE = {  # search_spaces/smoke.yaml's fixed settings and the baseline arm's
    "model.preset": "tiny",
    "fusion.projection": "pool",
    "optim.lr_unet_mult": 1.0,
    "optim.class_weights": "balanced",
    "data.synthetic_size": 128,
    "optim.micro_batch": 4,
    "run.device": "cpu",
}
WRAPPER_SHARE = 0.9  # a function holding more of its phase than this is a wrapper, not a cost
PLUMBING = (  # call plumbing that only passes a cost on: left out of the per-phase lists
    "torch/nn/modules/module.py",
    "torch/utils/_contextlib.py",
    "deepspeed/utils/nvtx.py",
    "transformers/utils/generic.py",
    "transformers/utils/output_capturing.py",
    "<frozen importlib",
    "ray/_private/",
    "ray/train/v2/_internal/util.py",
)


def _config(args: argparse.Namespace) -> Any:
    from mdf_search.config import TrialConfig

    flat: dict[str, object] = {
        **SMOKE,
        "data.synthetic_images": args.images,
        "optim.epochs": args.epochs,
        "run.workers": args.workers,
    }
    for pair in args.set or []:
        key, _, value = pair.partition("=")
        flat[key] = value
    return TrialConfig.from_flat(flat)


def run_trial(cfg: Any, storage: str) -> tuple[list[dict[str, Any]], float]:
    """One Train run; its epoch reports and the wall time from building it to ``fit`` returning."""
    from mdf_search.train.builders import prepare_trial_data
    from mdf_search.train.trainer import EpochLog, make_trainer

    data = prepare_trial_data(cfg)
    log = Path(storage) / "profile" / "epochs.jsonl"
    started = time.perf_counter()
    make_trainer(cfg, data, name="profile", storage_path=storage, callbacks=[EpochLog(str(log))]).fit()
    wall = time.perf_counter() - started
    return [json.loads(line) for line in log.read_text().splitlines()], wall


def _label(func: tuple[str, int, str]) -> str:
    path, line, name = func
    for marker in ("site-packages/", "mdf_search/", "benchmarks/"):
        if marker in path:
            path = (
                path.split(marker, 1)[1] if marker == "site-packages/" else marker + path.split(marker, 1)[1]
            )
            break
    return f"{name} ({path}:{line})" if line else name


def phase_costs(profiles: Path, phase: str, total_s: float, top: int) -> list[tuple[str, float]]:
    """The largest cumulative costs inside one phase's profile, without the phase's wrappers."""
    path = profiles / f"rank0-{phase.removesuffix('_s')}.prof"
    if not path.exists():
        return []
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = [(_label(func), float(value[3])) for func, value in stats.items()]
    rows = [
        r for r in rows if r[1] < WRAPPER_SHARE * max(total_s, 1e-9) and not any(p in r[0] for p in PLUMBING)
    ]
    return sorted(rows, key=lambda r: -r[1])[:top]


def self_costs(profiles: Path, top: int) -> list[tuple[str, str, float]]:
    """The largest self (exclusive) times over every phase's profile: (phase, function, seconds)."""
    rows = []
    for path in sorted(profiles.glob("rank0-*.prof")):
        phase = path.stem.removeprefix("rank0-")
        for func, value in pstats.Stats(str(path)).stats.items():  # type: ignore[attr-defined]
            rows.append((phase, _label(func), float(value[2])))
    return sorted(rows, key=lambda r: -r[2])[:top]


def import_times(module: str, top: int) -> list[tuple[str, float]]:
    """Cumulative import seconds of the largest packages (at any depth: ``torch`` counts where
    ``deepspeed`` imports it first) when a fresh process imports ``module`` (``python -X importtime``)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    best: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| *(\S+)", line)
        if match:
            name = match.group(2).split(".")[0]
            best[name] = max(best.get(name, 0.0), int(match.group(1)) / 1e6)
    return sorted(best.items(), key=lambda r: -r[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top", type=int, default=8, help="costs shown per phase")
    parser.add_argument("--no-profile", action="store_true", help="phase times only, no cProfile")
    parser.add_argument("--quick", action="store_true", help="1 worker, 1 epoch, 24 images (CI)")
    parser.add_argument("--set", action="append", help="key=value trial overrides")
    parser.add_argument("--out", help="keep rank 0's per-phase .prof files here (snakeviz, pstats)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.images, args.workers, args.top = 1, 24, 1, 3
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mdf_search.cluster import connect, shutdown
    from mdf_search.train.phases import OTHER, PHASES, PROFILE_ENV

    cfg = _config(args)
    with tempfile.TemporaryDirectory(prefix="mdf-profile-") as tmp:
        profiles = Path(args.out) if args.out else Path(tmp) / "profiles"
        if not args.no_profile:
            os.environ[PROFILE_ENV] = str(profiles)  # the workers inherit it from the embedded Ray
        connect(temp_dir=tempfile.mkdtemp(prefix="mdfray-", dir="/tmp"), num_cpus=max(2, args.workers))
        try:
            epochs, wall = run_trial(cfg, str(Path(tmp) / "storage"))
        finally:
            shutdown()
        last = epochs[-1]
        elapsed = float(last["elapsed_s"])
        print(
            f"\none trial: preset={cfg.model.preset} workers={cfg.run.workers} epochs={cfg.optim.epochs} "
            f"images={cfg.data.synthetic_images} profiled={not args.no_profile}"
        )
        print(f"launch → last report {elapsed:.1f} s (build → fit returned {wall:.1f} s)")
        print(f"{'phase':10s} {'seconds':>8s} {'share':>6s}")
        for key in (*PHASES, OTHER):
            print(f"{key:10s} {last[key]:8.2f} {last[key] / elapsed:6.1%}")
        print(f"{'startup_s':10s} {last['startup_s']:8.2f}  (launch → first optimiser step)")
        if args.no_profile:
            return
        print(
            f"\nlargest costs per phase (cumulative seconds; wrappers holding > {WRAPPER_SHARE:.0%} left out)"
        )
        for key in (*PHASES[1:], OTHER):
            costs = phase_costs(profiles, key, float(last[key]), args.top)
            if costs:
                print(f"-- {key} ({last[key]:.2f} s)")
                for label, seconds in costs:
                    print(f"   {seconds:7.2f}  {label}")
        print("\nlargest self times over all phases")
        for phase, label, seconds in self_costs(profiles, 2 * args.top):
            print(f"   {seconds:7.2f}  [{phase}] {label}")
    if not args.quick:
        print("\nlaunch_s: import time of the worker's loop module in a fresh process (python -X importtime)")
        for name, seconds in import_times("mdf_search.train.loop", args.top):
            print(f"   {seconds:7.2f}  {name}")


if __name__ == "__main__":
    main()
