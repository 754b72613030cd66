"""`entmtp calibrate`: acceptance tables and this machine's step-cost curve for a task."""
from __future__ import annotations

from pathlib import Path

import typer

from entmtp.errors import EntmtpError, Interrupted, UsageError

from .choices import HeadKind

DEFAULT_FOLDER = Path("runs/calibration")


# Options --recost takes from its calibration file instead. Their Typer defaults are
# None, so that one given with its default value is still seen; the real defaults:
DEFAULT_HEAD_KIND, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SUPERSET_NODES, DEFAULT_WINDOW = HeadKind.hydra, 96, 64, 4.0
DEFAULT_DTYPE, DEFAULT_DEVICE = "bf16", "cpu"


def calibrate(
    task: str | None = typer.Option(None, "--task", help="humaneval, sharegpt, gsm8k or litbench "
                                    "(its calibration split)."),
    head_kind: HeadKind | None = typer.Option(None, "--head-kind", help="Which heads: hydra or medusa "
                                              "(default hydra)."),
    recost: Path | None = typer.Option(None, "--recost", help="Only re-time the cost curve of this calibration "
                                       "file (in place), e.g. on a quiet machine; takes --model, --heads and "
                                       "--repeats, the rest from the file."),
    heads_path: str | None = typer.Option(None, "--heads", help="Heads file or folder (default: the shipped "
                                          "ones of --head-kind)."),
    model: str | None = typer.Option(None, "--model"),
    out: Path | None = typer.Option(None, "--out", help="Calibration JSON, overwritten if it exists (default "
                                    "runs/calibration/<model>-<heads>-<task>.json). Decoded prompts are kept in "
                                    "OUT.partial/ until it is written: after Ctrl-C the same command resumes."),
    limit: int | None = typer.Option(None, "--limit", help="First N calibration prompts."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="New tokens per prompt "
                                              f"(default {DEFAULT_MAX_NEW_TOKENS})."),
    superset_nodes: int | None = typer.Option(None, "--superset-nodes", help="Nodes of the superset tree decoded "
                                              f"with (>= 2, default {DEFAULT_SUPERSET_NODES})."),
    window: float | None = typer.Option(None, "--window", help="EMA window W in steps (beta = 1 - 1/W), >= 1 "
                                        f"(default {DEFAULT_WINDOW:g})."),
    repeats: int = typer.Option(7, "--repeats", help="Timed steps per tree for the cost curve."),
    dtype: str | None = typer.Option(None, "--dtype", help=f"Model dtype (default {DEFAULT_DTYPE})."),
    device: str | None = typer.Option(None, "--device", help=f"cpu or cuda (default {DEFAULT_DEVICE})."),
) -> None:
    """Acceptance per (depth, rank) by signal bin, and this machine's step-cost curve.

    Resumable: an interrupted run keeps the prompts it decoded; rerun the same command."""
    from entmtp.model.loader import parse_dtype, resolve_device
    from entmtp.outputs import check_output_file, check_output_folder

    if recost is not None:
        # What a calibration file records; --recost re-times with the file's values, so
        # each of these would be silently ignored.
        ignored = [option for option, value in (
            ("--task", task), ("--head-kind", head_kind), ("--limit", limit), ("--max-new-tokens", max_new_tokens),
            ("--superset-nodes", superset_nodes), ("--window", window), ("--dtype", dtype), ("--device", device),
        ) if value is not None]
        if ignored:
            one = len(ignored) == 1
            raise UsageError(f"{', '.join(ignored)} {'does' if one else 'do'} not go with --recost (the calibration "
                             f"file records {'it' if one else 'them'})")
    if heads_path is not None and not Path(heads_path).exists():
        raise EntmtpError(f"--heads {heads_path} does not exist")
    if recost is not None:
        _recost(recost, out, heads_path, model, repeats)
        return
    if task is None:
        raise UsageError("--task is required (or --recost FILE)")
    head_kind = DEFAULT_HEAD_KIND if head_kind is None else head_kind
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    superset_nodes = DEFAULT_SUPERSET_NODES if superset_nodes is None else superset_nodes
    window = DEFAULT_WINDOW if window is None else window
    dtype = DEFAULT_DTYPE if dtype is None else dtype
    device = DEFAULT_DEVICE if device is None else device
    from entmtp.model.loader import load_model
    from entmtp.model.registry import resolve_model
    from entmtp.tune.calibrate import (
        calibration_records,
        check_options,
        check_partial,
        discard_partial,
        partial_folder,
        partial_key,
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
    known_key = partial_key(task=task, max_new_tokens=max_new_tokens, superset_nodes=superset_nodes,
                            window=window, dtype_name=dtype)
    path = None
    if out is not None:
        path = check_output_file(out, "--out")
        if partial_folder(path).is_file():
            raise UsageError(f"{partial_folder(path)} is a file, in the way of the folder where --out keeps "
                             "decoded prompts; remove it")
        # Other options than those of the prompts kept there: refused before the model loads
        # (the model and heads are compared once loaded).
        check_partial(partial_folder(path), known_key)
    else:
        check_output_folder(DEFAULT_FOLDER, "the default --out folder")
    decoding = False
    try:
        if path is None:  # the default name needs the model's (resolving a cached model is quick)
            folder = resolve_model(model)
            path = check_output_file(DEFAULT_FOLDER / f"{folder.name}-{head_kind.value}-{task}.json", "--out")
            check_partial(partial_folder(path), known_key)
            model = str(folder)
        loaded = load_model(model, torch_dtype, torch_device)
        partial = partial_folder(path)
        decoding = True
        document = run_calibration(loaded, head_kind.value, task, heads_path=heads_path, limit=limit,
                                   max_new_tokens=max_new_tokens, superset_nodes=superset_nodes, window=window,
                                   repeats=repeats, dtype_name=dtype, partial=partial, records=records,
                                   log=lambda m: typer.echo(m, err=True))
        write_calibration(document, path)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(path, n_prompts, decoding)) from None
    discard_partial(partial)
    steps = document["steps"]
    typer.echo(f"wrote {path}: {len(steps['accepted'])} steps, mean accepted "
               f"{sum(steps['accepted']) / max(len(steps['accepted']), 1):.2f} with the superset tree, "
               f"{len(document['cost_curve'])} cost points")


def _interrupted(path: Path | None, n_prompts: int, decoding: bool) -> str:
    """What a Ctrl-C left. `decoding`: the model had loaded, so this run may have kept
    prompts too; before that, whatever OUT.partial/ holds is an earlier run's."""
    from entmtp.tune.calibrate import discard_partial, kept_prompts, partial_folder

    if path is None:
        return "interrupted while preparing the model: nothing was written"
    where = partial_folder(path)
    kept = kept_prompts(where, n_prompts)
    if kept == 0:
        if not any(where.glob("prompt-*.pt")):
            discard_partial(where)  # at most its key: no prompt had finished
        return "interrupted: nothing was written (no calibration prompt had finished)"
    then = "resume" if kept < n_prompts else f"time the cost curve and write {path}"
    if not decoding:
        return (f"interrupted while loading the model: nothing new was written; {where} holds {kept} of "
                f"{n_prompts} calibration prompts decoded by an earlier run; rerun the same command to {then}")
    if kept < n_prompts:
        return (f"interrupted: {kept} of {n_prompts} calibration prompts are decoded and kept in {where}; "
                f"rerun the same command to {then}")
    return (f"interrupted after decoding: all {n_prompts} decoded prompts are kept in {where}; "
            f"rerun the same command to {then}")


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
