"""`entmtp cost`: this machine's step-cost curves (what a bank source is derived on)."""
from __future__ import annotations

import math
from pathlib import Path

import typer

from entmtp.defaults import DEFAULT_TASK
from entmtp.errors import EntmtpError, UsageError

from .choices import HeadKind

app = typer.Typer(no_args_is_help=True, help="The step-cost curves banks are derived on, one per machine and setup.")


@app.command("measure")
def cost_measure(
    model: str | None = typer.Option(None, "--model", help="Model name, folder or .gguf (default: the default model)."),
    head_kind: HeadKind | None = typer.Option(None, "--head-kind", help="Without --bank: whose heads' step to time "
                                              "(default hydra; with --bank, the bank says)."),
    heads: str | None = typer.Option(None, "--heads", help="Heads file or folder (default: the shipped ones)."),
    bank: str | None = typer.Option(None, "--bank", help="The bank source whose acceptance grows the timed trees "
                                    "(default: the shipped one for --task)."),
    task: str | None = typer.Option(None, "--task", help="Without --bank: the task of the shipped bank source "
                                    f"(default {DEFAULT_TASK})."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp32, fp16, q4_1, q8_0, q4_1-fp32 or q8_0-fp32."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    out: Path | None = typer.Option(None, "--out", help="Also write the curve to this file (for --cost-curve "
                                    "elsewhere)."),
    draft_vocab: str | None = typer.Option(None, "--draft-vocab", help="Time drafting over this shortlist of "
                                           "the vocabulary: heads, N or off (default); a curve of its own."),
    budget: float = typer.Option(40.0, "--budget", help="Seconds for the timed rounds (fewer rounds, at least 3, "
                                 "when they would take longer)."),
) -> None:
    """Measure this machine's step cost now (under a minute) and cache it; every bank source
    used with this model, heads and dtype is then derived on it. The trees timed are grown
    from the bank's acceptance; what they cost depends on their size and depth only."""
    from entmtp.heads.shipped import draft_vocab_size, load_draft_vocab, load_model_heads
    from entmtp.jsonfile import write_json
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.outputs import check_output_file
    from entmtp.tasks import TASKS
    from entmtp.tune.loading import bank_document, read_any_bank
    from entmtp.tune.machine_cost import cache_file, measure_curve, points_summary, store_curve
    from entmtp.tune.source import is_source

    if not math.isfinite(budget) or budget <= 0:
        raise UsageError(f"--budget must be a positive number of seconds, got {budget}")
    if bank is not None and (head_kind is not None or task is not None):
        raise UsageError(f"{'--head-kind' if head_kind is not None else '--task'} picks a shipped bank source; "
                         "with --bank the bank says which heads and task")
    draft_vocab_size(draft_vocab)  # a bad value is a usage error before anything loads
    task = DEFAULT_TASK if task is None else task
    kind = (head_kind or HeadKind.hydra).value
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    torch_dtype, torch_device = parse_dtype(dtype), resolve_device(device)
    if out is not None:
        out = check_output_file(out, "--out")
    if bank is not None:
        document, where = read_any_bank(bank)
        if not is_source(document):
            raise UsageError(f"{where} is a built bank; --bank takes a bank source (entmtp trees build's output)")
    loaded = load_model(model, torch_dtype, torch_device)
    if bank is None:
        document, where = bank_document(loaded, None, kind, task)
        if not is_source(document):
            raise EntmtpError(f"{where} is a built bank, not a source: pass a bank source with --bank")
    loaded_heads = load_model_heads(loaded, document["provenance"]["heads"]["kind"], heads)
    vocab = load_draft_vocab(loaded, loaded_heads.kind, heads, draft_vocab)
    over = "" if vocab is None else f", drafting over {len(vocab.ids)} tokens"
    typer.echo(f"measuring the step cost of {loaded_heads.kind} heads in {dtype}{over} on this machine ...", err=True)
    curve = measure_curve(loaded, loaded_heads, document, top_k=document["provenance"]["heads"].get("top_k", 10),
                          draft_vocab=vocab, budget_s=budget)
    cached = store_curve(curve, torch_device)
    if out is not None:
        write_json(out, curve, indent=1)
    typer.echo(f"{curve['facts'].get('cpu') or curve['facts'].get('gpu')} ({curve['facts'].get('cpu_class', '')}, "
               f"{curve['facts']['threads']} threads), {curve['seconds']} s: {points_summary(curve['curve'])} ms")
    typer.echo((f"cached in {cached}" if cached else f"not cached ({cache_file(torch_device)} is not writable)")
               + (f"; wrote {out}" if out is not None else ""))


@app.command("list")
def cost_list(device: str = typer.Option("cpu", "--device", help="cpu or cuda.")) -> None:
    """The curves cached for this machine (fingerprint, model, heads, dtype, date)."""
    from entmtp.model.loader import resolve_device
    from entmtp.tune.machine_cost import cache_file, described_curves, points_summary

    torch_device = resolve_device(device)
    curves = described_curves(torch_device)
    typer.echo(f"{cache_file(torch_device)}: {len(curves)} curve(s)")
    for curve in curves:
        key = curve["key"]
        model, heads = key.get("model"), key.get("heads")
        typer.echo(f"  {model.get('name') if isinstance(model, dict) else model} "
                   f"{heads.get('kind') if isinstance(heads, dict) else heads} {key.get('dtype')}"
                   + (f" dv{key['draft_vocab']}" if key.get("draft_vocab") else "")
                   + f", {curve['date']}: {points_summary(curve['curve'], 6)} ms")
