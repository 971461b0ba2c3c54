"""Bad checkpoints given to ``mdf-search export``: each is refused with exit 2, names the file and the
fix, runs no code from a pickle (a hostile one would create ``PWNED`` in the case's folder, which the
harness would see as a changed file) and writes nothing.

The folder is a ZeRO-3 checkpoint of the tiny preset in DeepSpeed 0.19's layout, built without DeepSpeed
(fast): its ``param_shapes`` are the model's, its flat fp32 group zeros. ``test_the_synthetic_checkpoint_exports``
shows it is one ``export`` accepts, so each case's refusal is due to its one fault.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import OrderedDict
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from mdf_search.config import TrialConfig
from mdf_search.data.schema import LabelSpace
from mdf_search.train.checkpoint import Kind, TrialState, expected_shapes, write_state
from tests.badinput.harness import Case, check, ids
from tests.cli.helpers import invoke, plain

MODEL = "mdf/zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM = "mdf/zero_pp_rank_0_mp_rank_00_optim_states.pt"
RNG = "rng/rank0.pt"
HOSTILE = r"arbitrary unpickling.*could run code.*do not use this folder"
BROKEN = r"empty, truncated or corrupt.*retrain"


class Evil:
    """Unpickled with weights_only=False, it would create PWNED in the working directory."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


def _state(params: dict[str, Any] | None = None) -> TrialState:
    flat = TrialConfig.from_flat({"model.preset": "tiny", **(params or {})}).to_flat()
    return TrialState(0, 0.5, flat, LabelSpace(("normal", "dr")).to_json(), {})


@cache
def _shapes() -> tuple[dict[str, tuple[int, ...]], tuple[str, ...]]:
    shapes, buffers = expected_shapes(_state())
    return shapes, tuple(sorted(buffers))


def _model_states(shapes: dict[str, tuple[int, ...]], world: int = 1) -> dict[str, Any]:
    return {
        "module": OrderedDict(),
        "buffer_names": [],
        "optimizer": None,
        "param_shapes": [OrderedDict((k, torch.Size(v)) for k, v in shapes.items())],
        "frozen_param_shapes": OrderedDict(),
        "shared_params": {},
        "frozen_param_fragments": OrderedDict(),
        "lr_scheduler": {"last_batch_iteration": 1},
        "skipped_steps": 0,
        "global_steps": 2,
        "global_samples": 8,
        "dp_world_size": world,
        "mp_world_size": 1,
        "ds_config": {"zero_optimization": {"stage": 3}},
        "ds_version": "0.19.8",
    }


def _optim_states(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    numel = sum(int(torch.Size(s).numel()) for s in shapes.values())
    return {
        "optimizer_state_dict": {
            "zero_stage": 3,
            "partition_count": 1,
            "optimizer_state_dict": {"state": {}, "param_groups": []},
            "fp32_flat_groups": [torch.zeros(numel)],
        },
        "ds_version": "0.19.8",
    }


def checkpoint(root: Path, name: str = "ck", *, world: int = 1) -> Path:
    """A complete synthetic checkpoint folder ``root/name``."""
    shapes, _ = _shapes()
    ck = root / name
    (ck / "mdf").mkdir(parents=True)
    (ck / "rng").mkdir()
    write_state(ck, _state(), Kind.MODEL)
    (ck / "latest").write_text("mdf")
    torch.save(_model_states(shapes, world), ck / MODEL)
    torch.save(_optim_states(shapes), ck / OPTIM)
    torch.save({"torch": torch.get_rng_state(), "python": {"version": 3}}, ck / RNG)
    return ck


def _put(rel: str, data: bytes | None = None, *, evil: str = "") -> Any:
    """A setup: the synthetic checkpoint with ``rel`` replaced by ``data`` (``evil``: a hostile pickle,
    raw or in torch's zip format)."""

    def setup(tmp: Path) -> None:
        ck = checkpoint(tmp)
        target = ck / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if evil == "raw":
            target.write_bytes(pickle.dumps(Evil()))
        elif evil == "torch":
            torch.save({"module": Evil()}, target)
        else:
            target.write_bytes(data or b"")

    return setup


def _edit(change: Any) -> Any:
    def setup(tmp: Path) -> None:
        change(checkpoint(tmp))

    return setup


def _truncated(rel: str) -> Any:
    def change(ck: Path) -> None:
        data = (ck / rel).read_bytes()
        (ck / rel).write_bytes(data[: len(data) // 2])

    return _edit(change)


def _symlink_out(rel: str) -> Any:
    def change(ck: Path) -> None:
        outside = ck.parent / "elsewhere"
        outside.mkdir()
        target = outside / Path(rel).name
        if (ck / rel).is_dir():
            shutil.copytree(ck / rel, target)
            shutil.rmtree(ck / rel)
        else:
            shutil.copy(ck / rel, target)
            (ck / rel).unlink()
        (ck / rel).symlink_to(target)

    return _edit(change)


def _move_shards(to: str) -> Any:
    def change(ck: Path) -> None:
        (ck / to).mkdir(exist_ok=True)
        for f in list((ck / "mdf").iterdir()):
            f.rename(ck / to / f.name)
        (ck / "mdf").rmdir()

    return _edit(change)


def _other_shape(ck: Path) -> None:
    shapes = dict(_shapes()[0])
    first = next(iter(shapes))
    shapes[first] = (*shapes[first][:-1], shapes[first][-1] + 8)
    torch.save(_model_states(shapes), ck / MODEL)
    torch.save(_optim_states(shapes), ck / OPTIM)


def _other_trial(ck: Path) -> None:  # trial.json of a small-preset trial; shards of the tiny one
    write_state(ck, _state({"model.preset": "small"}), Kind.MODEL)


def _trial_json(payload: Any) -> Any:
    return _edit(lambda ck: (ck / "trial.json").write_text(json.dumps(payload)))


def _light(policy: str) -> Any:
    def setup(tmp: Path) -> None:
        ck = tmp / "ck"
        ck.mkdir()
        state = _state({"run.checkpoint": policy, "optim.epochs": 3})
        write_state(ck, state, Kind.LIGHT)

    return setup


def _world_two(tmp: Path) -> None:
    checkpoint(tmp, world=2)


def _file(name: str) -> Any:
    return lambda tmp: (tmp / name).write_text("not a folder\n")


EXPORT = ("export", "ck", "--out", "out")


def _case(id: str, setup: Any, *expect: str, args: tuple[str, ...] = EXPORT) -> Case:
    return Case(id=id, args=args, expect=expect, setup=setup)


CASES: list[Case] = [
    # the folder itself
    _case("no-such-folder", None, r"ck: missing", r"checkpoint_NNNNNN folder"),
    _case("a-file-not-a-folder", _file("ck"), r"ck: a file", r"checkpoint_NNNNNN folder"),
    _case(
        "an-empty-folder",
        lambda t: (t / "ck").mkdir(),
        r"not an mdf-search checkpoint",
        r"trial\.json and mdf/",
    ),
    _case(
        "light-checkpoint-none", _light("none"), r"holds no weights", r"rerun it with run\.checkpoint=last"
    ),
    _case("light-checkpoint-last", _light("last"), r"holds no weights", r"run\.checkpoint=every_epoch"),
    _case("shards-in-another-tag", _move_shards("global_step2"), r"global_step2", r"keeps them in mdf/"),
    _case("shards-at-the-top", _move_shards("."), r"not an mdf-search checkpoint", r"keeps them in mdf/"),
    _case(
        "mdf-is-a-file",
        _edit(lambda ck: (shutil.rmtree(ck / "mdf"), (ck / "mdf").write_text("x"))),
        r"not an mdf-search checkpoint",
        r"needs trial\.json and mdf/",
    ),
    # trial.json
    _case(
        "trial-json-missing", _edit(lambda ck: (ck / "trial.json").unlink()), r"not an mdf-search checkpoint"
    ),
    _case(
        "trial-json-text",
        _put("trial.json", b"epoch: 1\n"),
        r"trial\.json: not the trial's JSON state",
        r"retrain",
    ),
    _case(
        "trial-json-hostile-pickle",
        _put("trial.json", evil="raw"),
        r"trial\.json: not the trial's JSON state",
    ),
    _case("trial-json-a-list", _trial_json([1, 2]), r"trial\.json: not the trial's JSON state.*JSON list"),
    _case(
        "trial-json-no-params",
        _trial_json({"epoch": 0, "best_metric": None}),
        r"trial\.json.*KeyError.*params",
    ),
    _case(
        "trial-json-bad-config",
        _trial_json(
            {
                "epoch": 0,
                "best_metric": None,
                "label_space": {"diseases": ["normal"]},
                "params": {"model.preset": "huge"},
            }
        ),
        r"trial\.json: its config is not valid",
        r"model\.preset",
    ),
    # model states (DeepSpeed's per-rank module file)
    _case("model-states-zero-bytes", _put(MODEL, b""), MODEL, BROKEN),
    _case("model-states-truncated-zip", _truncated(MODEL), MODEL, BROKEN),
    _case("model-states-text", _put(MODEL, b"these are not weights\n"), MODEL, BROKEN),
    _case("model-states-hostile-pickle", _put(MODEL, evil="raw"), MODEL, HOSTILE),
    _case(
        "model-states-hostile-torch-zip", _put(MODEL, evil="torch"), MODEL, HOSTILE, r"names posix\.system"
    ),
    _case(
        "model-states-a-folder",
        _edit(lambda ck: ((ck / MODEL).unlink(), (ck / MODEL).mkdir())),
        MODEL,
        r"a directory where a file belongs",
    ),
    _case(
        "model-states-not-deepspeed",
        _edit(lambda ck: torch.save({"weights": torch.zeros(2)}, ck / MODEL)),
        MODEL,
        r"not DeepSpeed model states",
    ),
    _case(
        "model-states-missing",
        _edit(lambda ck: (ck / MODEL).unlink()),
        r"no DeepSpeed model states",
        r"retrain",
    ),
    # optimiser states (the fp32 master weights export reads)
    _case("optim-states-hostile-pickle", _put(OPTIM, evil="raw"), OPTIM, HOSTILE),
    _case("optim-states-hostile-torch-zip", _put(OPTIM, evil="torch"), OPTIM, HOSTILE),
    _case("optim-states-truncated-zip", _truncated(OPTIM), OPTIM, BROKEN),
    _case(
        "optim-states-missing",
        _edit(lambda ck: (ck / OPTIM).unlink()),
        r"missing zero_pp_rank_0_mp_rank_00_optim",
        r"incomplete",
    ),
    _case(
        "a-rank-s-shards-missing",
        _world_two,
        r"missing zero_pp_rank_1_mp_rank_00_model_states\.pt",
        r"of the 2 rank\(s\)",
    ),
    # our own files beside DeepSpeed's
    _case("rng-hostile-pickle", _put(RNG, evil="raw"), RNG, HOSTILE),
    _case("rng-hostile-torch-zip", _put(RNG, evil="torch"), RNG, HOSTILE),
    _case("rng-zero-bytes", _put(RNG, b""), RNG, BROKEN),
    _case(
        "client-state-hostile", _put("mdf/client_state.pt", evil="torch"), r"mdf/client_state\.pt", HOSTILE
    ),
    _case(
        "latest-names-another-tag",
        _put("latest", b"../../elsewhere"),
        r"latest: names tag",
        r"write mdf into it",
    ),
    # links and shapes
    _case("model-states-symlink-out", _symlink_out(MODEL), MODEL, r"a symlink out of the checkpoint folder"),
    _case("rng-folder-symlink-out", _symlink_out("rng"), r"ck/rng: a symlink out", r"copy the file in"),
    _case(
        "shards-of-another-shape",
        _edit(_other_shape),
        r"other shapes than its trial\.json config",
        r"here, \[.*\] expected.*another trial's shards",
    ),
    _case(
        "trial-json-of-another-trial",
        _edit(_other_trial),
        r"other shapes than its trial\.json config",
        r"\[32\] here, \[256\] expected.*export the trial's own checkpoint folder",
    ),
    # the command's own options
    _case(
        "export-out-is-a-file",
        lambda t: (checkpoint(t), (t / "out").write_text("keep me\n")),
        r"--out out: a file",
        r"give a directory",
    ),
    _case(
        "dtype-fp16",
        checkpoint,
        r"Invalid value for '--dtype'.*'fp16' is not one of 'fp32', 'bf16'",
        args=(*EXPORT, "--dtype", "fp16"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check(case, tmp_path, monkeypatch)


def test_the_synthetic_checkpoint_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = invoke(*EXPORT)
    assert result.exit_code == 0, plain(result.stdout + result.stderr)
    assert (tmp_path / "out" / "model.safetensors").is_file()
