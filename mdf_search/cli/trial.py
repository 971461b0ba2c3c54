"""One trial's commands: ``model-summary``, ``train``, ``export`` and ``plan``.

Each reads a trial config (a trial YAML or a search space's ``fixed:`` block, plus ``--set`` pairs),
asks the library for a summary, a run, an export or a memory plan, and prints it.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar
from rich.table import Table

from mdf_search.cli.console import console, fail
from mdf_search.cli.options import (
    AddressOption,
    Freeze,
    Injection,
    Precision,
    Preset,
    SetOption,
    parse_sets,
    storage_path,
)
from mdf_search.cluster import AddressError, connect, ray_address
from mdf_search.config import ConfigError, TrialConfig
from mdf_search.data.schema import DataError
from mdf_search.model.wiring import LAYER_MAP_STRATEGIES
from mdf_search.results.schema import Status
from mdf_search.train.memory import plan_freeze_table, plan_trial
from mdf_search.train.progress import progress_actor
from mdf_search.train.selection import Selection
from mdf_search.yamlio import read_trial_yaml

app = typer.Typer()
MAX_GPUS = 65536  # plan: more GPUs than any cluster holds is a typo
MAX_NODES = 8192
MAX_GPU_MEM_GB = 4096.0  # GiB per GPU: far above any GPU made (an H200 has 141)


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


@app.command("model-summary")
def model_summary(
    preset: Annotated[Preset, typer.Option(help="model size")] = "tiny",
    fusion: Annotated[str | None, typer.Option(help="fused levels, e.g. 1234, 13 or none")] = None,
    injection: Annotated[
        Injection | None, typer.Option(help="how U-Net tokens enter cross-attention")
    ] = None,
    layer_map: Annotated[
        str | None,
        typer.Option(
            "--map", help=f"layer map: {' | '.join(LAYER_MAP_STRATEGIES)}, or LEVEL:LAYER pairs, e.g. 1:3,2:8"
        ),
    ] = None,
    film: Annotated[str | None, typer.Option(help="FiLM placement, e.g. enc, none, enc1+enc2")] = None,
    freeze: Annotated[Freeze | None, typer.Option(help="what is frozen")] = None,
    sets: SetOption = None,
) -> None:
    """Modules, parameters, trainable parameters and fusion wiring (meta device: no weights needed)."""
    from mdf_search.model.summary import summarize  # torch and transformers: only for this command

    flat: dict[str, object] = {"model.preset": preset}
    for key, value in (
        ("fusion.levels", fusion),
        ("fusion.injection", injection),
        ("fusion.map", layer_map),
        ("film.placement", film),
        ("freeze", freeze),
    ):
        if value is not None:
            flat[key] = value
    if fusion in ("none", "") and injection is None:
        flat["fusion.injection"] = "none"
    flat.update(parse_sets(sets))
    try:
        cfg = TrialConfig.from_flat(flat, source="model-summary")
    except ConfigError as err:
        raise fail(str(err)) from None
    summary = summarize(cfg.arch)
    # escaped: rich would read "[tiny]" as a style tag and drop it
    table = Table(title=escape(f"MDF-MLLM [{cfg.model.preset}] freeze={cfg.freeze.strategy}"))
    table.add_column("module")
    table.add_column("parameters", justify="right")
    table.add_column("trainable", justify="right")
    for row in summary.rows:
        table.add_row(row.name, f"{row.params:,}", f"{row.trainable:,}")
    table.add_section()
    table.add_row(
        "[bold]total[/]",
        f"[bold]{summary.total:,}[/] ({_human(summary.total)})",
        f"[bold]{summary.trainable:,}[/] ({_human(summary.trainable)})",
    )
    console.print(table)
    wiring = Table(
        title=f"fusion wiring ({cfg.fusion.injection}, {cfg.fusion.grid}x{cfg.fusion.grid} tokens per level)"
    )
    wiring.add_column("cross-attention layer", justify="right")
    wiring.add_column("U-Net levels")
    wiring.add_column("U-Net tokens", justify="right")
    fused = {layer: (levels, tokens) for layer, levels, tokens in summary.wiring}
    for layer in summary.cross_attention_layers:
        levels, tokens = fused.get(layer, ((), 0))
        wiring.add_row(str(layer), ",".join(map(str, levels)) or "-", str(tokens))
    console.print(wiring)
    film_sites = "+".join(cfg.film.placement) or "none"
    console.print(
        f"FiLM: {film_sites} (source: {cfg.film.source}); head: {cfg.head.kind}; task: {cfg.head.task}"
    )


def _trial_config(config: Path | None, sets: list[str] | None) -> TrialConfig:
    """The trial config of a YAML file (or none: the defaults) with ``--set`` pairs on top; exit 2 when
    it is invalid."""
    try:
        flat: dict[str, object] = read_trial_yaml(config) if config else {}
        flat.update(parse_sets(sets))
        return TrialConfig.from_flat(flat, source=str(config) if config else "--set")
    except ConfigError as err:
        raise fail(str(err)) from None


@app.command()
def train(
    config: Annotated[
        Path, typer.Argument(help="trial YAML (flat keys) or a search space (its fixed: block)")
    ],
    storage: Annotated[str, typer.Option(help="where Ray Train writes the run (path or URI)")] = "runs",
    name: Annotated[str | None, typer.Option(help="run name (default: train-<config hash>-s<seed>)")] = None,
    address: AddressOption = None,
    sets: SetOption = None,
) -> None:
    """Run one trial on a local (or given) Ray Train, with a progress bar: debug a config before sweeping it."""
    # Ray, torch and transformers: imported by the command that runs a trial, not by every command.
    import ray

    from mdf_search.train.builders import prepare_trial_data
    from mdf_search.train.trainer import EpochLog, make_trainer

    cfg = _trial_config(config, sets)
    if name is not None and (not name.strip() or name in (".", "..") or "/" in name or "\\" in name):
        raise fail(f"--name {name!r}: a run name is one folder name (no / or ..); write e.g. --name debug-1")
    local = Path(storage).expanduser() if "://" not in storage else None
    if local is not None and local.exists() and not local.is_dir():
        raise fail(f"--storage {storage}: a file, not a directory; give a directory (or an s3:// URI)")
    try:
        address = ray_address(address)  # checked before any data is prepared or Ray starts
    except AddressError as err:
        raise fail(str(err)) from None
    name = name or f"train-{cfg.config_hash()[:8]}-s{cfg.run.seed}"
    root = storage_path(storage)
    console.print(
        f"[bold]trial[/] {name}: preset={cfg.model.preset} levels={''.join(map(str, cfg.fusion.levels)) or 'none'} "
        f"injection={cfg.fusion.injection} freeze={cfg.freeze.strategy} workers={cfg.run.workers}"
    )
    try:
        data = prepare_trial_data(cfg)
    except (DataError, FileNotFoundError) as err:
        raise fail(str(err)) from None
    connect(address)
    actor = progress_actor()
    log_path = f"{root}/{name}/epochs.jsonl" if "://" not in root else None
    callbacks = [EpochLog(log_path)] if log_path else []
    trainer = make_trainer(cfg, data, name=name, storage_path=root, progress=actor, callbacks=callbacks)
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_fit(trainer)), daemon=True)
    thread.start()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Bar(*columns, console=console, transient=False) as bar:
        epochs = bar.add_task("epochs", total=cfg.optim.epochs, info="")
        steps = bar.add_task("steps", total=None, info="starting workers")
        while thread.is_alive():
            thread.join(0.5)
            current = ray.get(actor.get.remote())
            if current:
                bar.update(
                    steps,
                    completed=current["step"],
                    total=current["steps"],
                    info=f"loss {current['loss']:.4f}",
                )
                bar.update(epochs, completed=current["epoch"] + (current["step"] == current["steps"]))
            time.sleep(0.2)
    result = outcome.get("result")
    if isinstance(result, BaseException):
        raise fail(f"trial {name} failed: {result}", code=1)
    metrics = getattr(result, "metrics", None) or {}
    _print_trial_metrics(metrics)
    status = metrics.get("status")
    if status != Status.COMPLETED:
        raise fail(f"trial {name} ended {status}: {metrics.get('message', '')}", code=1)
    console.print(f"checkpoint: {getattr(result, 'checkpoint', None)}")


def _fit(trainer: object) -> object:
    try:
        return trainer.fit()  # type: ignore[attr-defined]
    except Exception as err:  # surfaced to the CLI thread
        return err


def _print_trial_metrics(metrics: dict[str, object]) -> None:
    """The trial's metrics at the epoch validation selected (README, "What a result means": test only reports, and every
    number shown for a trial comes from that epoch): its val/ and test/ values and training loss, from
    the report's ``selected/`` keys (``search.callbacks.selected_view``), then the run's throughput and
    memory. A report without a selected epoch (diverged or out of memory first) shows no val/test values."""
    from mdf_search.search.callbacks import SELECTED, selected_view  # Ray Tune: only after a trial ran

    default = Selection()  # `train` passes no selection to make_trainer: the default metric and mode
    metric = str(metrics.get("selection_metric") or default.metric)
    mode = str(metrics.get("selection_mode") or default.mode)
    chosen = {k.removeprefix(SELECTED) for k in metrics if k.startswith(SELECTED)}
    view = selected_view(metrics)
    best, last = metrics.get("best_epoch"), metrics.get("epoch")
    table = Table(title=f"selected epoch {best} of {last}" if chosen else f"epoch {last}, none selected")
    table.add_column("metric")
    table.add_column("value", justify="right")

    def row(key: str, value: object) -> None:
        if not isinstance(value, list | dict):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))

    marked = metric if metric in chosen else f"val/type/{metric.removeprefix('val/')}"  # task=dual
    for group in ("val/", "test/", "train_loss"):
        for key in (k for k in view if k in chosen and k.startswith(group)):
            row(f"{key} *" if key == marked else key, view[key])
    run_keys = ("samples_per_s", "step_time_s", "startup_s", "peak_mem")
    for key, value in metrics.items():
        if key.startswith(run_keys):
            row(key, value)
    console.print(table)
    if chosen:
        console.print(
            f"epoch {best} of {last} was selected on validation by {marked} ({mode}, marked *); the val/, "
            "test/ and train_loss rows are that epoch's, throughput and memory the run's",
            highlight=False,
        )
    else:
        console.print(
            f"no epoch was selected ({last} epoch(s)): no validation or test metrics", highlight=False
        )


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="a trial checkpoint directory")],
    out: Annotated[Path, typer.Option(help="output directory")],
    dtype: Annotated[Precision, typer.Option(help="dtype of the exported weights")] = "fp32",
) -> None:
    """Consolidate a ZeRO checkpoint into one safetensors state dict that loads without DeepSpeed."""
    if not checkpoint.is_dir():
        what = "a file" if checkpoint.exists() else "missing"
        raise fail(
            f"CHECKPOINT {checkpoint}: {what}; pass a trial's checkpoint_NNNNNN folder (trial.json, mdf/)"
        )
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out}: a file, not a directory; give a directory to write the export into")
    from mdf_search.train.checkpoint import CheckpointError, export_checkpoint  # torch: only here

    try:
        path = export_checkpoint(checkpoint, out, dtype=dtype)
    except (FileNotFoundError, CheckpointError) as err:
        raise fail(str(err)) from None
    console.print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); load with mdf_search.train.checkpoint.load_exported"
    )


@app.command()
def plan(
    config: Annotated[
        Path | None, typer.Argument(help="trial YAML or search space (default: the tiny preset)")
    ] = None,
    gpus: Annotated[int, typer.Option(help="GPUs for the trial")] = 1,
    gpu_mem: Annotated[float, typer.Option("--gpu-mem", help="GiB per GPU")] = 80.0,
    nodes: Annotated[int, typer.Option(help="nodes the GPUs span")] = 1,
    sets: SetOption = None,
) -> None:
    """Per-GPU memory estimate (model states per ZeRO stage + activations): does the trial fit?"""
    _check_shape(gpus, nodes, gpu_mem)
    cfg = _trial_config(config, sets)
    result = plan_trial(cfg, gpus=gpus, gpu_mem_gb=gpu_mem, nodes=nodes)
    table = Table(
        title=f"{cfg.model.preset}: {gpus} GPU(s) x {gpu_mem:g} GiB, ZeRO-{cfg.optim.zero_stage}, "
        f"{cfg.optim.precision}, freeze={cfg.freeze.strategy}"
    )
    table.add_column("component")
    table.add_column("GiB per GPU", justify="right")
    for component, nbytes in result.rows:
        table.add_row(component, f"{nbytes / 2**30:.2f}")
    table.add_section()
    table.add_row(
        "[bold]total[/]", f"[bold]{result.total_gb:.2f}[/] of {result.usable_bytes / 2**30:.1f} usable"
    )
    console.print(table)
    console.print(f"trainable {result.trainable_params:,} of {result.total_params:,} parameters")
    if cfg.model.preset in ("11b", "1b"):
        needed = Table(
            title=f"GPUs of {gpu_mem:g} GiB needed ({cfg.model.preset}, ZeRO-{cfg.optim.zero_stage})"
        )
        for column in ("strategy", "trainable", "GPUs", "GiB per GPU"):
            needed.add_column(column, justify="right" if column != "strategy" else "left")
        labels = {"none": "full fine-tune", "mllm": "frozen LLM", "lora": "LoRA"}
        for row in plan_freeze_table(cfg, gpu_mem):
            fits = row.min_gpus is not None
            needed.add_row(
                labels.get(row.strategy, row.strategy),
                f"{row.plan.trainable_params:,}" if fits else "-",
                str(row.min_gpus) if fits else "> max",
                f"{row.plan.total_gb:.1f}" if fits else "-",
            )
        console.print(needed)
    if result.fits:
        console.print(f"[green]fits[/] on {gpus} x {gpu_mem:g} GiB")
    else:
        raise fail(f"does not fit: {result.reason}", code=1)


def _check_shape(gpus: int, nodes: int, gpu_mem: float) -> None:
    """``plan``'s --gpus, --nodes and --gpu-mem: whole GPUs spread evenly over nodes, a finite memory."""
    if not 1 <= gpus <= MAX_GPUS:
        raise fail(f"--gpus {gpus}: must be a whole number of GPUs from 1 to {MAX_GPUS}; write e.g. --gpus 8")
    if not 1 <= nodes <= min(gpus, MAX_NODES):
        raise fail(
            f"--nodes {nodes}: must be from 1 to --gpus ({gpus}), each node holding at least one GPU; "
            "write e.g. --gpus 16 --nodes 2"
        )
    if gpus % nodes:
        raise fail(
            f"--gpus {gpus} --nodes {nodes}: the GPUs must split evenly over the nodes; write e.g. "
            f"--gpus {nodes * math.ceil(gpus / nodes)} --nodes {nodes}"
        )
    if not math.isfinite(gpu_mem) or not 0 < gpu_mem <= MAX_GPU_MEM_GB:
        raise fail(
            f"--gpu-mem {gpu_mem}: must be a finite number of GiB per GPU above 0 and at most "
            f"{MAX_GPU_MEM_GB:g}; write e.g. --gpu-mem 80"
        )
