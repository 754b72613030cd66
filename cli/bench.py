"""`entmtp bench` and `entmtp bench-step`: speed and quality, every method and peer side by side."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from entmtp.errors import UsageError


def bench(
    task: str = typer.Option("humaneval", "--task", help="humaneval, sharegpt, gsm8k, litbench, a comma list, or all."),
    methods: str = typer.Option("ar,medusa,hydra,transformers,transformers-pld,llama-cpp",
                                "--methods", help="Comma list: ar, medusa, hydra, medusa@TREE, hydra@TREE; the tree-bank "
                                "methods entmtp, rate (the bank's recommended signal), rate-entropy, rate-accept, rate-confidence, "
                                "rate-probe, rate-all, rate-now, entropy, "
                                "static-best, "
                                "oracle (add @medusa for Medusa's bank); and the peers transformers, "
                                "transformers-pld, llama-cpp (skipped when not installed)."),
    model: str | None = typer.Option(None, "--model", help="Model name, folder or .gguf (default: the default model)."),
    data: Path | None = typer.Option(None, "--data", help="Your own JSONL for one task (its native record format); "
                                        "all its records are evaluated."),
    split: str | None = typer.Option(None, "--split", help="evaluation (default), calibration or all; not with "
                                     "--data (all its records are evaluated)."),
    limit: int | None = typer.Option(None, "--limit", help="First N prompts of the split per task."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap intervals."),
    dtype: str | None = typer.Option(None, "--dtype", help="bf16 (default), fp32 (default with --exact-check), "
                                     "q4_1, q8_0, q4_1-fp32, q8_0-fp32 (quantized weights, see entmtp run --help)."),
    device: str = typer.Option("cpu", "--device"),
    exact_check: bool = typer.Option(False, "--exact-check", help="Compare every method's tokens with ar's "
                                     "(fp32 unless --dtype says otherwise)."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for results.jsonl, summary.json, summary.md."),
    resume: bool = typer.Option(False, "--resume", help="Continue the results.jsonl in --out."),
    plot: bool = typer.Option(False, "--plot", help="Also write PNG plots (needs matplotlib)."),
    analysis: bool = typer.Option(False, "--analysis", help="Also write analysis.md/json: Pearson r of each "
                                  "signal with accepted length, tree share, schedulers vs the oracle, goals."),
    cost_curve: Path | None = typer.Option(None, "--cost-curve", help="Bank methods: derive each task's bank on "
                                           "this cost-curve file instead of this machine's (measured on first use, "
                                           "then cached)."),
    heads: str | None = typer.Option(None, "--heads", help="KIND=PATH[,KIND=PATH]: these heads for the methods "
                                     "of that kind (hydrapp=runs/x/heads: hydrapp, hydrapp@TREE, BANK@hydrapp) "
                                     "instead of the shipped ones."),
) -> None:
    """Speed and quality of every method and peer on the benchmark tasks, side by side."""
    from rich.console import Console

    from entmtp.bench.config import BenchConfig, parse_heads, parse_methods, parse_tasks
    from entmtp.bench.run import run_bench
    from entmtp.bench.summary import print_summary

    if data is not None and split is not None:
        raise UsageError("--split does not go with --data: all the records of your own data are evaluated")
    split = split or "evaluation"
    if cost_curve is not None:
        from entmtp.bench.contenders import BANK_METHODS, parse_method
        from entmtp.tune.loading import check_cost_option

        if not any(parse_method(m.strip())[0] in BANK_METHODS for m in methods.split(",") if m.strip()):
            raise UsageError("--cost-curve goes with bank methods (entmtp, entropy, rate..., static-best, oracle); "
                             "--methods has none")
        check_cost_option(str(cost_curve))
    cfg = BenchConfig(tasks=parse_tasks(task), methods=parse_methods(methods, exact_check), out=out, model=model,
                      data=data, split=split, limit=limit, max_new_tokens=max_new_tokens, seed=seed,
                      dtype=dtype or ("fp32" if exact_check else "bf16"), device=device,
                      exact_check=exact_check, resume=resume, plot=plot, analysis=analysis, cost_curve=cost_curve,
                      heads=parse_heads(heads))
    console = Console(stderr=True)
    summary = run_bench(cfg, console)
    # Piped output gets a wide table rather than rich's 80-column wrapping.
    print_summary(summary, Console(width=None if sys.stdout.isatty() else 160))
    typer.echo(f"wrote {out / 'results.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'}", err=True)


def bench_step(
    model: str | None = typer.Option(None, "--model"),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp32, or quantized weights (q4_1, q8_0, ...)."),
    new_tokens: int = typer.Option(64, "--new-tokens", help="Decode steps per plain-decoding run."),
    repeats: int = typer.Option(5, "--repeats", help="Interleaved rounds per measurement; medians are reported."),
    tree_nodes: str | None = typer.Option(None, "--tree-nodes", help="Tree sizes of the speculative cost curve, "
                                          "a comma list (0 = root-only; default 0,1,2,4,8,16,32,64,128)."),
    no_peers: bool = typer.Option(False, "--no-peers", "--no-transformers",
                                  help="Skip transformers and llama.cpp."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
) -> None:
    """This machine's step costs: floor, plain decoding vs peers, prefill, and the speculative cost curve."""
    from entmtp.bench.step import TREE_NODES, run_step_bench

    if new_tokens < 2 or repeats < 1:
        raise UsageError("--new-tokens must be >= 2 and --repeats >= 1")
    try:
        nodes = TREE_NODES if tree_nodes is None else tuple(int(n) for n in tree_nodes.split(","))
    except ValueError:
        raise UsageError(f"--tree-nodes must be a comma list of node counts, not {tree_nodes!r}") from None
    if not nodes or min(nodes) < 0 or max(nodes) > 256:
        raise UsageError("--tree-nodes must be between 0 and 256")
    if json_out is not None:
        from entmtp.outputs import check_output_file

        check_output_file(json_out, "--json")  # before minutes of timing, not after
    run_step_bench(model, dtype, new_tokens, repeats, with_peers=not no_peers, nodes=nodes, json_out=json_out)
