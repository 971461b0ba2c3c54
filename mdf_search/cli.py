"""The ``mdf-search`` command line. Rich output lives here (and in report/), never in library code."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mdf_search.config import ConfigError, TrialConfig

app = typer.Typer(
    name="mdf-search",
    help="Distributed ablation search over the MDF-MLLM fundus classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _mount_data_commands() -> None:
    from mdf_search.data.cli import data_app

    app.add_typer(
        data_app, name="data", help="Prepare manifests, generate synthetic data, splits and caches."
    )


_mount_data_commands()


@app.callback()
def _root() -> None:
    """Distributed ablation search over the MDF-MLLM fundus classifier."""


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="A trial parameter KEY=VALUE (repeatable), e.g. -s fusion.levels=13"),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set expects KEY=VALUE, but got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


@app.command("model-summary")
def model_summary(
    preset: Annotated[str, typer.Option(help="tiny | small | 1b | 11b")] = "tiny",
    fusion: Annotated[str | None, typer.Option(help="fused levels, e.g. 1234, 13 or none")] = None,
    injection: Annotated[str | None, typer.Option(help="none | concat | parallel")] = None,
    layer_map: Annotated[
        str | None, typer.Option("--map", help="shallow_early | deep_early | all | single | 1:3,2:8")
    ] = None,
    film: Annotated[str | None, typer.Option(help="FiLM placement, e.g. enc, none, enc1+enc2")] = None,
    freeze: Annotated[
        str | None, typer.Option(help="none | unet | mllm | mllm_except_xattn | vision_tower | lora")
    ] = None,
    sets: SetOption = None,
) -> None:
    """Modules, parameters, trainable parameters and fusion wiring (meta device: no weights needed)."""
    from mdf_search.model.presets import get_preset
    from mdf_search.model.summary import summarize

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
        if preset in ("11b",) and "model.weights" not in flat:
            get_preset(preset)
            flat["model.weights"] = "(not needed: summary on the meta device)"
        cfg = TrialConfig.from_flat(flat, source="model-summary")
    except ConfigError as err:
        raise fail(str(err)) from None
    summary = summarize(cfg)
    table = Table(title=f"MDF-MLLM [{cfg.model.preset}] freeze={cfg.freeze.strategy}")
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


def _storage_path(storage: str) -> str:
    """Local paths become absolute (Ray requires it); URIs (s3://, gs://) pass through."""
    from pathlib import Path

    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def _trial_config(config: Path | None, sets: list[str] | None, *, meta_weights: bool = False) -> TrialConfig:
    from mdf_search.model.presets import get_preset
    from mdf_search.yamlio import read_trial_yaml

    try:
        flat: dict[str, object] = read_trial_yaml(config) if config else {}
        flat.update(parse_sets(sets))
        if meta_weights and get_preset(str(flat.get("model.preset", "tiny"))).pretrained_only:
            flat.setdefault("model.weights", "(meta: not loaded)")
        return TrialConfig.from_flat(flat, source=str(config) if config else "--set")
    except ConfigError as err:
        raise fail(str(err)) from None
    except ValueError as err:  # unknown preset
        raise fail(f"{config}: {err}") from None


@app.command()
def train(
    config: Annotated[
        Path, typer.Argument(help="trial YAML (flat keys) or a search space (its fixed: block)")
    ],
    storage: Annotated[str, typer.Option(help="where Ray Train writes the run (path or URI)")] = "runs",
    name: Annotated[str | None, typer.Option(help="run name (default: train-<config hash>-s<seed>)")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray address (default: RAY_ADDRESS or an embedded Ray)")
    ] = None,
    sets: SetOption = None,
) -> None:
    """Run one trial on a local (or given) Ray Train, with a progress bar: debug a config before sweeping it."""
    import threading
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    from mdf_search.cluster import connect
    from mdf_search.data.schema import DataError
    from mdf_search.train.builders import prepare_trial_data
    from mdf_search.train.progress import progress_actor
    from mdf_search.train.trainer import EpochLog, make_trainer

    cfg = _trial_config(config, sets)
    name = name or f"train-{cfg.config_hash()[:8]}-s{cfg.run.seed}"
    root = _storage_path(storage)
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
            state = actor.get.remote()
            import ray

            current = ray.get(state)
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
    if status != "completed":
        raise fail(f"trial {name} ended {status}: {metrics.get('message', '')}", code=1)
    console.print(f"checkpoint: {getattr(result, 'checkpoint', None)}")


def _fit(trainer: object) -> object:
    try:
        return trainer.fit()  # type: ignore[attr-defined]
    except Exception as err:  # surfaced to the CLI thread
        return err


def _print_trial_metrics(metrics: dict[str, object]) -> None:
    """The trial's metrics at the epoch validation selected (SCIENCE.md: test only reports, and every
    number shown for a trial comes from that epoch): its val/ and test/ values and training loss, from
    the report's ``selected/`` keys (``search.callbacks.selected_view``), then the run's throughput and
    memory. A report without a selected epoch (diverged or out of memory first) shows no val/test values."""
    from mdf_search.search.callbacks import SELECTED, selected_view
    from mdf_search.train.selection import Selection

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
    dtype: Annotated[str, typer.Option(help="fp32 | bf16")] = "fp32",
) -> None:
    """Consolidate a ZeRO checkpoint into one safetensors state dict that loads without DeepSpeed."""
    from mdf_search.train.checkpoint import export_checkpoint

    if dtype not in ("fp32", "bf16"):
        raise fail(f"--dtype must be fp32 or bf16, but got {dtype!r}")
    try:
        path = export_checkpoint(checkpoint, out, dtype=dtype)
    except FileNotFoundError as err:
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
    from mdf_search.train.memory import plan_freeze_table, plan_trial

    cfg = _trial_config(config, sets, meta_weights=True)
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


def _load_spec(path: Path) -> object:
    from mdf_search.search.space import SpecError, load_spec, validate_spec

    try:
        spec = load_spec(path)
    except SpecError as err:
        raise fail(str(err)) from None
    problems = validate_spec(spec)
    if problems:
        raise fail(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return spec


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="search-space YAML files")],
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="also run every arm's model at full preset size through one forward, loss and backward on a "
            "Collator batch, with fake tensors (no weights; seconds per 11b arm)",
        ),
    ] = False,
) -> None:
    """Check search-space files completely without running anything (exit 2 on any problem)."""
    from mdf_search.search.space import validate_files

    code, lines = validate_files(files)
    for line in lines:
        console.print(line, highlight=False)
    if deep and code == 0:
        code = _deep_check(files)
    raise typer.Exit(code)


def _deep_check(files: list[Path]) -> int:
    from mdf_search.search.deep import check_files

    code, _ = check_files(files, emit=lambda line: console.print(line, highlight=False))
    return code


def _run_study(
    spec: object,
    storage: str,
    address: str | None,
    resume: bool | None,
    report: bool,
    report_dir: str | None = None,
) -> None:
    from mdf_search.cluster import connect
    from mdf_search.report.ablation import report_command
    from mdf_search.report.leaderboard import leaderboard_command
    from mdf_search.report.live import LiveLeaderboard
    from mdf_search.search.runner import experiment_root, run_sweep

    connect(address, trial_slots=spec.resources.concurrent_trials)  # type: ignore[attr-defined]
    root = experiment_root(_storage_path(storage), spec.experiment)  # type: ignore[attr-defined]
    try:
        with LiveLeaderboard(root, spec, console=console) as view:
            outcome = run_sweep(spec, storage=_storage_path(storage), on_event=view.on_event, resume=resume)
    except (FileNotFoundError, FileExistsError) as err:
        raise fail(str(err)) from None
    console.print(f"results: {outcome.experiment_root} ({outcome.trials} trials finished this session)")
    leaderboard_command(
        outcome.experiment_root, top=10, by=None, where=None, group_by="arm", fmt="table", watch=False
    )
    if report and "://" not in outcome.experiment_root:
        out = report_dir or f"reports/{spec.experiment}"  # type: ignore[attr-defined]
        report_command(outcome.experiment_root, out)  # prints where the report went
    if outcome.stopped_reason:
        raise fail(f"sweep stopped: {outcome.stopped_reason}", code=1)


@app.command()
def sweep(
    space: Annotated[Path, typer.Argument(help="search-space YAML (see search_spaces/)")],
    storage: Annotated[str, typer.Option(help="results root: a path or an s3:// / gs:// URI")] = "runs",
    address: Annotated[
        str | None, typer.Option(help="Ray address (default: RAY_ADDRESS or an embedded Ray)")
    ] = None,
    fresh: Annotated[
        bool, typer.Option(help="refuse to continue an existing experiment of the same name")
    ] = False,
    report: Annotated[bool, typer.Option(help="write the ablation report when the sweep ends")] = True,
    report_dir: Annotated[
        str | None,
        typer.Option(
            help="where the report goes (default reports/<experiment>; in a Ray job use shared storage)"
        ),
    ] = None,
) -> None:
    """Run a study with a live leaderboard, then print the leaderboard and write the ablation report."""
    spec = _load_spec(space)
    _run_study(spec, storage, address, resume=False if fresh else None, report=report, report_dir=report_dir)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    space: Annotated[str, typer.Argument(help="search-space YAML, relative to the working dir")],
    address: Annotated[str, typer.Option(help="the cluster's job server, e.g. http://127.0.0.1:8265")],
    storage: Annotated[str | None, typer.Option(help="results root on shared or object storage")] = None,
    working_dir: Annotated[str, typer.Option(help="uploaded with cluster/runtime_env.yaml's excludes")] = ".",
) -> None:
    """Submit a study as a Ray job, stream its logs, and exit with the job's status (extra args go to sweep)."""
    from mdf_search.submit import submit_command

    raise typer.Exit(
        submit_command(space, address, storage, working_dir=working_dir, extra_args=list(ctx.args))
    )


@app.command()
def resume(
    experiment: Annotated[Path, typer.Argument(help="an experiment directory, e.g. runs/smoke")],
    address: Annotated[str | None, typer.Option(help="Ray address")] = None,
) -> None:
    """Continue a sweep after a crash or Ctrl-C: finished trials are kept, unfinished ones resume."""
    spec_file = experiment / "spec.yaml"
    if not spec_file.is_file():
        raise fail(
            f"{experiment}: no spec.yaml; is this an experiment directory written by `mdf-search sweep`?"
        )
    spec = _load_spec(spec_file)
    _run_study(spec, str(experiment.resolve().parent), address, resume=True, report=True)


@app.command()
def leaderboard(
    experiment: Annotated[str, typer.Argument(help="experiment directory or URI, e.g. runs/smoke")],
    top: Annotated[int, typer.Option(help="rows to show")] = 20,
    by: Annotated[str | None, typer.Option(help="metric to rank by (default: the study's)")] = None,
    where: Annotated[
        str | None, typer.Option(help='filter, e.g. \'status == "completed" and fusion.levels == "1234"\'')
    ] = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="arm: collapse seeds into mean ± 95% CI")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json | markdown")] = "table",
    watch: Annotated[bool, typer.Option(help="refresh every 2 s while a sweep runs elsewhere")] = False,
) -> None:
    """The leaderboard of an experiment, from its Parquet results only."""
    from mdf_search.report.leaderboard import leaderboard_command

    raise typer.Exit(leaderboard_command(experiment, top, by, where, group_by, fmt, watch))


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="experiment directory, e.g. runs/smoke")],
    out: Annotated[
        str | None, typer.Option(help="output directory (default: reports/<experiment name>)")
    ] = None,
) -> None:
    """The ablation report: report.md, a self-contained report.html, figures/ and tables/."""
    from mdf_search.report.ablation import report_command

    target = out or f"reports/{Path(experiment.rstrip('/')).name}"
    raise typer.Exit(report_command(experiment, target))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
