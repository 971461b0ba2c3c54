"""Three ways to train the same trial, side by side in one run (issue #4's benchmark).

(a) the platform's DeepSpeed ZeRO-3 loop launched with plain ``torchrun`` (no Ray);
(b) the platform's ``train_loop_per_worker`` under Ray Train (what a sweep runs);
(c) Ray Train with plain PyTorch DDP + AdamW instead of DeepSpeed (what ZeRO-3 costs at this size).

Same model, data, micro-batch and world size. Reports steady-state samples/s (each epoch's steps after
the first, averaged over epochs 2..N) and, separately, start-up: from launching the trial to its first
training step. Ratios are computed from numbers measured in this one run.

    python benchmarks/bench_train.py [--epochs 3] [--images 96] [--workers 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _config(args: argparse.Namespace) -> Any:
    from mdf_search.config import TrialConfig

    flat: dict[str, object] = {
        "data.synthetic_images": args.images,
        "data.synthetic_size": 128,
        "optim.epochs": args.epochs,
        "optim.micro_batch": args.micro_batch,
        "run.workers": args.workers,
    }
    for pair in args.set or []:
        key, _, value = pair.partition("=")
        flat[key] = value
    return TrialConfig.from_flat(flat)


# -- (a) torchrun ---------------------------------------------------------------------------------------
def torchrun_worker(config_path: str, out: str) -> None:
    """Runs under torchrun: the platform's setup_run + _train_epoch, no Ray."""
    import deepspeed

    from mdf_search.train.loop import _train_epoch
    from mdf_search.train.worker import setup_run

    deepspeed.init_distributed(dist_backend="gloo")
    config = json.loads(Path(config_path).read_text())
    launched = float(config.pop("launched_unix"))
    run = setup_run(config)
    epochs = []
    for epoch in range(run.cfg.optim.epochs):
        run.epoch = epoch
        metrics = _train_epoch(run)
        assert metrics is not None
        epochs.append(metrics)
    if run.rank == 0:
        Path(out).write_text(json.dumps({"epochs": epochs, "launched_unix": launched}))


def run_torchrun(cfg: Any, data: Any, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config_path, out = Path(tmp) / "config.json", Path(tmp) / "out.json"
        config_path.write_text(
            json.dumps({"params": cfg.to_flat(), "data": data.to_dict(), "launched_unix": time.time()})
        )
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_train import torchrun_worker; torchrun_worker({str(config_path)!r}, {str(out)!r})"
        script = Path(tmp) / "entry.py"
        script.write_text(code)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={workers}",
                "--master_port=29531",
                str(script),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        return json.loads(out.read_text())


# -- (b) Ray Train + DeepSpeed ---------------------------------------------------------------------------
def run_ray(cfg: Any, data: Any, storage: str) -> dict[str, Any]:
    from mdf_search.train.trainer import EpochLog, make_trainer

    log = Path(storage) / "ray-ds" / "epochs.jsonl"
    launched = time.time()
    make_trainer(cfg, data, name="ray-ds", storage_path=storage, callbacks=[EpochLog(str(log))]).fit()
    return {"epochs": [json.loads(line) for line in log.read_text().splitlines()], "launched_unix": launched}


# -- (c) Ray Train + DDP -----------------------------------------------------------------------------------
def ddp_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mdf_search.config import TrialConfig
    from mdf_search.data.batches import Collator, FundusDataset
    from mdf_search.data.cache import open_cache
    from mdf_search.data.splits import read_split
    from mdf_search.model.mdf import mdf_loss
    from mdf_search.model.presets import get_preset
    from mdf_search.train.builders import TrialData, build_model
    from mdf_search.train.deepspeed import param_groups

    cfg = TrialConfig.from_flat(config["params"])
    data = TrialData(**config["data"])
    torch.manual_seed(cfg.run.seed)
    model, tokenizer = build_model(cfg, data.label_space, tokenizer_dir=data.tokenizer)
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim), lr=cfg.optim.lr)
    preset = get_preset(cfg.model.preset)
    dataset = FundusDataset(open_cache(data.cache), read_split(data.split).rows("train"))
    collate = Collator(
        tokenizer,
        preset.vision,
        preset.unet_size,
        cfg.data.max_text_tokens,
        augment=True,
        seed=cfg.run.seed,
    )
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=cfg.run.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.optim.micro_batch, sampler=sampler, collate_fn=collate
    )
    for epoch in range(cfg.optim.epochs):
        sampler.set_epoch(epoch)
        times, first = [], None
        for batch in loader:
            start = time.perf_counter()
            first = first or time.time()
            loss, _ = mdf_loss(ddp(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        steady = times[1:] or times
        per_step = sum(steady) / len(steady)
        ray.train.report(
            {
                "epoch": epoch + 1,
                "samples_per_s": cfg.optim.micro_batch * dist.get_world_size() / per_step,
                "step_time_s": per_step,
                "first_step_unix": first,
            }
        )


def run_ddp(cfg: Any, data: Any, storage: str) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mdf_search.cluster import worker_env
    from mdf_search.train.trainer import EpochLog

    log = Path(storage) / "ray-ddp" / "epochs.jsonl"
    launched = time.time()
    TorchTrainer(
        ddp_loop_per_worker,
        train_loop_config={"params": cfg.to_flat(), "data": data.to_dict()},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name="ray-ddp",
            storage_path=storage,
            callbacks=[EpochLog(str(log))],
            worker_runtime_env={"env_vars": {**worker_env(), "DS_ACCELERATOR": "cpu"}},
        ),
    ).fit()
    return {"epochs": [json.loads(line) for line in log.read_text().splitlines()], "launched_unix": launched}


def summarize(name: str, run: dict[str, Any]) -> dict[str, float]:
    epochs = run["epochs"]
    steady = [e["samples_per_s"] for e in epochs[1:]] or [epochs[0]["samples_per_s"]]
    return {
        "samples_per_s": sum(steady) / len(steady),
        "startup_s": epochs[0]["first_step_unix"] - run["launched_unix"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--set", action="append")
    parser.add_argument("--quick", action="store_true", help="CI: 1 epoch of 24 images (about 2 minutes)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.images = 1, 24
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from mdf_search.cluster import connect, shutdown
    from mdf_search.train.builders import prepare_trial_data

    cfg = _config(args)
    data = prepare_trial_data(cfg)
    with tempfile.TemporaryDirectory(prefix="mdf-bench-") as storage:
        results = {"(a) torchrun + DeepSpeed ZeRO-3": summarize("a", run_torchrun(cfg, data, args.workers))}
        connect(temp_dir=tempfile.mkdtemp(prefix="mdfray-", dir="/tmp"))
        try:
            results["(b) Ray Train + DeepSpeed ZeRO-3"] = summarize("b", run_ray(cfg, data, storage))
            results["(c) Ray Train + DDP"] = summarize("c", run_ddp(cfg, data, storage))
        finally:
            shutdown()
    print(
        f"\npreset={cfg.model.preset} workers={args.workers} micro_batch={args.micro_batch} epochs={args.epochs} "
        f"images={args.images}"
    )
    print(f"{'run':36s} {'samples/s':>10s} {'start-up s':>11s}")
    for name, r in results.items():
        print(f"{name:36s} {r['samples_per_s']:10.2f} {r['startup_s']:11.1f}")
    a, b, c = results.values()
    print(
        f"\nratio (b)/(a) Ray Train overhead on the same loop: {b['samples_per_s'] / a['samples_per_s']:.3f} (target >= 0.95)"
    )
    print(
        f"ratio (b)/(c) ZeRO-3 vs DDP under Ray Train:        {b['samples_per_s'] / c['samples_per_s']:.3f}"
    )
    print(f"start-up (b), trial launch to first step:          {b['startup_s']:.1f} s (target < 15 s)")


if __name__ == "__main__":
    main()
