"""`entmtp trees`: list and show draft trees and tree banks, and build a bank from a calibration."""
from __future__ import annotations

from pathlib import Path

import typer

from entmtp.errors import EntmtpError, Interrupted, UsageError

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
    """Its JSON `format` key says so (a tree file says entmtp-tree/1). Read with the
    tree/bank guards (a regular file, its size, its nesting): a FIFO or /dev/zero
    named here is refused instead of read forever."""
    from entmtp.trees.files import read_document

    document = read_document(path, f"file {str(path)!r}")
    return isinstance(document, dict) and str(document.get("format", "")).startswith("entmtp-bank/")


@app.command("build")
def trees_build(
    calibration: Path = typer.Option(..., "--calibration", help="A file written by entmtp calibrate."),
    out: Path | None = typer.Option(None, "--out", help="Bank JSON, overwritten if it exists "
                                    "(default: <model>-<heads>-<task>.json here)."),
    task: str | None = typer.Option(None, "--task", help="The task the bank is for (warns if the calibration "
                                    "is another's)."),
    name: str | None = typer.Option(None, "--name", help="Bank name (default <model>-<heads>-<task>)."),
    max_nodes: int = typer.Option(128, "--max-nodes", help="Largest tree grown (limited by the superset)."),
    bank_size: int = typer.Option(6, "--bank-size", help="Most trees in the bank (1 to 32, what a bank file may "
                                  "hold)."),
    rollout_prompts: int = typer.Option(8, "--rollout-prompts", help="Calibration prompts per bank tree for the "
                                        "self-rollout de-biasing (0 = skip; needs the model)."),
    model: str | None = typer.Option(None, "--model", help="The model for the self-rollouts (not with "
                                     "--rollout-prompts 0)."),
    heads_path: str | None = typer.Option(None, "--heads", help="Heads file or folder the calibration was made "
                                          "with, for the self-rollouts (default: the shipped ones; not with "
                                          "--rollout-prompts 0)."),
) -> None:
    """Pareto tree bank (trees, hulls, calibration tables, cost curve, ladder) from a calibration.

    --out is overwritten if it exists."""
    from entmtp.jsonfile import write_json
    from entmtp.outputs import check_output_file
    from entmtp.schedule.bank import MAX_BANK_TREES, shipped_bank_name
    from entmtp.tasks import TASKS
    from entmtp.tune.build import build_bank, read_calibration
    from entmtp.tune.calibrate import self_rollout_with

    for option, value, least in (("--max-nodes", max_nodes, 1), ("--bank-size", bank_size, 1),
                                 ("--rollout-prompts", rollout_prompts, 0)):
        if value < least:
            raise UsageError(f"{option} must be >= {least}, got {value}")
    if bank_size > MAX_BANK_TREES:
        raise UsageError(f"--bank-size must be at most {MAX_BANK_TREES} (the most trees a bank file may hold), "
                         f"got {bank_size}")
    if rollout_prompts == 0:
        # Both only serve the self-rollouts, which --rollout-prompts 0 skips.
        unused = [option for option, value in (("--model", model), ("--heads", heads_path)) if value is not None]
        if unused:
            raise UsageError(f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} only used by the "
                             "self-rollouts, which --rollout-prompts 0 skips; drop "
                             f"{'it' if len(unused) == 1 else 'them'} or give --rollout-prompts N")
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    if name is not None and (not name.strip() or "/" in name or "\\" in name):
        raise UsageError(f"--name must be a bank name, not a path: {name!r}")
    if heads_path is not None and not Path(heads_path).exists():
        raise EntmtpError(f"--heads {heads_path} does not exist")
    document = read_calibration(calibration)
    provenance = document["provenance"]
    if task is not None and task != provenance.get("task"):
        typer.echo(f"entmtp: warning: calibration {calibration} is for task {provenance.get('task')!r}, "
                   f"not {task!r}", err=True)
    bank_name = name or shipped_bank_name(provenance["model"]["name"], provenance["heads"]["kind"],
                                          task or provenance["task"])
    # The default path comes from the calibration; checked before the self-rollouts (minutes).
    path = check_output_file(out or Path(f"{bank_name}.json"), "--out")
    if path.resolve() == calibration.resolve():
        raise UsageError(f"--out {path} is the calibration file itself; choose another path for the bank")
    try:
        rollout = None
        if rollout_prompts:
            rollout = self_rollout_with(document, rollout_prompts, model, heads_path,
                                        log=lambda m: typer.echo(m, err=True))
        bank = build_bank(document, bank_name, max_nodes=max_nodes, bank_size=bank_size, self_rollout=rollout)
        write_json(path, bank, indent=1)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: nothing was written (the bank is written to {path} only when "
                          "complete)") from None
    best, recommended = bank["static_best"], bank["recommended"]
    typer.echo(f"wrote {path}: {len(bank['trees'])} trees "
               f"({', '.join(t['name'] for t in bank['trees'])}), static best {best}, "
               f"ladder {bank['ladder']['trees']} at {bank['ladder']['thresholds']}; recommended "
               f"{recommended['scheduler']}{':' + recommended['signal'] if recommended['signal'] else ''}"
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
