"""`entmtp heads`: self-distil draft heads from the base model (train), and their draft vocabulary (shortlist)."""
from __future__ import annotations

from pathlib import Path

import typer

from entmtp.errors import EntmtpError, Interrupted, UsageError

from .choices import HeadKind, TrainDtype, TrainLoss

app = typer.Typer(no_args_is_help=True, help="Medusa, Hydra and Hydra++ draft heads.")


@app.command("train")
def heads_train(
    out: Path = typer.Option(..., "--out", help="Output folder (prompts.json, corpus.pt, checkpoint.pt, heads/): "
                             "new, empty, or an earlier run of the same options, which it resumes."),
    kind: HeadKind = typer.Option(HeadKind.medusa, "--head-kind", help="medusa, hydra or hydrapp (Hydra++: "
                                  "a prefix decoder layer before grounded Hydra heads)."),
    loss: TrainLoss = typer.Option(TrainLoss.teacher, "--loss", help="teacher: soft cross-entropy against the "
                                   "base model's distribution (Hydra++'s recipe); hard: against its greedy token."),
    model: str | None = typer.Option(None, "--model"),
    n_heads: int = typer.Option(4, "--n-heads", help="Heads: the tokens t+2 .. t+1+N."),
    n_layers: int = typer.Option(1, "--n-layers", help="Residual blocks per head."),
    sharegpt_prompts: int = typer.Option(600, "--sharegpt-prompts"),
    code_prompts: int = typer.Option(200, "--code-prompts"),
    gen_tokens: int = typer.Option(128, "--gen-tokens", help="Greedy continuation length per prompt (>= 2)."),
    steps: int = typer.Option(1500, "--steps", help="Training steps (a resumed run may raise it)."),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (> 0)."),
    seed: int = typer.Option(0, "--seed"),
    dtype: str = typer.Option("bf16", "--dtype", help="Base model dtype while generating the corpus "
                              "(fp32 is faster on CPUs without native bf16)."),
    corpus_batch: int = typer.Option(16, "--corpus-batch", help="Prompts generated together (part of the "
                                     "corpus: a batch trims its prompts to its shortest). Larger is faster "
                                     "where linears cost nearly the same for many rows (AMX)."),
    train_dtype: TrainDtype = typer.Option(TrainDtype.fp32, "--train-dtype", help="bf16: the heads' matmuls "
                                           "in bf16, weights and optimizer in fp32 (faster with native bf16)."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Self-distil heads from the base model's own greedy outputs.

    Resumable: after Ctrl-C, rerun the same command (with more --steps to train longer)."""
    from entmtp.heads.train import NOTHING_KEPT, TrainConfig, check_out_dir, kept_summary, train_heads
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.outputs import check_output_folder

    # Options and the output folder first: the corpus alone takes many minutes.
    cfg = TrainConfig(kind=kind.value, n_heads=n_heads, n_layers=n_layers, sharegpt_prompts=sharegpt_prompts,
                      code_prompts=code_prompts, gen_tokens=gen_tokens, steps=steps, batch_size=batch_size,
                      lr=lr, seed=seed, loss=loss.value, corpus_batch=corpus_batch,
                      train_dtype=train_dtype.value)
    torch_dtype, torch_device = parse_dtype(dtype), resolve_device(device)
    out = check_output_folder(out, "--out")
    check_out_dir(cfg, out)
    try:
        loaded = load_model(model, torch_dtype, torch_device)
        train_heads(loaded, cfg, out)
    except KeyboardInterrupt:
        kept = kept_summary(out)
        raise Interrupted(f"interrupted: {kept}; rerun the same command to "
                          f"{'start' if kept == NOTHING_KEPT else 'resume'}") from None
    typer.echo(f"wrote {out / 'heads'}")


@app.command("shortlist")
def heads_shortlist(
    kind: HeadKind | None = typer.Option(None, "--head-kind", help="Whose shipped heads: hydra, medusa or "
                                         "hydrapp (default hydra; not with --heads)."),
    heads_path: str | None = typer.Option(None, "--heads", help="Heads folder (default: the shipped ones)."),
    model: str | None = typer.Option(None, "--model"),
    size: int | None = typer.Option(None, "--size", help="Tokens in the list, from the drafting top-k (10) to the "
                                    "model's vocabulary size (default: by --coverage)."),
    coverage: float = typer.Option(0.97, "--coverage", help="Without --size: the fewest tokens (a multiple of "
                                   "256) covering this share of the training prompts' tokens."),
) -> None:
    """Store a draft vocabulary beside the heads: the tokens most frequent in their training prompts.

    `--draft-vocab heads` (run) or a `+dv` method (bench) then drafts over it."""
    import torch

    from entmtp.decode.speculative import DEFAULT_TOP_K
    from entmtp.heads import shortlist
    from entmtp.heads.shipped import shipped_heads
    from entmtp.model.loader import load_model

    if heads_path is not None and kind is not None:
        # --head-kind only picks which shipped heads; the heads in --heads are what they are.
        raise UsageError("--head-kind does not go with --heads (it picks the shipped heads; "
                         "--heads names the heads itself)")
    kind = HeadKind.hydra if kind is None else kind
    if not 0 < coverage <= 1:
        raise UsageError(f"--coverage must be in (0, 1], got {coverage}")
    if size is not None and size < DEFAULT_TOP_K:
        # The decoder drafts the top-k tokens of the list: a shorter one is refused at run time.
        raise UsageError(f"--size must be >= {DEFAULT_TOP_K} (the heads draft their top {DEFAULT_TOP_K} tokens "
                         f"from the list), got {size}")
    folder = None
    if heads_path is not None:
        # Before the model loads: the heads, their prompts and the file written beside them.
        folder = _given_heads_folder(heads_path)
        _training_prompts(folder)
    loaded = load_model(model, torch.bfloat16)
    folder = folder or shipped_heads(loaded, kind.value)
    if size is not None and size > loaded.config.vocab_size:
        raise UsageError(f"--size must be at most the model's vocabulary size {loaded.config.vocab_size}, "
                         f"got {size}")
    source, prompts = _training_prompts(folder)
    counts = shortlist.count_tokens((loaded.tokenizer.encode(p) for p in prompts), loaded.config.vocab_size)
    vocab = shortlist.choose(counts, size, coverage,
                             source=f"{len(prompts)} training prompts in {source.name} ({int(counts.sum())} tokens)")
    path = shortlist.save(vocab, folder)
    typer.echo(f"wrote {path}: {len(vocab.ids)} of {loaded.config.vocab_size} tokens, "
               f"{100 * vocab.coverage:.1f}% of the training prompts' tokens")


def _given_heads_folder(heads_path: str) -> Path:
    """The folder of --heads (a file's folder for upstream checkpoints), which must exist."""
    path = Path(heads_path).expanduser()
    if not path.exists():
        raise EntmtpError(f"--heads {path} does not exist")
    return path if path.is_dir() else path.parent


def _training_prompts(folder: Path) -> tuple[Path, list[str]]:
    """The training prompts recorded beside the heads in `folder` (and their file),
    once the draft_vocab.json to be written there is known writable."""
    from entmtp.heads.shortlist import FILE_NAME
    from entmtp.jsonfile import read_json
    from entmtp.outputs import check_output_file

    check_output_file(folder / FILE_NAME, "--heads")
    # Shipped heads record their prompts beside them; `heads train DIR` writes DIR/prompts.json.
    sources = [folder / "training_prompts.json", folder.parent / "prompts.json"]
    source = next((p for p in sources if p.is_file()), None)
    if source is None:
        raise EntmtpError(f"no training prompts found beside the heads ({' or '.join(map(str, sources))})")
    document = read_json(source)
    records = document.get("prompts") if isinstance(document, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("prompt"), str)
                                                for r in records):
        raise EntmtpError(f"{source}: expected {{\"prompts\": [{{\"prompt\": ...}}, ...]}}")
    return source, [r["prompt"] for r in records]
