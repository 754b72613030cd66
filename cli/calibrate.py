"""`entmtp calibrate`: acceptance tables and this machine's step-cost curve for a task."""
from __future__ import annotations

from pathlib import Path

import typer

from entmtp.errors import UsageError

from .choices import HeadKind


def calibrate(
    task: str | None = typer.Option(None, "--task", help="humaneval, sharegpt, gsm8k or litbench (its calibration split)."),
    head_kind: HeadKind = typer.Option(HeadKind.hydra, "--head-kind", help="Which heads: hydra or medusa."),
    recost: Path | None = typer.Option(None, "--recost", help="Only re-time the cost curve of this calibration "
                                       "file (in place), e.g. on a quiet machine."),
    heads_path: str | None = typer.Option(None, "--heads", help="Heads file or folder (default: the shipped ones of --head-kind)."),
    model: str | None = typer.Option(None, "--model"),
    out: Path | None = typer.Option(None, "--out", help="Calibration JSON (default runs/calibration/<model>-<heads>-<task>.json)."),
    limit: int | None = typer.Option(None, "--limit", help="First N calibration prompts."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens"),
    superset_nodes: int = typer.Option(64, "--superset-nodes", help="Nodes of the superset tree decoded with."),
    window: float = typer.Option(4.0, "--window", help="EMA window W in steps (beta = 1 - 1/W)."),
    repeats: int = typer.Option(7, "--repeats", help="Timed steps per tree for the cost curve."),
    dtype: str = typer.Option("bf16", "--dtype"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Acceptance per (depth, rank) by signal bin, and this machine's step-cost curve."""
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.tune.calibrate import recost_calibration, run_calibration, write_calibration

    if recost is not None:
        from entmtp.tune.build import read_calibration

        document = read_calibration(recost)
        provenance = document["provenance"]
        loaded = load_model(model, parse_dtype(provenance["dtype"]), resolve_device(provenance["device"]))
        document = recost_calibration(loaded, document, heads_path, repeats, log=lambda m: typer.echo(m, err=True))
        write_calibration(document, recost)
        typer.echo(f"rewrote the cost curve of {recost}: " + ", ".join(
            f"{p['nodes']}n/d{p['depth']}{'+peek' if p.get('peek') else ''} {p['ms']:.1f}"
            for p in document["cost_curve"][:8]) + " ms ...")
        return
    if task is None:
        raise UsageError("--task is required (or --recost FILE)")
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be positive, got {limit}")
    if max_new_tokens <= 0 or repeats <= 0:
        raise UsageError("--max-new-tokens and --repeats must be positive")
    if window < 1:
        raise UsageError(f"--window must be >= 1, got {window}")
    loaded = load_model(model, parse_dtype(dtype), resolve_device(device))
    document = run_calibration(loaded, head_kind.value, task, heads_path=heads_path, limit=limit,
                               max_new_tokens=max_new_tokens, superset_nodes=superset_nodes, window=window,
                               repeats=repeats, dtype_name=dtype, log=lambda m: typer.echo(m, err=True))
    path = out or Path("runs/calibration") / f"{loaded.folder.name}-{head_kind.value}-{task}.json"
    write_calibration(document, path)
    steps = document["steps"]
    typer.echo(f"wrote {path}: {len(steps['accepted'])} steps, mean accepted "
               f"{sum(steps['accepted']) / max(len(steps['accepted']), 1):.2f} with the superset tree, "
               f"{len(document['cost_curve'])} cost points")
