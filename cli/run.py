"""`entmtp run`: generate text for the prompts in a file, with any decoding method."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import typer

from entmtp.errors import UsageError

from .choices import HeadKind, Scheduler, Signal, value


def run(
    prompt_file: Path = typer.Option(..., "--prompt-file", help=".txt: one prompt; .jsonl: one {\"prompt\": ...} per line."),
    model: str | None = typer.Option(None, "--model", help="HF folder, .gguf file, or a known name (default smollm2-135m-instruct)."),
    method: str = typer.Option("ar", "--method", help="Decoding method: ar, medusa, hydra or entmtp (a tree bank, "
                               "switched per step)."),
    bank: str | None = typer.Option(None, "--bank", help="entmtp: a shipped bank name or a bank JSON path "
                                    "(default: the shipped bank for --task and --head-kind)."),
    scheduler: Scheduler | None = typer.Option(None, "--scheduler", help="entmtp: rate (default), entropy, "
                                               "static-best, static (with --tree NAME of the bank) or oracle "
                                               "(analysis only)."),
    signal: Signal | None = typer.Option(None, "--signal", help="entmtp --scheduler rate: now (default: head 0 runs "
                                         "first and its top-1 probability picks the tree), entropy, accept, "
                                         "confidence, probe or all (entropy x accept)."),
    task: str | None = typer.Option(None, "--task", help="entmtp: the task whose shipped bank to use without "
                                    "--bank (humaneval, sharegpt (default), gsm8k, litbench); with --bank, a "
                                    "warning if the bank was calibrated on another task."),
    head_kind: HeadKind = typer.Option(HeadKind.hydra, "--head-kind", help="entmtp without --bank: hydra or medusa."),
    heads: str | None = typer.Option(None, "--heads", help="Heads file or folder (default: the ones shipped for the model)."),
    draft_vocab: str | None = typer.Option(None, "--draft-vocab", help="medusa/hydra/entmtp: draft over a "
                                           "shortlist of the vocabulary: heads (the one stored with the heads), "
                                           "N (its N most frequent tokens) or off (default). Exact: only drafts "
                                           "change."),
    tree: str | None = typer.Option(None, "--tree", help="Draft tree: a shipped name or a JSON path (default mc_sim_7b_63)."),
    typical: bool = typer.Option(False, "--typical", help="With --temperature > 0: Medusa's typical acceptance. APPROXIMATE: faster, but does not preserve the model's distribution."),
    trace: bool = typer.Option(False, "--trace", help="With --json: add the per-step records (accepted length, tree, root entropy, seconds)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Stop after this many new tokens."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 or fp32 (use fp32 for exactness checks)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; > 0 samples."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling."),
    raw: bool = typer.Option(False, "--raw", help="Feed the prompt as is, without the chat template."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt on stdout instead of streamed text."),
) -> None:
    """Generate text for the prompts in a file."""
    from entmtp.decode.methods import DEFAULT_TASK, METHODS, MethodOptions, make_decoder
    from entmtp.decode.types import SamplingConfig
    from entmtp.heads.shipped import draft_vocab_size
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.prompts import read_prompt_file
    from entmtp.schedule.bank import load_bank
    from entmtp.schedule.spec import SchedulerSpec
    from entmtp.tasks import TASKS

    # Every flag is checked before the model loads (seconds), so a typo fails at once.
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {temperature}")
    if typical and temperature <= 0:
        raise UsageError("--typical needs --temperature > 0 (greedy verification is already exact)")
    draft_vocab_size(draft_vocab)
    if method in ("ar", "entmtp") and draft_vocab not in (None, "off"):
        # A bank's confidence bins and step costs were calibrated over the full vocabulary.
        raise UsageError("--draft-vocab goes with --method medusa or hydra (banks are calibrated without one)")
    if method != "entmtp" and (bank or scheduler or signal):
        raise UsageError("--bank, --scheduler and --signal go with --method entmtp")
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    if scheduler is not None:
        SchedulerSpec(scheduler.value, value(signal))  # e.g. a signal given to a scheduler that takes none
    if scheduler == Scheduler.static and tree is None:
        raise UsageError("--scheduler static needs --tree NAME (one of the bank's trees)")
    torch_dtype = parse_dtype(dtype)
    torch_device = resolve_device(device)
    if bank is not None:
        load_bank(bank)  # a missing or malformed bank file fails here, before the model loads
    prompts = read_prompt_file(prompt_file)
    loaded = load_model(model, torch_dtype, torch_device)
    decoder = make_decoder(method, loaded, MethodOptions(heads=heads, tree=tree, typical=typical,
                                                         temperature=temperature, bank=bank,
                                                         scheduler=value(scheduler), signal=value(signal),
                                                         head_kind=head_kind.value, task=task or DEFAULT_TASK,
                                                         draft_vocab=draft_vocab))
    bank_task = getattr(getattr(decoder, "bank", None), "provenance", {}).get("task")
    if bank and task and bank_task and bank_task != task:
        typer.echo(f"entmtp: warning: bank {bank} was calibrated on task {bank_task!r}, not {task!r}", err=True)
    sampling = SamplingConfig(temperature=temperature, seed=seed)
    tok = loaded.tokenizer

    for index, prompt in enumerate(prompts):
        ids = tok.encode(prompt) if raw else tok.encode_chat(prompt)
        stream = None
        if not as_json:
            if index:
                sys.stdout.write("\n\n")
            stream = tok.stream_decoder()

            def on_tokens(new_ids: list[int], stream=stream) -> None:
                text = "".join(stream.push(i) for i in new_ids if i not in loaded.eos_token_ids)
                sys.stdout.write(text)
                sys.stdout.flush()
        result = decoder.generate(ids, max_new_tokens, loaded.eos_token_ids, sampling,
                                  on_tokens=None if as_json else on_tokens)
        generated = [i for i in result.token_ids if i not in loaded.eos_token_ids]
        if as_json:
            record = {
                "prompt": prompt,
                "text": tok.decode(generated),
                "token_ids": result.token_ids,
                "n_tokens": result.n_tokens,
                "prompt_tokens": result.prompt_tokens,
                "steps": result.steps,
                "seconds": round(result.seconds, 6),
                "prefill_seconds": round(result.prefill_seconds, 6),
                "tokens_per_second": round(result.tokens_per_second, 3),
                "tokens_per_step": round(result.tokens_per_step, 4),
                "method": result.method,
                "stop_reason": result.stop_reason,
                "dtype": dtype,
                "device": str(torch_device),
            }
            if result.method.endswith("+typical"):
                record["approximate"] = True  # typical acceptance does not preserve the distribution
            if trace:
                record["trace"] = [dataclasses.asdict(r) for r in result.records]
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            sys.stdout.write(stream.flush())
            sys.stdout.flush()
        typer.echo(
            f"\n[{result.method}] {result.n_tokens} tokens in {result.seconds:.2f} s "
            f"({result.tokens_per_second:.1f} tok/s, {result.steps} steps, "
            f"{result.tokens_per_step:.2f} tokens/step, prefill {result.prefill_seconds * 1000:.0f} ms, "
            f"stop: {result.stop_reason})" + _tree_share_note(result)
            + (" [typical acceptance: approximate]" if result.method.endswith("+typical") else ""),
            err=True,
        )


def _tree_share_note(result) -> str:
    """' trees: n0 60%, n3d3 40%; scheduler 0.02% of step time' for runs that switch trees."""
    records = [r for r in result.records if r.scheduler_seconds is not None]
    if not records:
        return ""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.tree] = counts.get(r.tree, 0) + 1
    share = ", ".join(f"{name} {100 * n / len(records):.0f}%" for name, n in
                      sorted(counts.items(), key=lambda kv: -kv[1]))
    overhead = sum(r.scheduler_seconds for r in records) / max(sum(r.seconds for r in records), 1e-12)
    return f"; trees: {share}; scheduler {100 * overhead:.3f}% of step time"
