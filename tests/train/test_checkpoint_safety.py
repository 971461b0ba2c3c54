"""No code runs from a checkpoint: a real DeepSpeed ZeRO-3 checkpoint of the tiny preset, made and
resumed in one DeepSpeed process (gloo, in a subprocess as in test_zero3_bf16.py), then exported here.

A hostile pickle (its ``__reduce__`` would create a marker file) placed as the model states, the
optimiser states or our own RNG state is refused by the resume path (``checkpoint.load``) and by
``mdf-search export``, naming the file, and the marker never appears; even when a file is swapped after
the folder was verified, DeepSpeed's own reads go through the safe loader. A normal checkpoint resumes
bit for bit and exports exactly what DeepSpeed's ``zero_to_fp32`` would.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.helpers import invoke, plain

ROOT = Path(__file__).resolve().parents[2]
ROLES = {
    "model": "mdf/zero_pp_rank_0_mp_rank_00_model_states.pt",
    "optim": "mdf/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "rng": "rng/rank0.pt",
    "state": "trial.json",  # ours, JSON: a pickle there is never unpickled
}


def _says(role: str) -> str:
    return "not the trial's JSON state" if role == "state" else "arbitrary unpickling"


SCRIPT = textwrap.dedent(
    """
    import json, os, pickle, shutil, sys
    from pathlib import Path
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    import deepspeed, torch
    sys.path.insert(0, "benchmarks")
    from gpu_check import _batch
    from mdf_search.config import TrialConfig
    from mdf_search.data.schema import LabelSpace
    from mdf_search.model.mdf import MDFModel, mdf_loss, task_classes
    from mdf_search.model.mllama import build_mllama
    from mdf_search.model.presets import get_preset
    from mdf_search.train import checkpoint
    from mdf_search.train.deepspeed import build_ds_config, initialize, zero3_construction

    work, roles = Path(sys.argv[2]), json.loads(sys.argv[3])
    marker = work / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = TrialConfig.from_flat({"model.preset": "tiny", "run.workers": 1, "optim.epochs": 1})
    space = LabelSpace(("normal", "dr"))
    classes = task_classes(cfg.head.task, space.diseases)
    ds = build_ds_config(cfg, world_size=1, steps_per_epoch=6, on_gpu=False)

    def engine():
        torch.manual_seed(0)
        with zero3_construction(ds):
            model = MDFModel(build_mllama(get_preset("tiny"), gate_init=0.5), cfg.arch, classes)
        return initialize(model, cfg, ds)[0]

    torch.manual_seed(1)
    batch = {k: v.float() if v.is_floating_point() else v for k, v in _batch(get_preset("tiny"), 2, 16, "cpu").items()}
    batch["labels_type"] = batch["labels_type"] % len(classes["type"])

    def steps(e, n):
        out = []
        for _ in range(n):
            loss, _ = mdf_loss(e(batch), batch)
            e.backward(loss)
            e.step()
            out.append(float(loss))
        return out

    first = engine()
    steps(first, 2)
    ck = work / "ck"
    ck.mkdir()
    state = checkpoint.TrialState(0, 0.5, cfg.to_flat(), space.to_json(), {})
    checkpoint.save(first, ck, state, rank=0, tokenizer=None)
    reference = steps(first, 2) + [torch.rand(1).item()]

    second = engine()
    refused = {}
    for role, rel in roles.items():
        for how in ("raw", "torch"):
            bad = work / f"bad-{role}-{how}"
            shutil.copytree(ck, bad)
            if how == "raw":
                (bad / rel).write_bytes(pickle.dumps(Evil()))
            else:
                torch.save({"x": Evil()}, bad / rel)
            try:
                checkpoint.load(second, bad, rank=0)
                refused[f"{role}-{how}"] = "loaded"
            except checkpoint.CheckpointError as err:
                refused[f"{role}-{how}"] = str(err)
    resumed = checkpoint.load(second, ck, rank=0)
    again = steps(second, 2) + [torch.rand(1).item()]
    # a file swapped after verify: DeepSpeed's own read of it is refused too
    swapped = work / "swapped"
    shutil.copytree(ck, swapped)
    torch.save({"x": Evil()}, swapped / roles["optim"])
    verify = checkpoint.verify
    checkpoint.verify = checkpoint.read_state
    try:
        checkpoint.load(engine(), swapped, rank=0)
        refused["swapped"] = "loaded"
    except checkpoint.CheckpointError as err:
        refused["swapped"] = str(err)
    checkpoint.verify = verify

    print("RESULT " + json.dumps({"reference": reference, "again": again, "epoch": resumed.epoch,
                                  "refused": refused, "marker": marker.exists()}))
    """
)


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    work = tmp_path_factory.mktemp("zero3")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(work / "ext"), "OMP_NUM_THREADS": "1"}
    port = str(29900 + os.getpid() % 90)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, port, str(work), json.dumps(ROLES)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return work, json.loads(line.removeprefix("RESULT "))


def test_a_normal_checkpoint_resumes_bit_for_bit(made: tuple[Path, dict[str, Any]]) -> None:
    _, result = made
    assert result["epoch"] == 0
    assert result["again"] == result["reference"]  # the losses after it, and the restored torch RNG


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("how", ["raw", "torch"])
def test_resume_refuses_a_hostile_pickle_and_runs_nothing(
    made: tuple[Path, dict[str, Any]], role: str, how: str
) -> None:
    work, result = made
    said = result["refused"][f"{role}-{how}"]
    assert ROLES[role] in said and _says(role) in said, said
    assert not result["marker"] and not (work / "PWNED").exists()


def test_deepspeed_s_own_reads_are_safe_even_for_a_file_swapped_after_verify(
    made: tuple[Path, dict[str, Any]],
) -> None:
    _, result = made
    assert (
        ROLES["optim"] in result["refused"]["swapped"]
        and "arbitrary unpickling" in result["refused"]["swapped"]
    )


def test_export_equals_deepspeed_s_consolidation(
    made: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    work, _ = made
    monkeypatch.chdir(tmp_path)
    result = invoke("export", str(work / "ck"), "--out", "out")
    assert result.exit_code == 0, plain(result.stdout + result.stderr)
    got = load_file("out/model.safetensors")
    reference = get_fp32_state_dict_from_zero_checkpoint(str(work / "ck"), tag="mdf")  # a trusted folder
    assert set(got) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(got[name].to(tensor.dtype), tensor), name


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("how", ["raw", "torch"])
def test_export_refuses_a_hostile_pickle_and_runs_nothing(
    made: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str, how: str
) -> None:
    work, _ = made
    ck = tmp_path / "ck"
    shutil.copytree(work / "ck", ck)
    if how == "raw":
        (ck / ROLES[role]).write_bytes(pickle.dumps(Evil()))
    else:
        torch.save({"x": Evil()}, ck / ROLES[role])
    monkeypatch.chdir(tmp_path)
    result = invoke("export", "ck", "--out", "out")
    said = plain(result.stderr)
    assert result.exit_code == 2 and "Traceback" not in said, said
    assert f"ck/{ROLES[role]}: " in said and _says(role) in said, said
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()
