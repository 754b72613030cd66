"""`entmtp heads train`: self-distil draft heads from the base model."""
from __future__ import annotations

from pathlib import Path

import typer

from .choices import HeadKind

app = typer.Typer(no_args_is_help=True, help="Medusa and Hydra draft heads.")


@app.command("train")
def heads_train(
    out: Path = typer.Option(..., "--out", help="Output folder (prompts.json, corpus.pt, checkpoint.pt, heads/)."),
    kind: HeadKind = typer.Option(HeadKind.medusa, "--head-kind", help="medusa or hydra."),
    model: str | None = typer.Option(None, "--model"),
    n_heads: int = typer.Option(4, "--n-heads", help="Heads: the tokens t+2 .. t+1+N."),
    n_layers: int = typer.Option(1, "--n-layers", help="Residual blocks per head."),
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
    from entmtp.heads.train import TrainConfig, train_heads
    from entmtp.model.loader import load_model, parse_dtype, resolve_device

    cfg = TrainConfig(kind=kind.value, n_heads=n_heads, n_layers=n_layers, sharegpt_prompts=sharegpt_prompts,
                      code_prompts=code_prompts, gen_tokens=gen_tokens, steps=steps, batch_size=batch_size,
                      lr=lr, seed=seed)
    loaded = load_model(model, parse_dtype(dtype), resolve_device(device))
    train_heads(loaded, cfg, out)
    typer.echo(f"wrote {out / 'heads'}")
