"""ZeRO-3 in bf16 takes optimiser steps: the partitioned Mllama (bf16) and the plain U-Net, fusion and heads
(built in fp32) meet in one stage-3 buffer, which DeepSpeed requires to hold a single dtype.

Found on an H200 (``benchmarks/gpu_check.py`` stopped in ``deepspeed.initialize``); the same failure
reproduces on CPU, so this runs in the unit tier: one DeepSpeed process on gloo, in a subprocess so its
process group does not outlive the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    import deepspeed, torch
    sys.path.insert(0, "benchmarks")
    from gpu_check import _batch
    from mdf_search.config import TrialConfig
    from mdf_search.model.mdf import MDFModel, mdf_loss, task_classes
    from mdf_search.model.mllama import build_mllama
    from mdf_search.model.presets import get_preset
    from mdf_search.train.deepspeed import build_ds_config, initialize, zero3_construction

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = TrialConfig.from_flat({"model.preset": "tiny", "optim.precision": "bf16", "run.workers": 1,
                                 "optim.epochs": 1, "fusion.levels": "1234", "film.placement": "enc"})
    ds = build_ds_config(cfg, world_size=1, steps_per_epoch=3, on_gpu=False)
    with zero3_construction(ds):
        model = MDFModel(build_mllama(get_preset("tiny"), gate_init=0.5), cfg.arch, task_classes("type", ()))
    engine, _, _ = initialize(model, cfg, ds)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    batch = _batch(get_preset("tiny"), 2, 16, engine.device)
    losses = []
    for _ in range(3):
        loss, _ = mdf_loss(engine(batch), batch)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    print("losses", losses)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] != losses[0], losses
    """
)


def test_zero3_bf16_initialises_and_steps_the_fused_model(tmp_path: Path) -> None:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "OMP_NUM_THREADS": "1"}
    port = str(29600 + os.getpid() % 300)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, port], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "losses" in done.stdout
