"""`entmtp calibrate`: acceptance statistics of a task's calibration split (no timing:
a step's cost is measured per machine when a bank is used, entmtp.tune.machine_cost)."""
from __future__ import annotations

from pathlib import Path

import typer

from entmtp.errors import EntmtpError, Interrupted, UsageError

from .choices import HeadKind

DEFAULT_FOLDER = Path("runs/calibration")
DEFAULT_HEAD_KIND, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SUPERSET_NODES, DEFAULT_WINDOW = HeadKind.hydra, 96, 64, 4.0
DEFAULT_DTYPE, DEFAULT_DEVICE = "bf16", "cpu"


def calibrate(
    task: str | None = typer.Option(None, "--task", help="humaneval, sharegpt, gsm8k or litbench "
                                    "(its calibration split)."),
    head_kind: HeadKind | None = typer.Option(None, "--head-kind", help="Which heads: hydra, medusa or "
                                              "hydrapp "
                                              "(default hydra)."),
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
                                              f"with, by a rank prior (>= 2, default {DEFAULT_SUPERSET_NODES}); "
                                              "the shipped trees' nodes are added (64 -> 82)."),
    window: float | None = typer.Option(None, "--window", help="EMA window W in steps (beta = 1 - 1/W), >= 1 "
                                        f"(default {DEFAULT_WINDOW:g})."),
    dtype: str | None = typer.Option(None, "--dtype", help=f"Model dtype (default {DEFAULT_DTYPE})."),
    device: str | None = typer.Option(None, "--device", help=f"cpu or cuda (default {DEFAULT_DEVICE})."),
) -> None:
    """Acceptance per (depth, rank) by signal bin, for entmtp trees build.

    Resumable: an interrupted run keeps the prompts it decoded; rerun the same command."""
    from entmtp.model.loader import parse_dtype, resolve_device
    from entmtp.outputs import check_output_file, check_output_folder

    if heads_path is not None and not Path(heads_path).exists():
        raise EntmtpError(f"--heads {heads_path} does not exist")
    if task is None:
        raise UsageError("--task is required")
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
                  superset_nodes=superset_nodes, window=window)
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
                                   dtype_name=dtype, partial=partial, records=records,
                                   log=lambda m: typer.echo(m, err=True))
        write_calibration(document, path)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(path, n_prompts, decoding)) from None
    discard_partial(partial)
    steps = document["steps"]
    typer.echo(f"wrote {path}: {len(steps['accepted'])} steps, mean accepted "
               f"{sum(steps['accepted']) / max(len(steps['accepted']), 1):.2f} with the superset tree "
               f"of {len(document['superset'])} nodes")


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
    then = "resume" if kept < n_prompts else f"write {path}"
    if not decoding:
        return (f"interrupted while loading the model: nothing new was written; {where} holds {kept} of "
                f"{n_prompts} calibration prompts decoded by an earlier run; rerun the same command to {then}")
    if kept < n_prompts:
        return (f"interrupted: {kept} of {n_prompts} calibration prompts are decoded and kept in {where}; "
                f"rerun the same command to {then}")
    return (f"interrupted after decoding: all {n_prompts} decoded prompts are kept in {where}; "
            f"rerun the same command to {then}")
