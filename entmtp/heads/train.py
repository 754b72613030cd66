"""`entmtp heads train`: self-distillation of Medusa, Hydra or Hydra++ heads.

1. prompts: a recorded split of ShareGPT first turns plus standard-library code
   prompts (never HumanEval), written to prompts.json in the output folder;
2. corpus: the base model greedily continues each prompt (bf16, in batches of
   equal-length prompts) and its final hidden states [L, H] are kept;
3. train: the base is frozen; head i at position t learns the base's own next
   token at t + 2 + i: its distribution there (--loss teacher, Hydra++'s recipe:
   soft cross-entropy against the base's softmax at position t + 1 + i) or its
   greedy token (--loss hard). Hydra heads also read the embeddings of tokens
   t+1 .. t+1+i; Hydra++ heads read the prefix layer's output over positions 0..t,
   which trains with them (a step draws its positions from a few whole sequences);
4. report: per-head top-1 / top-5 accuracy on held-out sequences.
Checkpoints (heads, optimizer, step, RNG) are written every `checkpoint_every`
steps; rerunning the same command resumes from the last one. What an interrupted
run keeps: prompts.json as soon as the prompts are chosen, each finished batch of the
corpus in corpus.parts/ (joined into corpus.pt when all are done), checkpoint.pt at the
last checkpoint step.
Every file is written atomically, so Ctrl-C never leaves a torn one.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from entmtp.defaults import HEAD_KINDS
from entmtp.errors import EntmtpError, UsageError
from entmtp.heads.batches import batch_targets, draw_pairs, head_inputs, head_logits, head_loss, positions
from entmtp.heads.corpus import build_corpus, corpus_prompt_ids, saved_parts, select_prompts
from entmtp.heads.formats import save_heads
from entmtp.heads.modules import HydraHeads, MedusaHeads
from entmtp.heads.prefix import HydraPrefixHeads, PrefixShape
from entmtp.jsonfile import read_json, write_json
from entmtp.model.loader import LoadedModel
from entmtp.outputs import write_atomically

# teacher: soft cross-entropy against the base's distribution; hard: against its greedy token.
LOSSES = ("teacher", "hard")
TRAIN_DTYPES = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    kind: str = "medusa"
    n_heads: int = 4
    n_layers: int = 1
    sharegpt_prompts: int = 600
    code_prompts: int = 200
    gen_tokens: int = 128
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    held_out: float = 0.05
    seed: int = 0
    checkpoint_every: int = 100
    loss: str = "teacher"
    # Prompts generated together: where linears cost little more for 64 rows than for 16 (AMX:
    # 359 -> 535 generated tokens/s, 16 -> 64 prompts), a larger batch is faster. Part of the
    # corpus: a batch trims its prompts to its shortest (see corpus._equal_length_batches).
    corpus_batch: int = 16
    # bf16: the heads' matmuls (and the teacher's) run in bf16; the weights and the optimizer
    # stay fp32, softmaxes and losses are fp32. Evaluation is in fp32.
    train_dtype: str = "fp32"

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise UsageError(f"--head-kind must be one of {', '.join(HEAD_KINDS)}, not {self.kind!r}")
        if self.loss not in LOSSES:
            raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.train_dtype not in TRAIN_DTYPES:
            raise UsageError(f"--train-dtype must be one of {', '.join(TRAIN_DTYPES)}, not {self.train_dtype!r}")
        for name in ("n_heads", "n_layers", "steps", "batch_size", "checkpoint_every", "corpus_batch"):
            _check_int(name, getattr(self, name), 1)
        for name in ("sharegpt_prompts", "code_prompts"):
            _check_int(name, getattr(self, name), 0)
        if self.sharegpt_prompts + self.code_prompts == 0:
            raise UsageError("--sharegpt-prompts and --code-prompts are both 0: no training prompts")
        # Head 0 learns token t + 2, so a continuation needs two tokens to teach anything.
        _check_int("gen_tokens", self.gen_tokens, 2)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive finite number, got {self.lr}")
        if not (isinstance(self.held_out, (int, float)) and 0 <= self.held_out < 1):
            raise UsageError(f"held_out must be in [0, 1), got {self.held_out}")


def _flag(name: str) -> str:
    """The `entmtp heads train` option of a TrainConfig field (held_out has none: it is named as is)."""
    if name == "held_out":
        return "held_out"
    return "--head-kind" if name == "kind" else "--" + name.replace("_", "-")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{_flag(name)} must be an integer >= {minimum}, got {value}")


# Options that make the corpus (prompts.json, corpus.pt) and its held-out split: a folder's corpus
# serves any training with the same ones, so kinds and losses compare on one corpus (copy
# prompts.json and corpus.pt into a new --out). A resumed run may train longer (more --steps: the
# schedule is a function of the step); any other change would mix heads of two configurations.
CORPUS_OPTIONS = ("sharegpt_prompts", "code_prompts", "gen_tokens", "seed", "held_out", "corpus_batch")
_RESUMABLE_CHANGES = ("steps", "checkpoint_every")
# What runs recorded before an option existed did: a folder without "loss" was trained on hard
# labels, one without "corpus_batch" generated 16 prompts at a time, one without "train_dtype"
# trained in fp32.
_BEFORE_OPTION = {"loss": "hard", "corpus_batch": 16, "train_dtype": "fp32"}


def check_out_dir(cfg: TrainConfig, out_dir: Path) -> None:
    """Before the model loads: `out_dir` is new, empty, a corpus of these corpus options (a
    new training on it), or a checkpoint of this same configuration (which the run resumes);
    anything else is refused."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    prompts_file = out_dir / "prompts.json"
    if not prompts_file.exists():
        raise UsageError(f"--out {out_dir} is not empty and holds no prompts.json of an earlier "
                         "`entmtp heads train`; choose a new or empty folder")
    earlier = _read_prompts_file(prompts_file).get("config")
    if not isinstance(earlier, dict):
        raise EntmtpError(f"{prompts_file}: no 'config' recorded; delete the folder or choose another")
    now = dataclasses.asdict(cfg)
    _refuse_changes(out_dir, _BEFORE_OPTION | earlier, now, CORPUS_OPTIONS, "a corpus made with", "use it")
    if (out_dir / "checkpoint.pt").is_file():
        # Memory-mapped: only the config is read here, not the heads' and optimizer's tensors.
        state = _torch_load(out_dir / "checkpoint.pt", "delete it to train from step 0", weights_only=False,
                            mmap=True)
        # Checkpoints written before they recorded their config were trained with prompts.json's.
        trained = state.get("config") if isinstance(state, dict) else None
        trained = trained if isinstance(trained, dict) else earlier
        # All options, corpus ones too: a corpus copied in beside a checkpoint is not the one it saw.
        resumed = [k for k in now if k not in _RESUMABLE_CHANGES]
        _refuse_changes(out_dir, _BEFORE_OPTION | trained, now, resumed, "a run made with", "resume")


def _refuse_changes(out_dir: Path, earlier: dict, now: dict, names, what: str, to: str) -> None:
    changed = [k for k in names if k in earlier and earlier[k] != now[k]]
    if changed:
        was = ", ".join(f"{_flag(k)} {earlier[k]}" for k in changed)
        raise UsageError(f"--out {out_dir} holds {what} {was}; rerun with those options to {to}, "
                         "or choose another folder")


def _read_prompts_file(path: Path) -> dict:
    document = read_json(path)
    prompts = document.get("prompts") if isinstance(document, dict) else None
    if not isinstance(prompts, list) or not prompts or not all(
            isinstance(p, dict) and isinstance(p.get("prompt"), str) for p in prompts):
        raise EntmtpError(f"{path}: expected {{\"prompts\": [{{\"prompt\": ...}}, ...]}}")
    return document


def _torch_save(obj, path: Path) -> None:
    # Ctrl-C mid-save leaves the previous file, never a torn one.
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def _torch_load(path: Path, remedy: str, weights_only: bool, mmap: bool = False):
    try:
        return torch.load(path, weights_only=weights_only, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file, all meaning this
        raise EntmtpError(f"{path} cannot be read ({type(error).__name__}); {remedy}") from None


def checkpoint_step(out_dir: Path) -> int | None:
    """The step of the checkpoint in `out_dir`, or None when there is none (or it is unreadable)."""
    try:
        return int(torch.load(Path(out_dir) / "checkpoint.pt", weights_only=False, mmap=True)["step"])
    except Exception:  # noqa: BLE001 - missing or damaged alike: no step to report
        return None


NOTHING_KEPT = "nothing was written"
CORPUS_PARTS = "corpus.parts"  # the finished batches of a corpus still being generated


def kept_summary(out_dir: Path) -> str:
    """What an interrupted run left in `out_dir`, as the files on disk say."""
    out_dir = Path(out_dir)
    kept = [what for what, name in (("the prompts", "prompts.json"), ("the corpus", "corpus.pt"))
            if (out_dir / name).is_file()]
    parts = saved_parts(out_dir / CORPUS_PARTS)
    if parts and not (out_dir / "corpus.pt").is_file():
        kept.append(f"{parts} finished batch{'es' if parts > 1 else ''} of the corpus")
    step = checkpoint_step(out_dir)
    if step is not None:
        kept.append(f"the checkpoint at step {step}")
    if not kept:
        return NOTHING_KEPT
    if kept == ["the prompts"]:
        return f"only the prompts are in {out_dir} (no batch of the corpus was finished)"
    listed = kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + " and " + kept[-1]
    return f"{listed} {'is' if len(kept) == 1 else 'are'} in {out_dir}"


# --------------------------------------------------------------------- train
def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 10%.

    A function of the step alone, so a resumed run (even with more --steps)
    continues the schedule without scheduler state."""
    warmup = max(1, cfg.steps // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_heads(loaded: LoadedModel, cfg: TrainConfig, out_dir: Path, console: Console | None = None) -> dict:
    console = console or Console()
    out_dir = Path(out_dir)
    check_out_dir(cfg, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    prompts_file = out_dir / "prompts.json"
    model = {"name": loaded.folder.name, "hidden_size": loaded.config.hidden_size,
             "vocab_size": loaded.config.vocab_size}
    if prompts_file.is_file():
        document = _read_prompts_file(prompts_file)
        prompts = document["prompts"]
        # Older folders did not record the model; a corpus of another model would not fit the heads.
        earlier = document.get("model", model)
        if earlier != model:
            name = earlier.get("name") if isinstance(earlier, dict) else earlier
            raise UsageError(f"--out {out_dir} was made with model {name!r}, not {model['name']!r}; pass that "
                             "--model to resume, or choose another folder")
    else:
        prompts = select_prompts(cfg)
        corpus_prompt_ids(loaded, prompts, cfg.gen_tokens)  # before anything is written
        write_json(prompts_file, {"config": dataclasses.asdict(cfg), "model": model, "prompts": prompts}, indent=1)
    corpus_file = out_dir / "corpus.pt"
    if corpus_file.is_file():
        sequences = _torch_load(corpus_file, "delete it to generate the corpus again", weights_only=True)
        if not isinstance(sequences, list) or len(sequences) != len(prompts):
            raise EntmtpError(f"{corpus_file} does not match prompts.json; delete it to generate the corpus again")
    else:
        sequences = build_corpus(loaded, prompts, cfg.gen_tokens, console, batch_size=cfg.corpus_batch,
                                 parts=out_dir / CORPUS_PARTS)
        _torch_save(sequences, corpus_file)
    # The parts are in corpus.pt now (also after a stop between writing it and this).
    shutil.rmtree(out_dir / CORPUS_PARTS, ignore_errors=True)

    # Held-out split by whole sequences, so no held-out context is seen in training.
    n_eval = max(1, round(len(sequences) * cfg.held_out)) if len(sequences) > 1 else 0
    train_seqs, eval_seqs = sequences[n_eval:], sequences[:n_eval] or sequences
    train_pairs, eval_pairs = positions(train_seqs), positions(eval_seqs)
    if len(train_pairs) == 0:
        raise EntmtpError("the corpus has no training positions (every continuation ended at once); "
                          "raise --gen-tokens or add prompts")

    cfg_model = loaded.config
    embed = loaded.model.embed.float()
    lm_head = loaded.model.lm_head.float()
    # --train-dtype bf16: the frozen embedding and [V, H] LM head in bf16, cast once.
    bf16 = cfg.train_dtype == "bf16"
    step_embed, step_lm_head = (embed.bfloat16(), lm_head.bfloat16()) if bf16 else (embed, lm_head)
    sizes = (cfg.n_heads, cfg.n_layers, cfg_model.hidden_size, cfg_model.vocab_size, True)
    if cfg.kind == HydraPrefixHeads.kind:
        heads = HydraPrefixHeads(*sizes, prefix_shape=PrefixShape.of(cfg_model))
    else:
        heads = (MedusaHeads if cfg.kind == "medusa" else HydraHeads)(*sizes)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    # Training seconds so far, summed over the runs that reached the checkpoint, and the last
    # step's loss; None when an older checkpoint did not record them (a rerun of a finished run
    # trains nothing and would report its own few seconds and no loss).
    trained_seconds, last_loss = 0.0, None
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.is_file():
        state = _torch_load(checkpoint, "delete it to train from step 0", weights_only=False)
        try:
            heads.load_state_dict(state["heads"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            step = int(state["step"])
            trained_seconds, last_loss = state.get("seconds"), state.get("loss")
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise EntmtpError(f"{checkpoint} does not fit these heads; delete it to train from step 0") from None
        console.print(f"resuming from step {step}")

    started = time.perf_counter()
    seconds = trained_seconds  # what the heads' metadata reports: the last checkpoint's

    def seconds_so_far():
        # Milliseconds: a toy run's steps take less than the 0.05 s a 0.1 s rounding would zero.
        return None if trained_seconds is None else round(trained_seconds + time.perf_counter() - started, 3)

    with Progress(console=console) as progress:
        task = progress.add_task(f"training {cfg.kind} heads", total=cfg.steps, completed=step)
        while step < cfg.steps:
            pick = draw_pairs(train_pairs, cfg)
            loss = step_loss(heads, train_seqs, pick, cfg, cfg_model, step_lm_head, step_embed)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            optimizer.step()
            step += 1
            last_loss = float(loss.detach())
            progress.update(task, advance=1, description=f"training {cfg.kind} heads, loss {loss:.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                seconds = seconds_so_far()
                _torch_save({"heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                             "rng": torch.get_rng_state(), "step": step, "config": dataclasses.asdict(cfg),
                             "seconds": seconds, "loss": last_loss},
                            checkpoint)

    accuracy = evaluate(heads, eval_seqs, eval_pairs, lm_head, embed, cfg.n_heads, cfg_model)
    table = Table(title=f"{cfg.kind} heads on {len(eval_pairs)} held-out positions")
    table.add_column("head")
    table.add_column("predicts")
    table.add_column("top-1", justify="right")
    table.add_column("top-5", justify="right")
    for i, (top1, top5) in enumerate(accuracy):
        table.add_row(str(i), f"t+{i + 2}", f"{top1:.3f}", f"{top5:.3f}")
    console.print(table)
    metadata = {
        "base_model": {"folder": loaded.folder.name, "hidden_size": cfg_model.hidden_size,
                       "vocab_size": cfg_model.vocab_size},
        "training": {"config": dataclasses.asdict(cfg), "prompts_file": "prompts.json",
                     "n_train_positions": len(train_pairs), "n_eval_positions": len(eval_pairs),
                     "final_loss": last_loss,
                     "held_out_top1": [a[0] for a in accuracy], "held_out_top5": [a[1] for a in accuracy],
                     "seconds": seconds},
    }
    # Shipped weights in bf16 (the decode dtype) keep the files small; the
    # fp32 master copy stays in checkpoint.pt.
    save_heads(heads.to(torch.bfloat16), out_dir / "heads", metadata)
    return metadata


def step_loss(heads, sequences, pairs, cfg: TrainConfig, model_config, lm_head, embed) -> torch.Tensor:
    """The loss of one training batch (pairs [B, 2]). lm_head [V, H] and embed [V, H] are fp32,
    or bf16 for --train-dtype bf16: the heads then cast their fp32 weights to the input's dtype
    (differentiably), so every matmul runs in bf16 while the gradients reach the fp32 weights."""
    targets, paths, teacher_hidden = batch_targets(sequences, pairs, cfg.n_heads)
    hidden = head_inputs(heads, sequences, pairs, model_config).to(lm_head.dtype)  # [B, H]
    logits = head_logits(heads, hidden, paths, lm_head, embed)                     # [n, B, V]
    return head_loss(logits, targets, teacher_hidden, lm_head, cfg.loss)


@torch.no_grad()
def evaluate(heads, sequences, pairs, lm_head, embed, n_heads, model_config,
             batch_size: int = 256) -> list[tuple[float, float]]:
    """Per head: (top-1, top-5) accuracy of the base's own token t + 2 + i."""
    hits1 = torch.zeros(n_heads)
    hits5 = torch.zeros(n_heads)
    counts = torch.zeros(n_heads)
    for begin in range(0, len(pairs), batch_size):
        chunk = pairs[begin:begin + batch_size]
        targets, paths, _ = batch_targets(sequences, chunk, n_heads)
        hidden = head_inputs(heads, sequences, chunk, model_config)
        top5 = head_logits(heads, hidden, paths, lm_head, embed).topk(5, dim=-1).indices  # [n, B, 5]
        valid = targets >= 0
        hits1 += ((top5[..., 0] == targets) & valid).sum(1)
        hits5 += ((top5 == targets.unsqueeze(-1)).any(-1) & valid).sum(1)
        counts += valid.sum(1)
    counts = counts.clamp(min=1)
    return [(float(hits1[i] / counts[i]), float(hits5[i] / counts[i])) for i in range(n_heads)]
