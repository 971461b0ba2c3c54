"""The ``mdf-search`` command line. Rich output lives here (and in report/), never in library code."""

from __future__ import annotations

import logging
import sys
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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
