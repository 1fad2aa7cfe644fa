"""The CLI reference, generated from the typer app itself so that it cannot drift.

`python -m histosynth.cli.reference > docs/cli.md` (or `make docs`) rewrites `docs/cli.md`;
`tests/test_docs.py` fails when the file differs from what this module renders, the way
sqlite-utils keeps its CLI docs in step with `--help` through cog.
"""

from __future__ import annotations

from collections.abc import Iterator

import typer.main

HEADER = (
    "# Command-line reference\n\n"
    "Generated from the commands' own help by `python -m histosynth.cli.reference > docs/cli.md`"
    " (`make docs`); a test fails when this file is stale.\n"
)


def cli_reference() -> str:
    """Markdown with one section per command: its help, usage, arguments and options."""
    root = typer.main.get_command(_app())
    sections = [HEADER]
    for path, command in _leaf_commands(root, ("histosynth",)):
        sections.append(_section(path, command))
    return "\n".join(sections)


def _app() -> typer.Typer:
    from histosynth.cli import app

    return app


def _leaf_commands(group: object, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _section(path: tuple[str, ...], command: object) -> str:
    from typer import _click as click

    context = click.Context(command, info_name=" ".join(path))
    lines = [f"## {' '.join(path)}", "", (command.help or "").strip(), "", "```", command.get_usage(context)]
    lines.append("```")
    rows = []
    for parameter in command.params:
        if parameter.hidden:
            continue
        record = parameter.get_help_record(context)
        if record is None:  # arguments without help text
            record = (parameter.human_readable_name, "")
        names, help_text = record
        rows.append(f"| `{names}` | {_cell(help_text)} |")
    if rows:
        lines += ["", "| option | meaning |", "|---|---|", *rows]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    print(cli_reference(), end="")
