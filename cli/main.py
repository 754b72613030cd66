"""The `entmtp` command line (installed as the package entmtp_cli).

Every command turns a user's mistake into one line on stderr and a non-zero exit
(2 for usage, 1 otherwise); `--debug` before the command shows tracebacks.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import typer
from typer.exceptions import TyperException

from entmtp.errors import EntmtpError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="entmtp: fast, exact Medusa/Hydra self-speculative decoding with entropy-guided trees.",
)
models_app = typer.Typer(no_args_is_help=True, help="Known, cached and imported models.")
trees_app = typer.Typer(no_args_is_help=True, help="Draft trees shipped with entmtp or in JSON files.")
kernels_app = typer.Typer(no_args_is_help=True, help="The C++/CUDA ops.")
app.add_typer(models_app, name="models")
app.add_typer(trees_app, name="trees")
heads_app = typer.Typer(no_args_is_help=True, help="Medusa and Hydra draft heads.")
app.add_typer(kernels_app, name="kernels")
app.add_typer(heads_app, name="heads")

_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _DEBUG["on"] = debug


def _err(message: str) -> None:
    typer.echo(f"entmtp: error: {message}", err=True)


# --------------------------------------------------------------------------- run
@app.command()
def run(
    prompt_file: Path = typer.Option(..., "--prompt-file", help=".txt: one prompt; .jsonl: one {\"prompt\": ...} per line."),
    model: str | None = typer.Option(None, "--model", help="HF folder, .gguf file, or a known name (default smollm2-135m-instruct)."),
    method: str = typer.Option("ar", "--method", help="Decoding method: ar, medusa, hydra or entmtp (a tree bank, "
                               "switched per step)."),
    bank: str | None = typer.Option(None, "--bank", help="entmtp: a shipped bank name or a bank JSON path "
                                    "(default: the shipped bank for --task and --head-kind)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="entmtp: rate (default), entropy, static-best, "
                                         "static (with --tree NAME of the bank) or oracle (analysis only)."),
    signal: str | None = typer.Option(None, "--signal", help="entmtp --scheduler rate: now (default: head 0 runs "
                                      "first and its top-1 probability picks the tree), entropy, accept, confidence "
                                      "or all (entropy x accept)."),
    task: str | None = typer.Option(None, "--task", help="entmtp: the task whose shipped bank to use without "
                                    "--bank (humaneval, sharegpt (default), gsm8k, litbench); with --bank, a "
                                    "warning if the bank was calibrated on another task."),
    head_kind: str = typer.Option("hydra", "--head-kind", help="entmtp without --bank: hydra or medusa."),
    heads: str | None = typer.Option(None, "--heads", help="Heads file or folder (default: the ones shipped for the model)."),
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
    from entmtp.decode.autoregressive import SamplingConfig
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.prompts import read_prompt_file
    from entmtp.decode.methods import DEFAULT_TASK, METHODS, MethodOptions, make_decoder

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {temperature}")
    if typical and temperature <= 0:
        raise UsageError("--typical needs --temperature > 0 (greedy verification is already exact)")
    torch_dtype = parse_dtype(dtype)
    torch_device = resolve_device(device)
    prompts = read_prompt_file(prompt_file)
    loaded = load_model(model, torch_dtype, torch_device)
    if method != "entmtp" and (bank or scheduler or signal):
        raise UsageError("--bank, --scheduler and --signal go with --method entmtp")
    if head_kind not in ("hydra", "medusa"):
        raise UsageError(f"--head-kind must be hydra or medusa, not {head_kind!r}")
    decoder = make_decoder(method, loaded, MethodOptions(heads=heads, tree=tree, typical=typical,
                                                         temperature=temperature, bank=bank, scheduler=scheduler,
                                                         signal=signal, head_kind=head_kind,
                                                         task=task or DEFAULT_TASK))
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


# ------------------------------------------------------------------------ bench
@app.command()
def bench(
    task: str = typer.Option("humaneval", "--task", help="humaneval, sharegpt, gsm8k, litbench, a comma list, or all."),
    methods: str = typer.Option("ar,medusa,hydra,transformers,transformers-pld,llama-cpp",
                                "--methods", help="Comma list: ar, medusa, hydra, medusa@TREE, hydra@TREE; the tree-bank "
                                "methods entmtp, rate, rate-accept, rate-confidence, rate-all, rate-now, entropy, "
                                "static-best, "
                                "oracle (add @medusa for Medusa's bank); and the peers transformers, "
                                "transformers-pld, llama-cpp (skipped when not installed)."),
    model: str | None = typer.Option(None, "--model", help="Model name, folder or .gguf (default: the default model)."),
    data: Path | None = typer.Option(None, "--data", help="Your own JSONL for one task (its native record format); "
                                        "all its records are evaluated."),
    split: str = typer.Option("evaluation", "--split", help="evaluation (default), calibration or all."),
    limit: int | None = typer.Option(None, "--limit", help="First N prompts of the split per task."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap intervals."),
    dtype: str | None = typer.Option(None, "--dtype", help="bf16 (default) or fp32 (default with --exact-check)."),
    device: str = typer.Option("cpu", "--device"),
    exact_check: bool = typer.Option(False, "--exact-check", help="Compare every method's tokens with ar's "
                                     "(fp32 unless --dtype says otherwise)."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for results.jsonl, summary.json, summary.md."),
    resume: bool = typer.Option(False, "--resume", help="Continue the results.jsonl in --out."),
    plot: bool = typer.Option(False, "--plot", help="Also write PNG plots (needs matplotlib)."),
    analysis: bool = typer.Option(False, "--analysis", help="Also write analysis.md/json: Pearson r of each "
                                  "signal with accepted length, tree share, schedulers vs the oracle, goals."),
) -> None:
    """Speed and quality of every method and peer on the benchmark tasks, side by side."""
    from rich.console import Console

    from entmtp.bench.run import (
        BenchConfig,
        parse_methods,
        parse_tasks,
        print_summary,
        run_bench,
    )

    cfg = BenchConfig(tasks=parse_tasks(task), methods=parse_methods(methods, exact_check), out=out, model=model,
                      data=data, split=split, limit=limit, max_new_tokens=max_new_tokens, seed=seed,
                      dtype=dtype or ("fp32" if exact_check else "bf16"), device=device,
                      exact_check=exact_check, resume=resume, plot=plot, analysis=analysis)
    console = Console(stderr=True)
    summary = run_bench(cfg, console)
    # Piped output gets a wide table rather than rich's 80-column wrapping.
    print_summary(summary, Console(width=None if sys.stdout.isatty() else 160))
    typer.echo(f"wrote {out / 'results.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'}", err=True)


# ------------------------------------------------------------------- bench-step
@app.command("bench-step")
def bench_step(
    model: str | None = typer.Option(None, "--model"),
    dtype: str = typer.Option("bf16", "--dtype"),
    new_tokens: int = typer.Option(64, "--new-tokens", help="Decode steps per run."),
    repeats: int = typer.Option(5, "--repeats", help="Runs per contender; medians are reported."),
    no_transformers: bool = typer.Option(False, "--no-transformers", help="Skip the transformers contender."),
) -> None:
    """ms per decode step of our model vs transformers, interleaved in one run."""
    from entmtp.bench.step import run_step_bench

    if new_tokens < 2 or repeats < 1:
        raise UsageError("--new-tokens must be >= 2 and --repeats >= 1")
    run_step_bench(model, dtype, new_tokens, repeats, with_transformers=not no_transformers)


# ----------------------------------------------------------------------- models
@models_app.command("list")
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


@models_app.command("import-gguf")
def models_import_gguf(gguf: Path = typer.Argument(..., help="A llama-architecture .gguf file."),
                       out: Path = typer.Argument(..., help="Folder to write (must not exist).")) -> None:
    """Convert a GGUF file into a Hugging Face-style folder entmtp can load."""
    from entmtp.model.gguf_import import convert_gguf

    if not gguf.is_file():
        raise EntmtpError(f"GGUF file {gguf} does not exist")
    if out.exists():
        raise EntmtpError(f"output folder {out} already exists")
    path = convert_gguf(gguf, out)
    typer.echo(f"wrote {path}")


# -------------------------------------------------------------------- calibrate
@app.command()
def calibrate(
    task: str | None = typer.Option(None, "--task", help="humaneval, sharegpt, gsm8k or litbench (its calibration split)."),
    heads_kind: str = typer.Option("hydra", "--heads", help="medusa or hydra."),
    recost: Path | None = typer.Option(None, "--recost", help="Only re-time the cost curve of this calibration "
                                       "file (in place), e.g. on a quiet machine."),
    heads_path: str | None = typer.Option(None, "--heads-path", help="Heads file or folder (default: shipped)."),
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
    from entmtp.tune.calibrate import recost_calibration, run_calibration, write_calibration
    from entmtp.model.loader import load_model, parse_dtype, resolve_device

    if recost is not None:
        from entmtp.schedule.bank import read_calibration

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
    document = run_calibration(loaded, heads_kind, task, heads_path=heads_path, limit=limit,
                               max_new_tokens=max_new_tokens, superset_nodes=superset_nodes, window=window,
                               repeats=repeats, dtype_name=dtype, log=lambda m: typer.echo(m, err=True))
    path = out or Path("runs/calibration") / f"{loaded.folder.name}-{heads_kind}-{task}.json"
    write_calibration(document, path)
    steps = document["steps"]
    typer.echo(f"wrote {path}: {len(steps['accepted'])} steps, mean accepted "
               f"{sum(steps['accepted']) / max(len(steps['accepted']), 1):.2f} with the superset tree, "
               f"{len(document['cost_curve'])} cost points")


# ------------------------------------------------------------------------ trees
@trees_app.command("show")
def trees_show(name: str = typer.Argument(..., help="A shipped tree or bank name, or a tree/bank JSON path.")) -> None:
    """Render a tree with its nodes per depth, or a bank with its trees and hulls."""
    from rich.console import Console

    from entmtp.schedule.bank import list_banks, load_bank
    from entmtp.trees.render import render_bank, render_tree
    from entmtp.trees.tree import load_tree

    if name in list_banks() or (name.endswith(".json") and _is_bank_file(Path(name))):
        Console().print(render_bank(load_bank(name)))
        return
    Console().print(render_tree(load_tree(name)))


def _is_bank_file(path: Path) -> bool:
    try:
        return '"entmtp-bank/' in path.read_text(encoding="utf-8")[:200]
    except (OSError, UnicodeDecodeError):
        return False


@trees_app.command("build")
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
    heads_path: str | None = typer.Option(None, "--heads-path"),
) -> None:
    """Pareto tree bank (trees, hulls, calibration tables, cost curve, ladder) from a calibration."""
    from entmtp.schedule.bank import build_bank, read_calibration, shipped_bank_name
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


@trees_app.command("list")
def trees_list() -> None:
    """Names of the shipped trees."""
    from entmtp.trees.tree import list_trees, load_tree

    from entmtp.schedule.bank import list_banks, load_bank

    for name in list_trees():
        tree = load_tree(name)
        typer.echo(f"{name}\t{tree.n_nodes - 1} nodes\tdepth {tree.max_depth}")
    for name in list_banks():
        bank = load_bank(name)
        typer.echo(f"{name}\tbank of {len(bank.trees)} trees\t"
                   f"{', '.join(t.name for t in bank.trees)} (static best {bank.trees[bank.static_best].name})")


# ------------------------------------------------------------------------ heads
@heads_app.command("train")
def heads_train(
    out: Path = typer.Option(..., "--out", help="Output folder (prompts.json, corpus.pt, checkpoint.pt, heads/)."),
    kind: str = typer.Option("medusa", "--kind", help="medusa or hydra."),
    model: str | None = typer.Option(None, "--model"),
    n_heads: int = typer.Option(4, "--heads"),
    n_layers: int = typer.Option(1, "--layers"),
    sharegpt_prompts: int = typer.Option(600, "--sharegpt-prompts"),
    code_prompts: int = typer.Option(200, "--code-prompts"),
    gen_tokens: int = typer.Option(128, "--gen-tokens", help="Greedy continuation length per prompt."),
    steps: int = typer.Option(1500, "--steps"),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    dtype: str = typer.Option("bf16", "--dtype", help="Base model dtype while generating the corpus "
                              "(fp32 is faster on CPUs without native bf16)."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Self-distil heads from the base model's own greedy outputs (resumable: rerun the same command)."""
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.heads.train import TrainConfig, train_heads

    cfg = TrainConfig(kind=kind, n_heads=n_heads, n_layers=n_layers, sharegpt_prompts=sharegpt_prompts,
                      code_prompts=code_prompts, gen_tokens=gen_tokens, steps=steps, batch_size=batch_size,
                      lr=lr, seed=seed)
    loaded = load_model(model, parse_dtype(dtype), resolve_device(device))
    train_heads(loaded, cfg, out)
    typer.echo(f"wrote {out / 'heads'}")


# ---------------------------------------------------------------------- kernels
@kernels_app.command("bench", add_help_option=False,
                     context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def kernels_bench(ctx: typer.Context) -> None:
    """tree_attention vs SDPA and token_entropy vs torch, side by side (--help for options)."""
    from entmtp.bench.kernels import main as bench_main

    bench_main(list(ctx.args))


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="entmtp", standalone_mode=False)
        return 0
    except typer.Exit as exc:  # --help and friends
        return exc.exit_code
    except typer.Abort:
        _err("aborted")
        return 130
    except TyperException as exc:
        # Typer's own parse errors; a bare `entmtp` asks for the help text.
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message())
            return 0
        _err(exc.format_message())  # one line instead of the usage box
        return 2
    except EntmtpError as exc:
        if _DEBUG["on"]:
            raise
        _err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line unless --debug
        if _DEBUG["on"] or "--debug" in args:
            raise
        _err(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
