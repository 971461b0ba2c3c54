"""What a sweep records next to its results: ``spec.yaml``, ``arms.json`` and ``provenance.json``.

The design code runs here, once, when the sweep starts; reports and the live view read ``arms.json``
(``report.design``, which documents the format) and run no search code, so a report of an old run shows
the arms that run had. ``resume`` reads ``spec.yaml``. Both are written atomically and never overwritten;
``provenance.json`` (git SHA, library versions, where the sweep ran) is rewritten by every session.
Every file goes through the storage's filesystem (``data.storage``), so an experiment on ``s3://`` or
``gs://`` records them as a local one does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mdf_search.data import storage
from mdf_search.report.design import ARMS_FILE, FORMAT
from mdf_search.search.designs import arms, baseline_arms, num_trials
from mdf_search.search.space import Param, SearchSpec


def design_record(spec: SearchSpec) -> dict[str, Any]:
    """The arms.json content of ``spec`` (a JSON-ready dict; the format is ``report.design``'s)."""
    arm_list = arms(spec)
    baseline = {a.id for a in baseline_arms(spec, arm_list)}
    budget = spec.budget
    return {
        "format": FORMAT,
        "experiment": spec.experiment,
        "description": spec.description,
        "design": spec.design,
        "metric": spec.metric,
        "mode": spec.mode,
        "seeds": list(spec.seeds),
        "trials": num_trials(spec),
        "budget": {
            "epochs": budget.epochs,
            "trials": budget.trials,
            "trials_per_arm": budget.trials_per_arm,
            "max_wall_time_s": budget.max_wall_time,
            "max_gpu_hours": budget.max_gpu_hours,
            "price_per_gpu_hour": budget.price_per_gpu_hour,
        },
        "storage": spec.study.storage,
        "scientific": {key: _domain(param) for key, param in spec.scientific.items()},
        "nuisance": {key: _domain(param) for key, param in spec.nuisance.items()},
        "arms": [
            {"id": arm.id, "order": order, "baseline": arm.id in baseline, "params": dict(arm.params)}
            for order, arm in enumerate(arm_list)
        ],
    }


def _domain(param: Param) -> dict[str, Any]:
    if param.choices is not None:
        return {"choices": list(param.choices), "default": param.default_value()}
    return {
        "low": param.low,
        "high": param.high,
        "log": param.log,
        "step": param.step,
        "integer": param.integer,
        "default": param.default_value(),
    }


SPEC_FILE = "spec.yaml"
PROVENANCE_FILE = "provenance.json"


def write_design_record(spec: SearchSpec, experiment_dir: str | Path) -> Path | str:
    """Write ``<experiment_dir>/arms.json`` unless it is there (a resumed sweep keeps its first record);
    ``experiment_dir`` is a local path or a URI. Returns the file's path (its URI for a URI)."""
    root = str(experiment_dir)
    if not storage.is_file(root, ARMS_FILE):
        storage.write_text(root, ARMS_FILE, json.dumps(design_record(spec), indent=1) + "\n")
    return storage.join(root, ARMS_FILE) if storage.is_uri(root) else Path(root) / ARMS_FILE


def record_spec(spec: SearchSpec, root: str, provenance: Mapping[str, Any]) -> None:
    """Keep the spec (``resume`` reads it) and its resolved design (``arms.json``, which reports and the
    live view read) next to the results, never overwriting either once there, and this session's
    ``provenance`` (with the spec's source and the working directory) in ``provenance.json``. ``root``:
    the experiment root, a local path or a URI; ``spec.path`` likewise (``resume`` of an experiment on
    object storage loads the recorded spec.yaml)."""
    if not storage.is_uri(root):
        Path(root).mkdir(parents=True, exist_ok=True)
    if not storage.is_file(root, SPEC_FILE):
        source = str(spec.path)
        text = storage.read_bytes(source) if storage.is_uri(source) else Path(source).read_bytes()
        storage.write_bytes(root, SPEC_FILE, text)
    write_design_record(spec, root)
    record = {**provenance, "spec": str(spec.path), "cwd": os.getcwd()}
    storage.write_text(root, PROVENANCE_FILE, json.dumps(record, indent=1))
