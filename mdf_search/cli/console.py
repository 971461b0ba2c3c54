"""Where the command line writes: the stdout and stderr consoles, the one error printer, and the line
printer for data.

Every rich ``Console`` of the package is made here; library code returns data or raises, and the
commands in ``mdf_search.cli`` print what it returned. An error is one paragraph on stderr that starts
with ``error:`` and ends the command with exit status 2 (a bad input or option) or 1 (the run itself
failed). Data shown on the terminal (names, paths, messages: anything read from a file or an argument)
goes through ``escape.terminal``: rich markup in it is printed as written and control characters are
shown, never run, so ``[/]``, ``[link=…]`` or an ANSI escape in a name cannot crash, hide or clear the
output.

Off a terminal (a pipe, a file, a CI log) no message is folded: both consoles soft-wrap (a line is
written whole, whatever its length), tables keep their layout at the console's width, and the widest
(``wide_console``) get ``PIPED_WIDTH`` columns. typer's usage errors (a bad choice, a missing argument)
are then printed by click as one plain ``Error: ...`` line instead of rich's folded box
(``HELP_MARKUP``).
"""

from __future__ import annotations

from typing import Literal

import typer
from rich.console import Console

from mdf_search.escape import terminal

console = Console()
err_console = Console(stderr=True)
for _console in (console, err_console):
    _console.soft_wrap = not _console.is_terminal  # the print default: off a terminal, lines are not folded
PIPED_WIDTH = 200  # a wide table sent to a pipe or file does not fold its ids into 80 columns
# typer's help and usage errors: rich panels on a terminal, click's plain unfolded lines off one.
HELP_MARKUP: Literal["rich"] | None = "rich" if err_console.is_terminal else None


def print_error(message: str) -> None:
    """``error: <message>`` on stderr; the message is data: printed as written (no markup, control
    characters shown, no line folding)."""
    err_console.print(f"[bold red]error:[/] {terminal(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print the error and return the exit that ends the command: ``raise fail(...)``."""
    print_error(message)
    return typer.Exit(code)


def say(template: str, *values: object, out: Console | None = None) -> None:
    """Print ``template`` (the command's own words, rich markup allowed) with each ``{}`` filled by a
    value made inert by ``escape.terminal``: ``say("report: {} and {}", md_path, html_path)``."""
    text = template.format(*(terminal(value) for value in values))
    (out or console).print(text, highlight=False, soft_wrap=True)


def wide_console() -> Console:
    """The stdout console on a terminal; at least ``PIPED_WIDTH`` columns wide when stdout is not one."""
    if console.is_terminal:
        return console
    return Console(width=max(console.width, PIPED_WIDTH), soft_wrap=True)
