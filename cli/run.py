"""`entmtp run`: generate text for a prompt or the prompts in a file, with any decoding method."""
from __future__ import annotations

import dataclasses
import json
import math
import sys

import typer

from entmtp.defaults import DEFAULT_HEAD_KIND, DEFAULT_TASK, DEFAULT_TREE, HEAD_KINDS, METHODS
from entmtp.errors import Interrupted, UsageError
from entmtp.model.registry import DEFAULT_MODEL

from .choices import HeadKind, Scheduler, Signal, value


def run(
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="One prompt on the command line (chat template "
                                      "applied unless --raw)."),
    prompt_file: str | None = typer.Option(None, "--prompt-file", help=".txt: one prompt; .jsonl: one "
                                           "{\"prompt\": ...} per line; - : one prompt from standard input."),
    model: str | None = typer.Option(None, "--model", help=f"HF folder, .gguf file, or a known name "
                                     f"(default {DEFAULT_MODEL})."),
    method: str = typer.Option("ar", "--method", help="Decoding method: ar, medusa, hydra, hydrapp "
                               "(Hydra++) or entmtp (a tree bank, switched per step)."),
    bank: str | None = typer.Option(None, "--bank", help="entmtp: a shipped bank name or a bank JSON path "
                                    "(default: the shipped bank for --task and --head-kind)."),
    scheduler: Scheduler | None = typer.Option(None, "--scheduler", help="entmtp: rate, entropy, static-best, "
                                               "static (with --tree NAME of the bank) or oracle (analysis only); "
                                               "default: the bank's recommended one (entmtp trees show BANK)."),
    signal: Signal | None = typer.Option(None, "--signal", help="entmtp, rate scheduler: now (head 0 runs first "
                                         "and its top-1 probability picks the tree), entropy, accept, confidence, "
                                         "probe or all (entropy x accept); default: the bank's recommended one "
                                         "(entmtp trees show BANK). Alone, it selects the rate scheduler."),
    task: str | None = typer.Option(None, "--task", help=f"entmtp: the task whose shipped bank to use without "
                                    f"--bank (humaneval, sharegpt, gsm8k, litbench; default {DEFAULT_TASK}); "
                                    f"with --bank, a warning if the bank was calibrated on another task."),
    head_kind: HeadKind | None = typer.Option(None, "--head-kind", help=f"entmtp without --bank: hydra, "
                                              "medusa or hydrapp "
                                              f"(default {DEFAULT_HEAD_KIND})."),
    cost_curve: str | None = typer.Option(None, "--cost-curve", help="entmtp: derive the bank on this cost-curve "
                                          "file (entmtp cost measure --out) instead of this machine's (measured on "
                                          "first use, then cached; $ENTMTP_COST_CURVE sets a default)."),
    heads: str | None = typer.Option(None, "--heads", help="medusa/hydra/hydrapp/entmtp: heads file "
                                     "or folder (default: "
                                     "the ones shipped for the model)."),
    draft_vocab: str | None = typer.Option(None, "--draft-vocab", help="medusa/hydra/hydrapp/entmtp: draft over a "
                                           "shortlist of the vocabulary: heads (the one stored with the heads), "
                                           "N (its N most frequent tokens) or off (default). Exact: only drafts "
                                           "change."),
    tree: str | None = typer.Option(None, "--tree", help=f"medusa/hydra: draft tree, a shipped name or a JSON "
                                    f"path (default {DEFAULT_TREE}); entmtp --scheduler static: a bank tree's name."),
    typical: bool = typer.Option(False, "--typical", help="medusa/hydra/entmtp with --temperature > 0: Medusa's "
                                 "typical acceptance. APPROXIMATE: faster, but does not preserve the model's "
                                 "distribution."),
    trace: bool = typer.Option(False, "--trace", help="With --json: add the per-step records (accepted length, tree, root entropy, seconds)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Stop after this many new tokens."),
    skip: int = typer.Option(0, "--skip", help="Skip the first N prompts of --prompt-file (to continue an "
                             "interrupted run)."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp32 (exactness checks), fp16; or quantized "
                              "weights (a GGUF's own blocks): q4_1 / q8_0 (bf16 and int8 activations, "
                              "approximate), q4_1-fp32 / q8_0-fp32 (fp32 activations, exact)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; > 0 samples."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling (with --temperature > 0)."),
    raw: bool = typer.Option(False, "--raw", help="Feed the prompt as is, without the chat template."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt on stdout instead of streamed text."),
) -> None:
    """Generate text for a prompt, or for the prompts in a file."""
    from entmtp.decode.methods import MethodOptions, make_decoder
    from entmtp.decode.types import SamplingConfig
    from entmtp.heads.shipped import draft_vocab_size
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.prompts import read_prompts
    from entmtp.schedule.spec import SchedulerSpec
    from entmtp.trees.files import load_tree
    from entmtp.tune.loading import check_cost_option, read_any_bank

    # Every flag is checked before the model loads (seconds), so a typo fails at once.
    _check_flags(method=method, bank=bank, scheduler=scheduler, signal=signal, task=task, head_kind=head_kind,
                 cost_curve=cost_curve, heads=heads, draft_vocab=draft_vocab, tree=tree, typical=typical,
                 trace=trace, as_json=as_json, max_new_tokens=max_new_tokens, skip=skip, temperature=temperature,
                 seed=seed, prompt_file=prompt_file)
    draft_vocab_size(draft_vocab)
    if scheduler is not None:
        SchedulerSpec(scheduler.value, value(signal))  # e.g. a signal given to a scheduler that takes none
    torch_dtype = parse_dtype(dtype)
    torch_device = resolve_device(device)
    # A missing or malformed bank or tree fails here, before the model loads.
    document = read_any_bank(bank)[0] if bank is not None else None
    if method == "entmtp":
        check_cost_option(cost_curve, document)
    if tree is not None and method in HEAD_KINDS:
        load_tree(tree)
    prompts = read_prompts(prompt, prompt_file)
    if skip >= len(prompts):
        raise UsageError(f"--skip {skip} leaves nothing: the prompt file holds {len(prompts)} prompt(s)")
    loaded = load_model(model, torch_dtype, torch_device)
    decoder = make_decoder(method, loaded, MethodOptions(heads=heads, tree=tree, typical=typical,
                                                         temperature=temperature, bank=bank,
                                                         scheduler=value(scheduler), signal=value(signal),
                                                         head_kind=value(head_kind) or DEFAULT_HEAD_KIND,
                                                         task=task or DEFAULT_TASK, draft_vocab=draft_vocab,
                                                         cost_curve=cost_curve))
    bank_task = getattr(getattr(decoder, "bank", None), "provenance", {}).get("task")
    if bank and task and bank_task and bank_task != task:
        typer.echo(f"entmtp: warning: bank {bank} was calibrated on task {bank_task!r}, not {task!r}", err=True)
    sampling = SamplingConfig(temperature=temperature, seed=seed)
    index = skip
    try:
        for index in range(skip, len(prompts)):
            _generate_one(decoder, loaded, prompts[index], index > skip, raw, as_json, trace, max_new_tokens,
                          sampling, dtype, torch_device)
    except KeyboardInterrupt:
        done = index - skip
        resume = f"; rerun with --skip {index} to continue" if len(prompts) > 1 else ""
        raise Interrupted(f"interrupted in prompt {index + 1} of {len(prompts)}: "
                          f"{done} prompt(s) finished above, the one in progress was dropped{resume}") from None


# Where each method-specific flag applies (the message when it is given elsewhere).
_GOES_WITH = {
    "--heads": "--method medusa, hydra, hydrapp or entmtp",
    "--tree": "--method medusa, hydra or hydrapp, or entmtp --scheduler static (a bank tree's name)",
    "--draft-vocab": "--method medusa, hydra, hydrapp or entmtp",
    "--typical": "--method medusa, hydra, hydrapp or entmtp (and --temperature > 0)",
    **{flag: "--method entmtp" for flag in ("--bank", "--scheduler", "--signal", "--task", "--head-kind",
                                            "--cost-curve")},
}


def _check_flags(*, method, bank, scheduler, signal, task, head_kind, cost_curve, heads, draft_vocab, tree, typical,
                 trace, as_json, max_new_tokens, skip, temperature, seed, prompt_file) -> None:
    """Usage mistakes, before anything loads: bad values, and flags the chosen
    method or scheduler would ignore (an error, never silently dropped)."""
    from entmtp.tasks import TASKS

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if skip < 0:
        raise UsageError(f"--skip must be >= 0, got {skip}")
    if skip and prompt_file is None:
        raise UsageError("--skip goes with --prompt-file (a file of several prompts)")
    if not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0, got {temperature}")
    if typical and temperature <= 0:
        raise UsageError("--typical needs --temperature > 0 (greedy verification is already exact)")
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    ignored = {"ar": ["--heads", "--tree", "--draft-vocab", "--typical"], "medusa": [], "hydra": [], "hydrapp": [],
               "entmtp": []}[method]
    if method != "entmtp":
        ignored += ["--bank", "--scheduler", "--signal", "--task", "--head-kind", "--cost-curve"]
    elif scheduler != Scheduler.static:
        ignored.append("--tree")  # a bank's trees come from the bank; --tree names one for the static scheduler
    given = {"--heads": heads is not None, "--tree": tree is not None, "--typical": typical,
             "--draft-vocab": draft_vocab not in (None, "off"), "--bank": bank is not None,
             "--scheduler": scheduler is not None, "--signal": signal is not None, "--task": task is not None,
             "--head-kind": head_kind is not None, "--cost-curve": cost_curve is not None}
    wrong = [flag for flag in ignored if given[flag]]
    if wrong:
        flag = wrong[0]
        chosen = f"--method {method}" + (f" --scheduler {scheduler.value}" if method == "entmtp" and scheduler
                                         else "")
        raise UsageError(f"{flag} goes with {_GOES_WITH[flag]}, not {chosen}")
    if method == "entmtp" and bank is not None and head_kind is not None:
        raise UsageError("--head-kind picks a shipped bank; with --bank the bank says which heads it needs")
    if scheduler == Scheduler.static and tree is None:
        raise UsageError("--scheduler static needs --tree NAME (one of the bank's trees)")
    if seed is not None and temperature <= 0:
        typer.echo("entmtp: warning: --seed has no effect in greedy decoding (--temperature 0)", err=True)
    if trace and not as_json:
        typer.echo("entmtp: warning: --trace adds the per-step records to --json output; without --json it "
                   "has no effect", err=True)


def _generate_one(decoder, loaded, prompt: str, separate: bool, raw: bool, as_json: bool, trace: bool,
                  max_new_tokens: int, sampling, dtype: str, torch_device) -> None:
    """Decode one prompt: stream its text (or write its JSON line), then one summary line on stderr."""
    tok = loaded.tokenizer
    ids = tok.encode(prompt) if raw else tok.encode_chat(prompt)
    stream = None
    if not as_json:
        if separate:
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
