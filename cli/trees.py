"""`entmtp trees`: list and show draft trees and tree banks, and build a bank from a calibration."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from entmtp.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="Draft trees shipped with entmtp or in JSON files.")


@app.command("show")
def trees_show(name: str = typer.Argument(..., help="A shipped tree or bank name, or a tree/bank JSON path.")) -> None:
    """Render a tree with its nodes per depth, or a bank with its trees and hulls."""
    from rich.console import Console

    from entmtp.schedule.bank import list_banks, load_bank
    from entmtp.trees.files import load_tree
    from entmtp.trees.render import render_bank, render_tree

    if name in list_banks() or (name.endswith(".json") and _is_bank_file(Path(name))):
        Console().print(render_bank(load_bank(name)))
        return
    Console().print(render_tree(load_tree(name)))


def _is_bank_file(path: Path) -> bool:
    """Its JSON `format` key says so (a tree file says entmtp-tree/1)."""
    from entmtp.jsonfile import read_json

    document = read_json(path, f"file {str(path)!r}")
    return isinstance(document, dict) and str(document.get("format", "")).startswith("entmtp-bank/")


@app.command("build")
def trees_build(
    calibration: Path = typer.Option(..., "--calibration", help="A file written by entmtp calibrate."),
    out: Path | None = typer.Option(None, "--out", help="Bank JSON (default: <model>-<heads>-<task>.json here)."),
    task: str | None = typer.Option(None, "--task", help="The task the bank is for (warns if the calibration is another's)."),
    name: str | None = typer.Option(None, "--name", help="Bank name (default <model>-<heads>-<task>)."),
    max_nodes: int = typer.Option(128, "--max-nodes", help="Largest tree grown (limited by the superset)."),
    bank_size: int = typer.Option(6, "--bank-size", help="Most trees in the bank."),
    rollout_prompts: int = typer.Option(8, "--rollout-prompts", help="Calibration prompts per bank tree for the "
                                        "self-rollout de-biasing (0 = skip; needs the model)."),
    model: str | None = typer.Option(None, "--model"),
    heads_path: str | None = typer.Option(None, "--heads", help="Heads file or folder the calibration was made with (default: the shipped ones)."),
) -> None:
    """Pareto tree bank (trees, hulls, calibration tables, cost curve, ladder) from a calibration."""
    from entmtp.schedule.bank import shipped_bank_name
    from entmtp.tune.build import build_bank, read_calibration
    from entmtp.tune.calibrate import self_rollout_with

    if max_nodes < 1 or bank_size < 1 or rollout_prompts < 0:
        raise UsageError("--max-nodes and --bank-size must be >= 1, --rollout-prompts >= 0")
    document = read_calibration(calibration)
    provenance = document["provenance"]
    if task is not None and task != provenance.get("task"):
        typer.echo(f"entmtp: warning: calibration {calibration} is for task {provenance.get('task')!r}, "
                   f"not {task!r}", err=True)
    bank_name = name or shipped_bank_name(provenance["model"]["name"], provenance["heads"]["kind"],
                                          task or provenance["task"])
    rollout = None
    if rollout_prompts:
        rollout = self_rollout_with(document, rollout_prompts, model, heads_path,
                                    log=lambda m: typer.echo(m, err=True))
    bank = build_bank(document, bank_name, max_nodes=max_nodes, bank_size=bank_size, self_rollout=rollout)
    path = out or Path(f"{bank_name}.json")
    path.write_text(json.dumps(bank, indent=1) + "\n", encoding="utf-8")
    best = bank["static_best"]
    typer.echo(f"wrote {path}: {len(bank['trees'])} trees "
               f"({', '.join(t['name'] for t in bank['trees'])}), static best {best}, "
               f"ladder {bank['ladder']['trees']} at {bank['ladder']['thresholds']}; recommended "
               f"{bank['recommended']['scheduler']}{':' + bank['recommended']['signal'] if bank['recommended']['signal'] else ''}"
               f" (modeled tok/s on the calibration steps: "
               + ", ".join(f"{k} {v:.1f}" for k, v in bank["calibration_rates"].items()) + ")")


@app.command("list")
def trees_list() -> None:
    """Names of the shipped trees."""
    from entmtp.schedule.bank import list_banks, load_bank
    from entmtp.trees.files import list_trees, load_tree

    for name in list_trees():
        tree = load_tree(name)
        typer.echo(f"{name}\t{tree.n_nodes - 1} nodes\tdepth {tree.max_depth}")
    for name in list_banks():
        bank = load_bank(name)
        typer.echo(f"{name}\tbank of {len(bank.trees)} trees\t"
                   f"{', '.join(t.name for t in bank.trees)} (static best {bank.trees[bank.static_best].name})")
