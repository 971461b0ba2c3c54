"""The same ablation study written by hand: the baseline ``bench_vs_plain.py`` runs beside ``mdf-search sweep``.

What a researcher writes without the platform, from the libraries' own documentation: Ray Tune with an
Optuna grid sampler over (arm, seed), one Ray Train ``TorchTrainer`` per trial reporting to Tune
(``TuneReportCallback``), DeepSpeed ZeRO-3 in every worker. The study's data (synthetic images, split,
preprocessed cache, tokenizer) is prepared once before Tune starts. Training only: no evaluation, no
checkpoints, no Parquet, no report; each epoch reports its mean training loss and step time.

From this repository it imports the model and the data code only, to build the same model and the same
batches: ``mdf_search.config.TrialConfig`` (flat keys to typed sections), ``mdf_search.data`` (synthetic,
schema, splits, cache, batches) and ``mdf_search.model`` (presets, mllama, mdf). Nothing from
``mdf_search.search``, ``.train``, ``.results``, ``.report`` or ``.cluster``.

    python benchmarks/plain_study.py study.json --storage /tmp/plain --out plain.json

``study.json``: ``{"experiment": str, "fixed": {flat key: value}, "arms": {arm id: {flat key: value}},
"seeds": [int], "epochs": int, "workers": int}`` (``bench_vs_plain.py`` writes it from the same
description it writes the platform's spec from). ``--out`` gets one row per trial and the study's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TRIAL_SLOT = "plain_trial"  # a Tune trial's driver cannot ask for 0 CPUs: it asks for this instead


def _cache_root() -> Path:
    return Path(os.environ.get("MDF_SEARCH_CACHE") or "~/.cache/mdf-search").expanduser()


def prepare_data(params: dict[str, Any], scratch: Path) -> dict[str, str]:
    """Once per study: the synthetic images, the split, the preprocessed cache and a trained tokenizer."""
    from mdf_search.config import TrialConfig
    from mdf_search.data.batches import prompt_text
    from mdf_search.data.cache import build_cache, cache_size_for
    from mdf_search.data.schema import read_manifest
    from mdf_search.data.splits import make_split, write_split
    from mdf_search.data.synthetic import ensure_synthetic
    from mdf_search.model.mllama import train_tokenizer
    from mdf_search.model.presets import get_preset

    cfg = TrialConfig.from_flat(params)
    data, preset, root = cfg.data, get_preset(cfg.model.preset), _cache_root()
    manifest = ensure_synthetic(
        root / "synthetic",
        images=data.synthetic_images,
        size=data.synthetic_size,
        severity=data.synthetic_severity,
        seed=0,
    )
    table, space = read_manifest(manifest)
    split = make_split(
        table, data.split, seed=data.split_seed, val_frac=data.val_frac, test_frac=data.test_frac
    )
    cache = build_cache(manifest, root / "cache", cache_size_for(preset.unet_size, preset.vision_size))
    texts = table.column("clinical_text").to_pylist()
    corpus = [prompt_text(texts[i] or "") for i in split.rows("train")]
    tokenizer = train_tokenizer(corpus, preset.vocab_size, extra_tokens=[*space.diseases, *space.types])
    tokenizer.save_pretrained(scratch / "tokenizer")
    return {
        "split": str(write_split(split, scratch)),
        "cache": str(cache),
        "tokenizer": str(scratch / "tokenizer"),
        "diseases": json.dumps(list(space.diseases)),
    }


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the model under ZeRO-3, train the epochs, report each epoch's loss."""
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations import HfDeepSpeedConfig

    from mdf_search.config import TrialConfig
    from mdf_search.data.batches import Collator, FundusDataset
    from mdf_search.data.cache import open_cache
    from mdf_search.data.splits import read_split
    from mdf_search.model.mdf import MDFModel, mdf_loss, task_classes
    from mdf_search.model.mllama import IMAGE, build_mllama
    from mdf_search.model.presets import get_preset

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = TrialConfig.from_flat(config["params"])
    data, optim, preset = config["data"], cfg.optim, get_preset(cfg.model.preset)
    world = dist.get_world_size()
    torch.manual_seed(cfg.run.seed)
    dataset = FundusDataset(open_cache(data["cache"]), read_split(data["split"]).rows("train"))
    steps = max(1, -(-len(dataset) // (world * optim.micro_batch)))
    ds_config = {
        "train_micro_batch_size_per_gpu": optim.micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": optim.micro_batch * world,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": optim.lr, "weight_decay": optim.weight_decay, "torch_adam": True},
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {"total_num_steps": steps * optim.epochs, "warmup_num_steps": 1},
        },
        "zero_optimization": {"stage": 3},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    tokenizer = PreTrainedTokenizerFast.from_pretrained(data["tokenizer"])
    tokenizer.padding_side = "right"
    classes = task_classes(cfg.head.task, tuple(json.loads(data["diseases"])))
    holder = HfDeepSpeedConfig(ds_config)  # transformers partitions the backbone as it is built
    mllama = build_mllama(
        preset,
        gate_init=cfg.model.xattn_gate_init,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
    )
    model = MDFModel(mllama, cfg.arch, classes)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
    )
    del holder
    collate = Collator(
        tokenizer,
        preset.vision,
        preset.unet_size,
        cfg.data.max_text_tokens,
        augment=cfg.data.augment,
        seed=cfg.run.seed,
    )
    sampler: DistributedSampler[Any] = DistributedSampler(dataset, shuffle=True, seed=cfg.run.seed)
    loader = DataLoader(dataset, batch_size=optim.micro_batch, sampler=sampler, collate_fn=collate)
    train_s, first_step = 0.0, None
    for epoch in range(optim.epochs):
        sampler.set_epoch(epoch)
        collate.set_epoch(epoch)
        losses = []
        for batch in loader:
            start = time.perf_counter()
            first_step = first_step or time.time()
            loss, _ = mdf_loss(engine(batch), batch)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            train_s += time.perf_counter() - start
        ray.train.report(
            {
                "epoch": epoch + 1,
                "train_loss": sum(losses) / len(losses),
                "train_s": train_s,
                "startup_s": (first_step or time.time()) - config["launched_unix"],
            }
        )


def trial(config: dict[str, Any], study: dict[str, Any], data: dict[str, str], storage: str) -> None:
    """One Tune trial: a Ray Train run of the arm's config with the trial's seed."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    params = {
        **study["fixed"],
        **study["arms"][config["arm"]],
        "seed": config["seed"],
        "run.workers": study["workers"],
        "optim.epochs": study["epochs"],
    }
    TorchTrainer(
        train_loop,
        train_loop_config={"params": params, "data": data, "launched_unix": time.time()},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=study["workers"], resources_per_worker={"CPU": 1}),
        run_config=RunConfig(  # type: ignore[call-arg]  # ray.train.RunConfig (v2) has worker_runtime_env
            name=tune.get_context().get_trial_id(),
            storage_path=storage,
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}},
        ),
    ).fit()


class GridSpace:
    """Optuna's define-by-run: every trial picks an arm and a seed (the grid sampler walks all pairs)."""

    def __init__(self, arms: list[str], seeds: list[int]) -> None:
        self.arms, self.seeds = arms, seeds

    def __call__(self, trial: Any) -> None:
        trial.suggest_categorical("arm", self.arms)
        trial.suggest_categorical("seed", self.seeds)


def run_study(study: dict[str, Any], storage: str) -> list[dict[str, Any]]:
    """Tune + Optuna over every (arm, seed), one trial at a time (its workers take the machine's CPUs)."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    arms, seeds = sorted(study["arms"]), list(study["seeds"])
    data = prepare_data({**study["fixed"], "run.workers": study["workers"]}, Path(storage))
    ray.init(num_cpus=os.cpu_count(), resources={TRIAL_SLOT: 1}, log_to_driver=False)
    try:
        searcher = OptunaSearch(
            space=GridSpace(arms, seeds),
            metric="train_loss",
            mode="min",
            sampler=optuna.samplers.GridSampler({"arm": arms, "seed": seeds}, seed=0),
        )
        trainable = tune.with_resources(
            tune.with_parameters(trial, study=study, data=data, storage=f"{storage}/train"), {TRIAL_SLOT: 1}
        )
        grid = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=len(arms) * len(seeds)),
            run_config=tune.RunConfig(name=study["experiment"], storage_path=storage, verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    rows = []
    for result in grid:  # type: ignore[attr-defined]  # ResultGrid is a sequence
        if result.error is not None:
            raise RuntimeError(f"a plain trial failed: {result.error}")
        metrics = result.metrics or {}
        rows.append(
            {
                "arm": result.config["arm"],
                "seed": result.config["seed"],
                "epochs": metrics.get("epoch"),
                "wall_s": metrics.get("time_total_s"),
                "train_s": metrics.get("train_s"),
                "startup_s": metrics.get("startup_s"),
                "train_loss": metrics.get("train_loss"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", type=Path, help="the study's JSON description (see above)")
    parser.add_argument("--storage", default=None, help="Tune's and Train's storage (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the trials' rows and wall time here")
    args = parser.parse_args()
    study = json.loads(args.study.read_text())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="plain-study-") as tmp:
        rows = run_study(study, args.storage or tmp)
    wall = time.perf_counter() - started
    out = {"study_wall_s": wall, "trials": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print(f"plain study: {len(rows)} trials in {wall:.1f} s")


if __name__ == "__main__":
    main()
