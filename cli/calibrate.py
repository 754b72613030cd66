"""`entmtp calibrate`: acceptance tables and this machine's step-cost curve for a task."""
from __future__ import annotations

from pathlib import Path

import typer

from entmtp.errors import EntmtpError, Interrupted, UsageError

from .choices import HeadKind

DEFAULT_FOLDER = Path("runs/calibration")


def calibrate(
    task: str | None = typer.Option(None, "--task", help="humaneval, sharegpt, gsm8k or litbench "
                                    "(its calibration split)."),
    head_kind: HeadKind = typer.Option(HeadKind.hydra, "--head-kind", help="Which heads: hydra or medusa."),
    recost: Path | None = typer.Option(None, "--recost", help="Only re-time the cost curve of this calibration "
                                       "file (in place), e.g. on a quiet machine."),
    heads_path: str | None = typer.Option(None, "--heads", help="Heads file or folder (default: the shipped "
                                          "ones of --head-kind)."),
    model: str | None = typer.Option(None, "--model"),
    out: Path | None = typer.Option(None, "--out", help="Calibration JSON, overwritten if it exists (default "
                                    "runs/calibration/<model>-<heads>-<task>.json). Decoded prompts are kept in "
                                    "OUT.partial/ until it is written: after Ctrl-C the same command resumes."),
    limit: int | None = typer.Option(None, "--limit", help="First N calibration prompts."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens"),
    superset_nodes: int = typer.Option(64, "--superset-nodes", help="Nodes of the superset tree decoded with (>= 2)."),
    window: float = typer.Option(4.0, "--window", help="EMA window W in steps (beta = 1 - 1/W), >= 1."),
    repeats: int = typer.Option(7, "--repeats", help="Timed steps per tree for the cost curve."),
    dtype: str = typer.Option("bf16", "--dtype"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Acceptance per (depth, rank) by signal bin, and this machine's step-cost curve.

    Resumable: an interrupted run keeps the prompts it decoded; rerun the same command."""
    from entmtp.model.loader import parse_dtype, resolve_device
    from entmtp.outputs import check_output_file, check_output_folder

    if heads_path is not None and not Path(heads_path).exists():
        raise EntmtpError(f"--heads {heads_path} does not exist")
    if recost is not None:
        _recost(recost, out, heads_path, model, repeats)
        return
    if task is None:
        raise UsageError("--task is required (or --recost FILE)")
    from entmtp.model.loader import load_model
    from entmtp.tune.calibrate import (
        calibration_records,
        check_options,
        discard_partial,
        kept_prompts,
        partial_folder,
        run_calibration,
        write_calibration,
    )

    # Everything the user typed, the prompts and the output are checked before the
    # model loads: a calibration runs for many minutes.
    check_options(task, head_kind.value, limit=limit, max_new_tokens=max_new_tokens,
                  superset_nodes=superset_nodes, window=window, repeats=repeats)
    torch_dtype, torch_device = parse_dtype(dtype), resolve_device(device)
    records = calibration_records(task, limit)
    n_prompts = len(records)
    path = None
    if out is not None:
        path = check_output_file(out, "--out")
        if partial_folder(path).is_file():
            raise UsageError(f"{partial_folder(path)} is a file, in the way of the folder where --out keeps "
                             "decoded prompts; remove it")
    else:
        check_output_folder(DEFAULT_FOLDER, "the default --out folder")
    try:
        loaded = load_model(model, torch_dtype, torch_device)
        if path is None:  # the default name needs the model's
            path = check_output_file(DEFAULT_FOLDER / f"{loaded.folder.name}-{head_kind.value}-{task}.json", "--out")
        partial = partial_folder(path)
        document = run_calibration(loaded, head_kind.value, task, heads_path=heads_path, limit=limit,
                                   max_new_tokens=max_new_tokens, superset_nodes=superset_nodes, window=window,
                                   repeats=repeats, dtype_name=dtype, partial=partial, records=records,
                                   log=lambda m: typer.echo(m, err=True))
        write_calibration(document, path)
    except KeyboardInterrupt:
        kept = 0 if path is None else kept_prompts(partial_folder(path), n_prompts)
        if kept == 0:
            if path is not None:
                discard_partial(partial_folder(path))
            raise Interrupted("interrupted: nothing was written (no calibration prompt had finished)") from None
        where = partial_folder(path)
        if kept < n_prompts:
            raise Interrupted(f"interrupted: {kept} of {n_prompts} calibration prompts are decoded and kept in "
                              f"{where}; rerun the same command to resume") from None
        raise Interrupted(f"interrupted after decoding: all {n_prompts} decoded prompts are kept in {where}; "
                          f"rerun the same command to time the cost curve and write {path}") from None
    discard_partial(partial)
    steps = document["steps"]
    typer.echo(f"wrote {path}: {len(steps['accepted'])} steps, mean accepted "
               f"{sum(steps['accepted']) / max(len(steps['accepted']), 1):.2f} with the superset tree, "
               f"{len(document['cost_curve'])} cost points")


def _recost(recost: Path, out: Path | None, heads_path: str | None, model: str | None, repeats: int) -> None:
    """Re-time the cost curve of a calibration file, in place."""
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.outputs import check_output_file
    from entmtp.tune.build import read_calibration
    from entmtp.tune.calibrate import recost_calibration, write_calibration

    if out is not None:
        raise UsageError("--recost rewrites its FILE in place; --out does not go with it")
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    document = read_calibration(recost)
    check_output_file(recost, "--recost")  # it is rewritten: before the model loads, not after the timing
    provenance = document["provenance"]
    try:
        dtype, device = parse_dtype(str(provenance["dtype"])), resolve_device(str(provenance["device"]))
    except UsageError as error:  # not the user's flags: the file's own record
        raise EntmtpError(f"calibration file {recost}: its recorded dtype or device cannot be used ({error})") from None
    try:
        loaded = load_model(model, dtype, device)
        document = recost_calibration(loaded, document, heads_path, repeats, log=lambda m: typer.echo(m, err=True))
        write_calibration(document, recost)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: nothing was written ({recost} is unchanged)") from None
    typer.echo(f"rewrote the cost curve of {recost}: " + ", ".join(
        f"{p['nodes']}n/d{p['depth']}{'+peek' if p.get('peek') else ''} {p['ms']:.1f}"
        for p in document["cost_curve"][:8]) + " ms ...")
