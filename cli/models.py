"""`entmtp models`: the models entmtp knows, has cached, or imports from a GGUF file."""
from __future__ import annotations

from pathlib import Path

import typer

from entmtp.errors import EntmtpError

app = typer.Typer(no_args_is_help=True, help="Known, cached and imported models.")


@app.command("list")
def models_list() -> None:
    """Known models, whether their source is installed, and what is cached."""
    from rich.console import Console
    from rich.table import Table

    from entmtp.model.registry import list_models

    table = Table("name", "kind", "source", "cached", "path")
    for entry in list_models():
        if entry.get("kind") == "known":
            source = "installed" if entry.get("installed") else f"missing: {entry.get('install', '')}"
        else:
            source = "-"
        table.add_row(str(entry.get("name")), str(entry.get("kind", "")), source,
                      "yes" if entry.get("cached") else "no", str(entry.get("path") or ""))
    Console().print(table)


@app.command("import-gguf")
def models_import_gguf(gguf: Path = typer.Argument(..., help="A llama-architecture .gguf file."),
                       out: Path = typer.Argument(..., help="Folder to write (new or empty).")) -> None:
    """Convert a GGUF file into a Hugging Face-style folder entmtp can load."""
    from entmtp.model.gguf_import import convert_gguf
    from entmtp.outputs import check_output_folder

    if gguf.is_dir():
        raise EntmtpError(f"GGUF file {gguf} is a folder, not a file")
    if not gguf.is_file():
        raise EntmtpError(f"GGUF file {gguf} does not exist")
    # Before reading the GGUF: the conversion builds the folder beside OUT and renames it into place.
    check_output_folder(out, "OUT", empty=True)
    path = convert_gguf(gguf, out)
    typer.echo(f"wrote {path}")
