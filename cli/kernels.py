"""`entmtp kernels`: bench the C++/CUDA ops against plain torch, and tune the bf16 GEMM choice."""
from __future__ import annotations

import typer

from entmtp.errors import Interrupted, UsageError

app = typer.Typer(no_args_is_help=True, help="The C++/CUDA ops.")


@app.command("bench")
def kernels_bench(
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option("bf16,fp32", "--dtype", help="Comma list of bf16, fp32, fp16."),
    quick: bool = typer.Option(False, "--quick", help="A few shapes only (CI smoke)."),
    # The bounds are entmtp.bench.kernels.MAX_* (not imported here: it pulls in torch).
    repeats: int = typer.Option(7, "--repeats", help="Interleaved rounds per row (1 to 1000)."),
    t_values: str | None = typer.Option(None, "--T", help="New tokens T per attention call (comma list, "
                                        "1 to 4096)."),
    l_values: str | None = typer.Option(None, "--L", help="Prefix lengths L (comma list, 0 to 131072)."),
    v_values: str | None = typer.Option(None, "--V", help="Vocabulary sizes V (comma list, 1 to 1048576)."),
    n_values: str | None = typer.Option(None, "--N", help="Logit rows N (comma list, 1 to 8192)."),
    skip: str | None = typer.Option(None, "--skip", help="attention or entropy."),
) -> None:
    """tree_attention vs SDPA and token_entropy vs torch, side by side (ratio = torch / ours)."""
    from entmtp.bench.kernels import bench_options, run

    # Every option is checked before the first timing, so a typo costs nothing.
    run(bench_options(device, dtype, quick, repeats, t_values, l_values, v_values, n_values, skip))


@app.command("tune")
def kernels_tune(
    model: str | None = typer.Option(None, "--model", help="Whose weight shapes (default: the default model)."),
    repeats: int = typer.Option(7, "--repeats", help="Interleaved rounds per shape and row count (>= 1)."),
) -> None:
    """Re-measure which bf16 GEMM (ours or oneDNN) wins per weight shape and row count here, and cache it.

    The choice is otherwise measured at first use; run this on a quiet machine."""
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    import torch

    from entmtp import machine
    from entmtp.model import linear
    from entmtp.model.loader import load_model
    from entmtp.outputs import check_output_file

    # The cache is what this command is for, and the writer ignores a read-only one
    # (a later run just measures again): refuse here, before minutes of timing.
    cache = check_output_file(linear.CHOICE._file(), "GEMM choice cache")
    loaded = load_model(model, torch.bfloat16)
    m = loaded.model
    layer_shapes = tuple(sorted({tuple(w.shape) for layer in m.layers
                                 for w in (layer.qkv, layer.o, layer.gate_up, layer.down)}))
    shapes = sorted(set(layer_shapes) | {tuple(m.lm_head.shape)})
    typer.echo(f"{machine.cpu_model()} ({machine.cpu_class()}, {torch.get_num_threads()} threads): "
               f"timing {len(shapes)} shapes and a layer's matrices together x {len(linear.BUCKETS)} row counts")
    try:
        timings = linear.tune(shapes, repeats, groups=[layer_shapes])
    except KeyboardInterrupt:
        # linear.tune records each winner as it is measured.
        raise Interrupted(f"interrupted: the row counts timed so far are cached in {cache}; rerun to time "
                          "them all") from None
    for key, seconds in timings.items():
        ours, dnn = seconds[linear.OURS], seconds[linear.ONEDNN]
        typer.echo(f"{key:>18}  ours {ours * 1e6:9.1f} us  oneDNN {dnn * 1e6:9.1f} us  -> "
                   f"{linear.OURS if ours <= dnn else linear.ONEDNN}")
    typer.echo(f"cached in {cache}")
