"""`entmtp bench-step`: what one decode step costs on this machine, in one run.

- the CPU class (the extension's kernel path) and the GEMM backend each weight
  shape took (entmtp.model.linear measures and caches that choice);
- the read bandwidth and the weight-streaming floor: the model's weight bytes
  over that bandwidth, the least a step that streams every weight can take;
- prefill tok/s at 128 and 512 prompt tokens;
- our plain decoding step, transformers' and llama.cpp's (when installed), each
  as a ratio to the floor;
- one full speculative step (propose + verify + accept, 256-token context) for
  the root-only tree and trees of 1 .. 128 nodes, Hydra and Medusa heads, each
  as a ratio to the root-only step: the cost curve a tree bank is built on
  (also drafting over the heads' draft vocabulary: hydra+dv, medusa+dv).

Contenders are timed round-robin (entmtp.timing) so drift on a shared machine
hits all alike; medians are reported. A benchmark, never a test: it prints
ratios measured side by side and asserts nothing.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from rich.console import Console
from rich.table import Table

from entmtp import machine
from entmtp.bench.contenders import LlamaCppContender, PeerMissing
from entmtp.decode.autoregressive import ArDecoder
from entmtp.decode.speculative import DEFAULT_TOP_K, SpeculativeDecoder
from entmtp.errors import EntmtpError
from entmtp.heads.shipped import load_draft_vocab, load_model_heads
from entmtp.model import linear
from entmtp.model.loader import LoadedModel, load_model, parse_dtype
from entmtp.model.quant import QuantizedWeight
from entmtp.timing import interleaved, seconds_per_call
from entmtp.trees.growth import superset_tree
from entmtp.trees.tree import tree_from_paths
from entmtp.tune.timing import measure_step_ms

BENCH_PROMPT = "Write a Python function that checks whether a number is prime."
TREE_NODES = (0, 1, 2, 4, 8, 16, 32, 64, 128)
PREFILL_TOKENS = (128, 512)
CONTEXT = 256
# Heads the cost curve is measured with; "+dv": drafting over their draft vocabulary.
HEADS_KINDS = ("hydrapp", "hydra", "medusa", "hydrapp+dv", "hydra+dv", "medusa+dv")


def measure_read_bandwidth(n_bytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes/s of a full read of an n_bytes buffer (median of repeats)."""
    buf = torch.ones(n_bytes // 4, dtype=torch.float32)
    samples = interleaved({"sum": lambda: seconds_per_call(buf.sum, "cpu")}, repeats)["sum"]
    return n_bytes / statistics.median(samples)


def _ms_per_step(run: Callable[[int], float], new_tokens: int, first_runs: int = 3) -> float:
    """(time for N tokens - time for 1 token) / (N - 1): decode steps only.

    Noise only ever adds time, and a stall in the 1-token run is subtracted: one of 30 ms
    made a 2-token difference negative on a shared machine. So the 1-token run (prefill
    and one step, cheap) is the least of a few; a stall in the N-token run only biases up.
    """
    full = run(new_tokens)
    first = min(run(1) for _ in range(first_runs))
    return (full - first) / (new_tokens - 1) * 1000.0


def run_step_bench(model_name: Optional[str], dtype_name: str, new_tokens: int, repeats: int,
                   with_peers: bool = True, nodes: Sequence[int] = TREE_NODES, heads_kinds=HEADS_KINDS,
                   json_out: Optional[Path] = None, console: Optional[Console] = None) -> dict:
    console = console or Console(stderr=False)
    dtype = parse_dtype(dtype_name)
    loaded = load_model(model_name, dtype)
    weight_bytes = sum(t.numel() * t.element_size() for t in _weights(loaded.model))
    bandwidth = measure_read_bandwidth()
    floor_ms = weight_bytes / bandwidth * 1000.0
    console.print(f"{machine.cpu_model()}: kernel path {machine.cpu_class()}, {torch.get_num_threads()} threads, "
                  f"torch {torch.__version__}, {dtype_name}")

    ar = _ar_steps(loaded, dtype.activations, new_tokens, repeats, with_peers, console)
    prefill = _prefill_tokens_per_second(loaded, repeats)
    curve, heads_by_kind = [], {}  # hydra and hydra+dv share one copy of the heads
    for kind in heads_kinds:
        try:
            curve += _spec_curve(loaded, kind, nodes, repeats, console, heads_by_kind)
        except EntmtpError as missing:  # e.g. no heads or draft vocabulary ship for this model
            console.print(f"skipping {kind}: {missing}")

    result = {
        "cpu": machine.cpu_model(), "cpu_class": machine.cpu_class(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "dtype": dtype_name, "model": loaded.folder.name,
        "bandwidth_gbps": round(bandwidth / 1e9, 2), "weight_mb": round(weight_bytes / 1e6, 1),
        "floor_ms": round(floor_ms, 3), "ar_ms": round(ar["entmtp ar"], 3),
        "prefill_tps": {str(n): round(v, 1) for n, v in prefill.items()},
        "curve": curve,
        "peers": {name: {"ms": round(ms, 3), "ratio_to_floor": round(ms / floor_ms, 3)}
                  for name, ms in ar.items() if name != "entmtp ar"},
        "gemm_plan": dict(sorted(linear.plan().items())),
    }
    _print(result, console)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}")
    return result


# ---------------------------------------------------------------- measurements
def _ar_steps(loaded: LoadedModel, dtype: torch.dtype, new_tokens: int, repeats: int, with_peers: bool,
              console: Console) -> dict[str, float]:
    """ms per plain decoding step: ours, and the peers that are installed."""
    ids = loaded.tokenizer.encode_chat(BENCH_PROMPT)
    decoder = ArDecoder(loaded.model)

    def ours(n: int) -> float:
        start = time.perf_counter()
        decoder.generate(ids, n, eos_ids=())  # no EOS: always exactly n tokens
        return time.perf_counter() - start

    contenders = {"entmtp ar": ours}
    if with_peers:
        hf = _transformers_runner(loaded.folder, dtype, ids, console)
        if hf is not None:
            contenders["transformers generate"] = hf
        cpp = _llama_cpp_runner(loaded, ids, console)
        if cpp is not None:
            contenders["llama.cpp"] = cpp
    for run in contenders.values():
        run(4)  # warm-up: allocate the cache, fault in the weights, pick the GEMM backends
    samples = interleaved({name: (lambda run=run: _ms_per_step(run, new_tokens)) for name, run in contenders.items()},
                          repeats, warmup=0)
    return {name: statistics.median(v) for name, v in samples.items()}


def _prefill_tokens_per_second(loaded: LoadedModel, repeats: int) -> dict[int, float]:
    """Prompt tokens per second of one forward over P random prompt tokens."""
    model = loaded.model
    generator = torch.Generator().manual_seed(0)
    cache = model.new_cache(1, max(PREFILL_TOKENS) + 1)

    def forward(n: int) -> Callable[[], float]:
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=generator)
        positions = torch.arange(n).unsqueeze(0)
        return lambda: seconds_per_call(lambda: model(ids, positions, cache, 0, logits_rows=slice(-1, None)),
                                        model.device)

    samples = interleaved({n: forward(n) for n in PREFILL_TOKENS}, repeats)
    return {n: n / statistics.median(v) for n, v in samples.items()}


def _spec_curve(loaded: LoadedModel, kind: str, nodes: Sequence[int], repeats: int,
                console: Console, heads_by_kind: dict) -> list[dict]:
    """ms of one speculative step per tree size, interleaved; ratios to root-only."""
    base, _, suffix = kind.partition("+")
    if base not in heads_by_kind:
        heads_by_kind[base] = load_model_heads(loaded, base)
    heads = heads_by_kind[base]
    vocab = load_draft_vocab(loaded, base, None, "heads") if suffix == "dv" else None
    trees = [tree_from_paths("root-only", []) if n == 0 else superset_tree(heads.n_heads, DEFAULT_TOP_K, n)
             for n in nodes]
    decoder = SpeculativeDecoder(loaded.model, heads, trees[0], draft_vocab=vocab)
    console.print(f"timing {kind}: {len(trees)} trees, {repeats} interleaved rounds at a {CONTEXT}-token context")
    ms, _ = measure_step_ms(decoder, trees, context=CONTEXT, repeats=repeats)
    root = ms[list(nodes).index(0)] if 0 in nodes else ms[0]
    return [{"heads": kind, "nodes": t.n_nodes - 1, "depth": t.max_depth, "ms": round(m, 3),
             "ratio": round(m / root, 3)} for t, m in zip(trees, ms)]


# ------------------------------------------------------------------------ peers
def _transformers_runner(folder, dtype, ids, console):
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        console.print("skipping transformers: it is not installed (pip install 'transformers>=5,<6')")
        return None
    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    hf_model.eval()
    input_ids = torch.tensor([ids])

    def run(n: int) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                              max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=0)
            return time.perf_counter() - start

    return run


def _llama_cpp_runner(loaded: LoadedModel, ids: list[int], console: Console):
    """llama.cpp on the GGUF the model came from (the bench's llama-cpp peer)."""
    try:
        peer = LlamaCppContender("llama-cpp", loaded, torch.get_num_threads())
    except PeerMissing as missing:
        console.print(f"skipping llama.cpp: {missing}")
        return None
    peer.eos = set()  # always exactly n tokens

    def run(n: int) -> float:
        return peer.generate(ids, n).seconds

    return run


# ------------------------------------------------------------------------ report
def _print(result: dict, console: Console) -> None:
    floor = result["floor_ms"]
    console.print(f"weight-streaming floor: {result['weight_mb']:.0f} MB at {result['bandwidth_gbps']:.1f} GB/s "
                  f"(measured now) = {floor:.2f} ms/step")
    table = Table(title="plain decoding step (median)")
    for column in ("contender", "ms/step", "tok/s", "x floor"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    rows = {"entmtp ar": result["ar_ms"], **{k: v["ms"] for k, v in result["peers"].items()}}
    for name, ms in rows.items():
        table.add_row(name, f"{ms:.2f}", f"{1000.0 / ms:.1f}", f"{ms / floor:.2f}")
    console.print(table)
    console.print("prefill: " + ", ".join(f"{n} tokens {v:.0f} tok/s" for n, v in result["prefill_tps"].items()))
    curve = Table(title="one speculative step (propose + verify + accept), ratio to root-only")
    curve.add_column("heads")
    sizes = sorted({p["nodes"] for p in result["curve"]})
    for n in sizes:
        curve.add_column(f"{n}", justify="right")
    for kind in dict.fromkeys(p["heads"] for p in result["curve"]):
        points = {p["nodes"]: p for p in result["curve"] if p["heads"] == kind}
        curve.add_row(kind, *[(f"{points[n]['ms']:.1f} ms" if n == 0 else f"{points[n]['ratio']:.2f}")
                              if n in points else "" for n in sizes])
    console.print(curve)
    if result["gemm_plan"]:
        console.print("GEMM backend per weight shape (N x K; a '+' joins a layer's matrices, which take one) "
                      "by rows:")
        for line in compact_plan(result["gemm_plan"]):
            console.print("  " + line, soft_wrap=True)


def compact_plan(plan: dict[str, str]) -> list[str]:
    """{"3072x576@17": "ours", ...} -> one line per shape, its row buckets as runs per
    backend ("3072x576: ours 1-112, 128; onednn 120, 256-512"); runs follow linear.BUCKETS."""
    by_shape: dict[str, dict[int, str]] = {}
    for key, backend in plan.items():
        shape, _, rows = key.rpartition("@")
        by_shape.setdefault(shape, {})[int(rows)] = backend
    order = {b: i for i, b in enumerate(linear.BUCKETS)}
    lines = []
    for shape, buckets in sorted(by_shape.items(), key=lambda item: (item[0].count("+"), item[0])):
        runs: dict[str, list[list[int]]] = {}
        rows = sorted(buckets, key=lambda r: (order.get(r, len(order)), r))
        for i, r in enumerate(rows):
            backend = buckets[r]
            follows = i > 0 and buckets[rows[i - 1]] == backend and order.get(r, -2) == order.get(rows[i - 1], -9) + 1
            if follows:
                runs[backend][-1].append(r)
            else:
                runs.setdefault(backend, []).append([r])
        parts = [f"{backend} " + ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in spans)
                 for backend, spans in sorted(runs.items())]
        lines.append(f"{shape}: " + "; ".join(parts))
    return lines


def _weights(model) -> list[torch.Tensor]:
    """Every weight tensor a step streams (quantized ones as their blocks)."""
    tensors = [model.embed, model.final_norm]
    if model.lm_head is not model.embed:
        tensors.append(model.lm_head)
    for layer in model.layers:
        tensors += [t for t in vars(layer).values() if isinstance(t, (torch.Tensor, QuantizedWeight))]
    return [t.data if isinstance(t, QuantizedWeight) else t for t in tensors]
