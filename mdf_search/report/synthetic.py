"""Synthetic experiments written with the real results writer: for tests, benchmarks and the example
report when no sweep has run. Nothing here trains a model; the numbers are drawn so that fusion helps a
little, seeds differ, and some trials fail, stop early or diverge, like a real study.

The design is fixed here: :data:`SPEC` and the arms the design code builds from it (:data:`ARMS`),
written out so that the report package runs no search code. An experiment gets spec.yaml and the
arms.json a sweep would record (``report.design``); ``tests/report/test_design.py`` checks both against
the design code (``search.record.design_record``, ``search.designs.trial_params``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mdf_search.atomic import write_text
from mdf_search.data.schema import TYPE_CLASSES
from mdf_search.metrics import classification_metrics
from mdf_search.report.design import ARMS_FILE, FORMAT
from mdf_search.results.schema import FINISHED_OK, Status, to_table
from mdf_search.results.store import ResultsStore


def write_rows(root: str, table: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write many rows at once as one compact Parquet file (what the store's compaction produces), so
    benchmarks can build 100k-trial tables in seconds. Readers see it exactly like folded parts."""
    store = ResultsStore(root)
    directory = f"{store.path}/{table}"
    store.fs.create_dir(directory, recursive=True)
    name = f"compact-{time.time_ns()}"
    tmp = f"{directory}/.{name}.parquet.tmp"
    with store.fs.open_output_stream(tmp) as sink:
        pq.write_table(to_table(rows, table), sink)
    store.fs.move(tmp, f"{directory}/{name}.parquet")
    return f"{directory}/{name}.parquet"


# The design the synthetic experiments stand in for (the smoke study's earlier grid): fixed here, so
# report tests do not move when the shipped smoke.yaml is recalibrated.
SPEC = """
experiment: smoke
description: baseline MLLM vs multi-depth fusion (+FiLM) on the tiny preset, synthetic data, CPU
metric: val/macro_f1
mode: max
design: grid
seeds: [0, 1]
budget: {trials: 8, epochs: 2, max_wall_time: 900, max_gpu_hours: 0}
scheduler: {type: none}
baseline: {fusion.levels: none}
scientific:
  fusion.levels: [none, "4", "1234"]
  film.placement: {choices: [none, enc], when: {fusion.levels: "1234"}, otherwise: none}
nuisance:
  fusion.injection: {choices: [parallel], when: {fusion.levels: {not: none}}, otherwise: none}
  optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true, default: 1.0e-3}
fixed:
  model.preset: tiny
  data.synthetic_images: 120
  data.synthetic_size: 128
  optim.micro_batch: 4
  run.device: cpu
resources: {workers: 2, concurrent_trials: 1, gpus_per_worker: 0}
study: {storage: null}
"""
# SPEC's resolved design, as search.record.design_record writes it: the parameter domains, and the arms
# in design order (the baseline first, then the grid in file order; film.placement is active only with
# fusion.levels=1234 and is `none` otherwise).
SCIENTIFIC: dict[str, dict[str, Any]] = {
    "fusion.levels": {"choices": ["none", "4", "1234"], "default": "none"},
    "film.placement": {"choices": ["none", "enc"], "default": "none"},
}
NUISANCE: dict[str, dict[str, Any]] = {
    "fusion.injection": {"choices": ["parallel"], "default": "parallel"},
    "optim.lr": {
        "low": 1.0e-4,
        "high": 3.0e-3,
        "log": True,
        "step": None,
        "integer": False,
        "default": 1.0e-3,
    },
}
ARMS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fusion.levels=none", {"fusion.levels": "none", "film.placement": "none"}),
    ("fusion.levels=4", {"fusion.levels": "4", "film.placement": "none"}),
    ("fusion.levels=1234|film.placement=none", {"fusion.levels": "1234", "film.placement": "none"}),
    ("fusion.levels=1234|film.placement=enc", {"fusion.levels": "1234", "film.placement": "enc"}),
)
BASELINE = "fusion.levels=none"


def write_trials(root: str, rows: Sequence[Mapping[str, Any]]) -> str:
    return write_rows(root, "trials", rows)


def spec_data(
    experiment: str, seeds: Sequence[int] | None = None, epochs: int | None = None
) -> dict[str, Any]:
    """:data:`SPEC` as data, renamed; ``seeds`` replace its seeds, ``epochs`` its whole budget."""
    data: dict[str, Any] = yaml.safe_load(SPEC)
    data["experiment"] = experiment
    if seeds is not None:
        data["seeds"] = list(seeds)
    if epochs is not None:
        data["budget"] = {"epochs": epochs}
    return data


def design_record(data: Mapping[str, Any]) -> dict[str, Any]:
    """The arms.json a sweep of ``data`` (:func:`spec_data`) records."""
    budget = data["budget"]
    return {
        "format": FORMAT,
        "experiment": data["experiment"],
        "description": data["description"],
        "design": data["design"],
        "metric": data["metric"],
        "mode": data["mode"],
        "seeds": list(data["seeds"]),
        "trials": len(ARMS) * len(data["seeds"]),
        "budget": {
            "epochs": budget["epochs"],
            "trials": budget.get("trials"),
            "trials_per_arm": budget.get("trials_per_arm"),
            "max_wall_time_s": budget.get("max_wall_time"),
            "max_gpu_hours": budget.get("max_gpu_hours"),
            "price_per_gpu_hour": budget.get("price_per_gpu_hour"),
        },
        "storage": data["study"]["storage"],
        "scientific": SCIENTIFIC,
        "nuisance": NUISANCE,
        "arms": [
            {"id": arm, "order": order, "baseline": arm == BASELINE, "params": params}
            for order, (arm, params) in enumerate(ARMS)
        ],
    }


def trial_params(data: Mapping[str, Any], arm_params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """One trial's flat params (``search.designs.trial_params`` for SPEC): fixed, the arm's values, the
    nuisance held at their defaults (fusion.injection is active only with fused levels), the seed, and
    the budget's epochs and the workers."""
    injection = "none" if arm_params["fusion.levels"] == "none" else NUISANCE["fusion.injection"]["default"]
    return {
        **data["fixed"],
        **arm_params,
        "fusion.injection": injection,
        "optim.lr": NUISANCE["optim.lr"]["default"],
        "seed": seed,
        "optim.epochs": data["budget"]["epochs"],
        "run.workers": data["resources"]["workers"],
    }


def write_spec(
    root: str | Path, experiment: str, seeds: Sequence[int] | None = None, epochs: int | None = None
) -> Path:
    """Write :data:`SPEC` (a 4-arm fusion x FiLM grid; see :func:`spec_data` for the edits) to
    ``root/spec.yaml`` and its design to ``root/arms.json``, as a sweep records them."""
    data = spec_data(experiment, seeds, epochs)
    out = Path(root) / "spec.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# mdf-search sweep {out}\n" + yaml.safe_dump(data, sort_keys=False))
    write_text(out.parent / ARMS_FILE, json.dumps(design_record(data), indent=1) + "\n")
    return out


def _effect(arm_params: Mapping[str, Any]) -> float:
    levels = str(arm_params.get("fusion.levels", "none"))
    film = str(arm_params.get("film.placement", "none"))
    gain = 0.0 if levels == "none" else 0.02 * len(levels) + 0.02
    return gain + (0.03 if film not in ("none", "") else 0.0)


def _draw(rng: np.random.Generator, quality: float, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Labels (the same fixed split for every trial) and predictions drawn at the given accuracy level."""
    y_true = np.repeat(np.arange(len(TYPE_CLASSES)), n // len(TYPE_CLASSES))
    hard = np.array([0.0, 0.1, 0.25])[y_true]  # inherited is the hard class
    correct = rng.random(y_true.size) < np.clip(quality - hard, 0.05, 0.99)
    wrong = (y_true + rng.integers(1, len(TYPE_CLASSES), y_true.size)) % len(TYPE_CLASSES)
    return y_true, np.where(correct, y_true, wrong)


def _metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    return dict(classification_metrics(y_true, y_pred, TYPE_CLASSES))


def prediction_table(split: str, epoch: int, y_true: np.ndarray, y_pred: np.ndarray) -> pa.Table:
    """One split of one trial's predictions as the trial writes them (``results.schema``'s
    ``PREDICTION_SAMPLE`` columns, then ``prob/<class>``): two images per case (``<split>-c<i // 2>``)."""
    n = int(y_true.size)
    probs = {
        f"prob/{c}": pa.array(np.where(y_pred == k, 0.8, 0.1), pa.float32())
        for k, c in enumerate(TYPE_CLASSES)
    }
    return pa.table(
        {
            "split": [split] * n,
            "epoch": pa.array([epoch] * n, pa.int64()),
            "task": ["type"] * n,
            "sample_id": [f"{split}{i:04d}.png" for i in range(n)],
            "manifest_row": pa.array(range(n), pa.int64()),
            "case_id": [f"{split}-c{i // 2:04d}" for i in range(n)],
            "source": ["synthetic"] * n,
            "label": [TYPE_CLASSES[t] for t in y_true.tolist()],
            "pred": [TYPE_CLASSES[p] for p in y_pred.tolist()],
            **probs,
        }
    )


def synthetic_experiment(
    root: str | Path,
    *,
    experiment: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 3,
    failures: bool = True,
    only_arms: int | None = None,
    running: int = 0,
    seed: int = 0,
    arm_names: Iterable[str] | None = None,
    messages: Mapping[int, str] | None = None,
    predictions: bool = True,
) -> Path:
    """Write ``root/spec.yaml``, ``arms.json``, ``provenance.json`` and trials/epochs via ``ResultsStore``.

    ``failures`` makes one trial error, one diverge, one stop early; ``running`` leaves that many trials
    mid-flight; ``only_arms`` keeps the first N arms; ``arm_names`` overrides arm ids (escaping tests);
    ``messages`` sets the message of trial number i; ``predictions`` writes the per-sample predictions
    table (val and test rows of every trial that finished with metrics) as the trial loop does.
    """
    root = Path(root)
    name = experiment or root.name
    write_spec(root, name, seeds, epochs)
    data = spec_data(name, seeds, epochs)
    (root / "provenance.json").write_text(
        json.dumps({"git_sha": "0" * 40, "versions": json.dumps({"torch": "2.x", "ray": "2.60"}), "cwd": "."})
    )
    store = ResultsStore(str(root))
    rng = np.random.default_rng(seed)
    phase_rng = np.random.default_rng([seed, 0x7135])  # its own stream: the metrics' draws stay as they were
    arm_list = ARMS[:only_arms] if only_arms else ARMS
    ids = list(arm_names) if arm_names is not None else [arm for arm, _ in arm_list]
    number = 0
    for (_, arm_params), arm_id in zip(arm_list, ids, strict=False):
        for s in seeds:
            params = trial_params(data, arm_params, s)
            params["optim.lr"] = float(np.exp(rng.uniform(np.log(1e-4), np.log(3e-3))))
            trial_id = f"t{number:05d}"
            status = Status.COMPLETED
            message = ""
            last = epochs
            if failures and number == 1:
                status, message, last = Status.ERROR, "RuntimeError: CUDA error: an illegal memory access", 1
            elif failures and number == 4:
                status, message, last = Status.DIVERGED, "loss is nan at step 12", 1
            elif failures and number == 6:
                status, last = Status.STOPPED_EARLY, 1
            elif number >= len(arm_list) * len(seeds) - running:
                status, last = Status.RUNNING, max(1, epochs // 2)
            if messages and number in messages:
                message = messages[number]
            quality = 0.55 + _effect(arm_params) + rng.normal(0, 0.03)
            base = {"experiment": name, "trial_id": trial_id, "attempt": 1, "arm": arm_id}
            metrics: dict[str, Any] = {}
            drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for epoch in range(1, last + 1):
                q = quality - 0.15 * (epochs - epoch) / max(epochs, 1)
                drawn = {"val": _draw(rng, q), "test": _draw(rng, q - 0.02)}
                val, test = _metrics(*drawn["val"]), _metrics(*drawn["test"])
                metrics = {
                    **{f"val/{k}": v for k, v in val.items()},
                    **{f"test/{k}": v for k, v in test.items()},
                    "train/loss": float(1.2 - 0.3 * epoch + rng.normal(0, 0.02)),
                    "train/accuracy": float(min(0.99, q + 0.08)),
                    "trainable_params": 1.0e6 + 2.5e5 * len(str(arm_params.get("fusion.levels", ""))),
                    "total_params": 5.0e6,
                    "samples_per_s": float(rng.uniform(20, 40)),
                }
                if status == Status.DIVERGED:
                    metrics["train/loss"] = float("nan")
                store.write_epoch({**base, "epoch": epoch, "status": Status.RUNNING, **metrics})
            wall = float(rng.uniform(20, 40)) * last
            phases = _phases(phase_rng, wall, last, arm_params)
            store.write_trial(
                {
                    **base,
                    "status": status,
                    "message": message,
                    "epochs": last,
                    "wall_s": wall,
                    **phases,
                    "gpu_hours": 0.0,
                    "cpu_hours": wall * 2 / 3600,
                    "world_size": 2,
                    "split_hash": "synthetic0split",
                    "config_hash": f"c{number:05d}",
                    "git_sha": "0" * 40,
                    "versions": json.dumps({"torch": "2.x", "ray": "2.60"}),
                    "host": "synthetic-host",
                    **params,
                    **({} if status == Status.ERROR else metrics),
                    "best_val": metrics.get("val/macro_f1"),
                    "best_epoch": last,
                }
            )
            if predictions and status in FINISHED_OK and drawn:
                parts = [prediction_table(split, last, *ys) for split, ys in drawn.items()]
                store.write_predictions(trial_id, 1, pa.concat_tables(parts))
            number += 1
    return root


def _phases(
    rng: np.random.Generator, wall: float, epochs: int, arm_params: Mapping[str, Any]
) -> dict[str, float]:
    """A trial's phases (``train/phases.py``), drawn like a tiny CPU trial's and scaled to add up to
    ``wall``: start-up dominates, and training grows with the fused levels."""
    fused = len(str(arm_params.get("fusion.levels", "none")).replace("none", ""))
    weights = {
        "launch_s": rng.uniform(8, 14),
        "init_s": rng.uniform(3, 5),
        "data_s": rng.uniform(0.3, 0.8) * epochs,
        "train_s": rng.uniform(2, 3) * (1 + 0.15 * fused) * epochs,
        "eval_s": rng.uniform(0.6, 1.2) * epochs,
        "ckpt_s": rng.uniform(0.2, 0.5) * epochs,
        "report_s": rng.uniform(0.05, 0.2) * epochs,
        "other_s": rng.uniform(0.3, 1.0),
    }
    scale = wall / sum(weights.values())
    out = {k: float(v * scale) for k, v in weights.items()}
    out["startup_s"] = out["launch_s"] + out["init_s"] + out["data_s"] / epochs
    return out


if __name__ == "__main__":  # python -m mdf_search.report.synthetic <experiment dir>
    import logging
    import sys

    logging.basicConfig(level=logging.INFO)
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic")
    if (target / "trials").exists():
        raise SystemExit(f"{target}: already holds results; pick a new directory")
    logging.getLogger(__name__).info("wrote %s", synthetic_experiment(target, experiment=target.name))
