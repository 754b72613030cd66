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


@app.command("tune")
def kernels_tune(
    model: str | None = typer.Option(None, "--model", help="Whose weight shapes (default: the default model)."),
    repeats: int = typer.Option(7, "--repeats", help="Interleaved rounds per shape and row count."),
) -> None:
    """Re-measure which bf16 GEMM (ours or oneDNN) wins per weight shape and row count here, and cache it.

    The choice is otherwise measured at first use; run this on a quiet machine."""
    import torch

    from entmtp import machine
    from entmtp.model import linear
    from entmtp.model.loader import load_model

    loaded = load_model(model, torch.bfloat16)
    m = loaded.model
    shapes = sorted({tuple(w.shape) for layer in m.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)}
                    | {tuple(m.lm_head.shape)})
    typer.echo(f"{machine.cpu_model()} ({machine.cpu_class()}, {torch.get_num_threads()} threads): "
               f"timing {len(shapes)} shapes x {len(linear.BUCKETS)} row counts")
    for key, seconds in linear.tune(shapes, repeats).items():
        ours, dnn = seconds[linear.OURS], seconds[linear.ONEDNN]
        typer.echo(f"{key:>18}  ours {ours * 1e6:9.1f} us  oneDNN {dnn * 1e6:9.1f} us  -> "
                   f"{linear.OURS if ours <= dnn else linear.ONEDNN}")
