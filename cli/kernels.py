"""`entmtp kernels bench`: the C++/CUDA ops against plain torch."""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="The C++/CUDA ops.")


@app.command("bench", add_help_option=False,
          context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def kernels_bench(ctx: typer.Context) -> None:
    """tree_attention vs SDPA and token_entropy vs torch, side by side (--help for options)."""
    from entmtp.bench.kernels import main as bench_main

    bench_main(list(ctx.args))
