"""`entmtp heads train`: self-distillation of Medusa or Hydra heads.

1. prompts: a recorded split of ShareGPT first turns plus standard-library code
   prompts (never HumanEval), written to prompts.json in the output folder;
2. corpus: the base model greedily continues each prompt (bf16, in batches of
   equal-length prompts) and its final hidden states [L, H] are kept;
3. train: the base is frozen; head i at position t learns the base's own token
   t + 2 + i (Hydra heads also read the embeddings of tokens t+1 .. t+1+i);
4. report: per-head top-1 / top-5 accuracy on held-out sequences.
Checkpoints (heads, optimizer, step, RNG) are written every `checkpoint_every`
steps; rerunning the same command resumes from the last one. What an interrupted
run keeps: prompts.json as soon as the prompts are chosen, corpus.pt once the whole
corpus is generated (not part of it), checkpoint.pt at the last checkpoint step.
Every file is written atomically, so Ctrl-C never leaves a torn one.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from entmtp.errors import EntmtpError, UsageError
from entmtp.heads.corpora import load_sharegpt_first_turns, stdlib_code_prompts
from entmtp.heads.formats import save_heads
from entmtp.heads.modules import HydraHeads, MedusaHeads
from entmtp.jsonfile import read_json, write_json
from entmtp.model.loader import LoadedModel
from entmtp.outputs import write_atomically


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

    def __post_init__(self):
        if self.kind not in ("medusa", "hydra"):
            raise UsageError(f"--head-kind must be medusa or hydra, not {self.kind!r}")
        for name in ("n_heads", "n_layers", "steps", "batch_size", "checkpoint_every"):
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
    """The `entmtp heads train` option of a TrainConfig field."""
    return "--head-kind" if name == "kind" else "--" + name.replace("_", "-")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{_flag(name)} must be an integer >= {minimum}, got {value}")


# A resumed run may train longer (more --steps: the schedule is a function of the
# step); anything else would mix prompts, corpus or heads of two configurations.
_RESUMABLE_CHANGES = ("steps", "checkpoint_every")


def check_out_dir(cfg: TrainConfig, out_dir: Path) -> None:
    """Before the model loads: `out_dir` is new, empty, or an earlier run of this
    same configuration (which the run resumes); anything else is refused."""
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
    changed = [k for k in now if k not in _RESUMABLE_CHANGES and k in earlier and earlier[k] != now[k]]
    if changed:
        was = ", ".join(f"{_flag(k)} {earlier[k]}" for k in changed)
        raise UsageError(f"--out {out_dir} holds a run made with {was}; rerun with those options to resume, "
                         "or choose another folder")


def _read_prompts_file(path: Path) -> dict:
    document = read_json(path)
    prompts = document.get("prompts") if isinstance(document, dict) else None
    if not isinstance(prompts, list) or not all(isinstance(p, dict) and isinstance(p.get("prompt"), str)
                                                for p in prompts):
        raise EntmtpError(f"{path}: expected {{\"prompts\": [{{\"prompt\": ...}}, ...]}}")
    return document


def _torch_save(obj, path: Path) -> None:
    # Ctrl-C mid-save leaves the previous file, never a torn one.
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def _torch_load(path: Path, remedy: str, weights_only: bool):
    try:
        return torch.load(path, weights_only=weights_only)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file, all meaning this
        raise EntmtpError(f"{path} cannot be read ({type(error).__name__}); {remedy}") from None


def checkpoint_step(out_dir: Path) -> int | None:
    """The step of the checkpoint in `out_dir`, or None when there is none (or it is unreadable)."""
    try:
        return int(torch.load(Path(out_dir) / "checkpoint.pt", weights_only=False)["step"])
    except Exception:  # noqa: BLE001 - missing or damaged alike: no step to report
        return None


NOTHING_KEPT = "nothing was written"


def kept_summary(out_dir: Path) -> str:
    """What an interrupted run left in `out_dir`, as the files on disk say."""
    out_dir = Path(out_dir)
    kept = [what for what, name in (("the prompts", "prompts.json"), ("the corpus", "corpus.pt"))
            if (out_dir / name).is_file()]
    step = checkpoint_step(out_dir)
    if step is not None:
        kept.append(f"the checkpoint at step {step}")
    if not kept:
        return NOTHING_KEPT
    if kept == ["the prompts"]:
        return f"only the prompts are in {out_dir} (the corpus is saved when complete, so it starts over)"
    listed = kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + " and " + kept[-1]
    return f"{listed} {'is' if len(kept) == 1 else 'are'} in {out_dir}"


# ------------------------------------------------------------------- prompts
def select_prompts(cfg: TrainConfig) -> list[dict]:
    """A seeded sample of prompts; recorded in prompts.json (source and id of
    each) so benchmark splits can be checked against it."""
    rng = random.Random(cfg.seed)
    chosen = []
    if cfg.sharegpt_prompts:
        pool = load_sharegpt_first_turns()
        for pid, text in rng.sample(pool, min(cfg.sharegpt_prompts, len(pool))):
            chosen.append({"source": "sharegpt", "id": pid, "prompt": text[:2000]})
    if cfg.code_prompts:
        pool = stdlib_code_prompts()
        for pid, text in rng.sample(pool, min(cfg.code_prompts, len(pool))):
            chosen.append({"source": "stdlib", "id": pid, "prompt": text})
    if not chosen:
        raise EntmtpError("no training prompts selected (are the prompt sources empty?)")
    return chosen


# -------------------------------------------------------------------- corpus
def _chat_wrapper(tokenizer) -> tuple[list[int], list[int]]:
    """The token prefix and suffix every one-turn chat prompt shares (system and
    user header; end of turn and assistant header), found by comparing two."""
    a, b = tokenizer.encode_chat("alpha beta gamma"), tokenizer.encode_chat("7 + 3 = ?")
    n_prefix = 0
    while n_prefix < min(len(a), len(b)) and a[n_prefix] == b[n_prefix]:
        n_prefix += 1
    n_suffix = 0
    while n_suffix < min(len(a), len(b)) - n_prefix and a[-1 - n_suffix] == b[-1 - n_suffix]:
        n_suffix += 1
    return a[:n_prefix], a[len(a) - n_suffix:]


def _equal_length_batches(prompt_ids: list[list[int]], batch_size: int, wrapper) -> list[list[tuple[int, list[int]]]]:
    """Group prompts of similar length and trim each group's user text to the
    group's shortest, so a batch decodes with no padding (and no padding mask).
    Trimming only shortens the context a continuation starts from: the corpus
    stays the base model's own greedy text. Returns [(prompt index, ids)]."""
    prefix, suffix = wrapper
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        length = len(prompt_ids[group[0]])
        batch = []
        for i in group:
            ids = prompt_ids[i]
            if len(ids) > length:
                content = ids[len(prefix):len(ids) - len(suffix)]
                ids = prefix + content[:length - len(prefix) - len(suffix)] + suffix
            batch.append((i, ids))
        batches.append(batch)
    return batches


@torch.inference_mode()
def _generate_batch(model, prompts: torch.Tensor, gen_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation of B equal-length prompts [B, P] in one batch.
    Returns tokens [B, P + n] and final hidden states [B, P + n - 1, H] (the
    last token is never fed, and no head target needs its hidden state)."""
    batch, n_prompt = prompts.shape
    cache = model.new_cache(batch, n_prompt + gen_tokens)
    positions = torch.arange(n_prompt).expand(batch, -1)
    hidden, logits = model(prompts, positions, cache, 0, logits_rows=slice(-1, None))
    tokens, hiddens = [prompts], [hidden]
    next_token = logits[:, -1].argmax(-1, keepdim=True)                # [B, 1]
    for step in range(gen_tokens - 1):
        tokens.append(next_token)
        at = n_prompt + step
        hidden, logits = model(next_token, torch.full((batch, 1), at), cache, at)
        hiddens.append(hidden)
        next_token = logits[:, -1].argmax(-1, keepdim=True)
    tokens.append(next_token)
    return torch.cat(tokens, 1), torch.cat(hiddens, 1)


def corpus_prompt_ids(loaded: LoadedModel, prompts: list[dict], gen_tokens: int) -> list[list[int]]:
    """Each prompt's chat tokens (its last 512), checked to leave room for the continuation."""
    prompt_ids = [loaded.tokenizer.encode_chat(record["prompt"])[-512:] for record in prompts]
    context = loaded.config.max_position_embeddings
    longest = max(len(ids) for ids in prompt_ids)
    if longest + gen_tokens > context:
        raise UsageError(f"--gen-tokens {gen_tokens} plus the longest prompt ({longest} tokens) exceed "
                         f"the model's context of {context} tokens")
    return prompt_ids


def build_corpus(loaded: LoadedModel, prompts: list[dict], gen_tokens: int, console: Console,
                 batch_size: int = 16) -> list[dict]:
    """Per prompt: token ids (prompt + greedy continuation, cut after the first
    EOS), the index of the last prompt position, and the final hidden states
    [L - 1, H] (fp16 to keep the corpus small). Prompts decode in batches of
    equal length, which is what makes a large corpus affordable on a CPU."""
    tokenizer, model = loaded.tokenizer, loaded.model
    prompt_ids = corpus_prompt_ids(loaded, prompts, gen_tokens)
    eos = set(loaded.eos_token_ids)
    sequences: list[dict | None] = [None] * len(prompts)
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("generating continuations", total=len(prompts))
        for batch in _equal_length_batches(prompt_ids, batch_size, _chat_wrapper(tokenizer)):
            ids = torch.tensor([row for _, row in batch], device=model.device)
            tokens, hidden = _generate_batch(model, ids, gen_tokens)
            n_prompt = ids.shape[1]
            for row, (index, _) in enumerate(batch):
                full = tokens[row].tolist()
                cut = next((n_prompt + k + 1 for k, t in enumerate(full[n_prompt:]) if t in eos), len(full))
                sequences[index] = {"tokens": torch.tensor(full[:cut]), "start": n_prompt - 1,
                                    "hidden": hidden[row, :cut - 1].to(torch.float16).cpu()}
            progress.advance(task, len(batch))
    return sequences


def _positions(sequences: list[dict], n_heads: int) -> torch.Tensor:
    """[P, 2] (sequence, position) pairs whose head-0 target (t + 2) exists."""
    rows = []
    for s_index, seq in enumerate(sequences):
        last = len(seq["tokens"]) - 2
        for t in range(seq["start"], last):
            rows.append((s_index, t))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 2)


def _batch(sequences, pairs, n_heads, embed):
    """hidden [B, H] fp32, targets [n_heads, B] (-100 = none), path tokens [B, n_heads]."""
    hidden, targets, paths = [], [], []
    for s_index, t in pairs.tolist():
        seq = sequences[s_index]
        tokens = seq["tokens"]
        hidden.append(seq["hidden"][t].float())
        ahead = [int(tokens[t + 2 + i]) if t + 2 + i < len(tokens) else -100 for i in range(n_heads)]
        targets.append(ahead)
        # Tokens t+1 .. t+n_heads: the root and the drafts a Hydra head reads.
        paths.append([int(tokens[min(t + 1 + i, len(tokens) - 1)]) for i in range(n_heads)])
    return torch.stack(hidden), torch.tensor(targets).T, torch.tensor(paths)


def head_logits(heads, hidden, paths, lm_head, embed) -> torch.Tensor:
    """[n_heads, B, V] logits of every head at a batch of positions."""
    if isinstance(heads, MedusaHeads):
        return heads(hidden, lm_head)
    path_embeds = F.embedding(paths, embed)  # [B, n_heads, H]
    return torch.stack([heads.forward_paths(hidden, path_embeds[:, :i + 1], i, lm_head)
                        for i in range(heads.n_heads)])


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
        sequences = build_corpus(loaded, prompts, cfg.gen_tokens, console)
        _torch_save(sequences, corpus_file)

    # Held-out split by whole sequences, so no held-out context is seen in training.
    n_eval = max(1, round(len(sequences) * cfg.held_out)) if len(sequences) > 1 else 0
    train_seqs, eval_seqs = sequences[n_eval:], sequences[:n_eval] or sequences
    train_pairs, eval_pairs = _positions(train_seqs, cfg.n_heads), _positions(eval_seqs, cfg.n_heads)
    if len(train_pairs) == 0:
        raise EntmtpError("the corpus has no training positions (every continuation ended at once); "
                          "raise --gen-tokens or add prompts")

    cfg_model = loaded.config
    embed = loaded.model.embed.float()
    lm_head = loaded.model.lm_head.float()
    cls = MedusaHeads if cfg.kind == "medusa" else HydraHeads
    heads = cls(cfg.n_heads, cfg.n_layers, cfg_model.hidden_size, cfg_model.vocab_size, shared_lm_head=True)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.is_file():
        state = _torch_load(checkpoint, "delete it to train from step 0", weights_only=False)
        try:
            heads.load_state_dict(state["heads"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            step = int(state["step"])
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise EntmtpError(f"{checkpoint} does not fit these heads; delete it to train from step 0") from None
        console.print(f"resuming from step {step}")

    losses = []
    started = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task(f"training {cfg.kind} heads", total=cfg.steps, completed=step)
        while step < cfg.steps:
            pick = torch.randint(0, len(train_pairs), (cfg.batch_size,))
            hidden, targets, paths = _batch(train_seqs, train_pairs[pick], cfg.n_heads, embed)
            logits = head_logits(heads, hidden, paths, lm_head, embed)           # [n, B, V]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            progress.update(task, advance=1, description=f"training {cfg.kind} heads, loss {loss:.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _torch_save({"heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                             "rng": torch.get_rng_state(), "step": step}, checkpoint)

    accuracy = evaluate(heads, eval_seqs, eval_pairs, lm_head, embed, cfg.n_heads)
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
                     "final_loss": losses[-1] if losses else None,
                     "held_out_top1": [a[0] for a in accuracy], "held_out_top5": [a[1] for a in accuracy],
                     "seconds": round(time.perf_counter() - started, 1)},
    }
    # Shipped weights in bf16 (the decode dtype) keep the files small; the
    # fp32 master copy stays in checkpoint.pt.
    save_heads(heads.to(torch.bfloat16), out_dir / "heads", metadata)
    return metadata


@torch.no_grad()
def evaluate(heads, sequences, pairs, lm_head, embed, n_heads, batch_size: int = 256) -> list[tuple[float, float]]:
    """Per head: (top-1, top-5) accuracy of the base's own token t + 2 + i."""
    hits1 = torch.zeros(n_heads)
    hits5 = torch.zeros(n_heads)
    counts = torch.zeros(n_heads)
    for begin in range(0, len(pairs), batch_size):
        hidden, targets, paths = _batch(sequences, pairs[begin:begin + batch_size], n_heads, embed)
        top5 = head_logits(heads, hidden, paths, lm_head, embed).topk(5, dim=-1).indices  # [n, B, 5]
        valid = targets >= 0
        hits1 += ((top5[..., 0] == targets) & valid).sum(1)
        hits5 += ((top5 == targets.unsqueeze(-1)).any(-1) & valid).sum(1)
        counts += valid.sum(1)
    counts = counts.clamp(min=1)
    return [(float(hits1[i] / counts[i]), float(hits5[i] / counts[i])) for i in range(n_heads)]
