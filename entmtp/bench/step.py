"""`entmtp bench-step`: ms per greedy decode step, ours vs transformers, one run.

Contenders alternate run by run (ours, transformers, ours, ...) so drift on a
shared machine hits both alike; medians are reported. The weight-streaming
floor is the model's weight bytes over a read bandwidth measured in the same run.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch
from rich.console import Console
from rich.table import Table

from entmtp.decode.autoregressive import ArDecoder
from entmtp.model.loader import load_model, parse_dtype
from entmtp.timing import interleaved

BENCH_PROMPT = "Write a Python function that checks whether a number is prime."


def measure_read_bandwidth(n_bytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes/s of a full read of an n_bytes buffer (median of repeats)."""
    buf = torch.ones(n_bytes // 4, dtype=torch.float32)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        samples.append(time.perf_counter() - start)
    return n_bytes / statistics.median(samples)


def _ms_per_step(run: Callable[[int], float], new_tokens: int) -> float:
    """(time for N tokens - time for 1 token) / (N - 1): decode steps only."""
    full = run(new_tokens)
    first = run(1)
    return (full - first) / (new_tokens - 1) * 1000.0


def run_step_bench(model_name: Optional[str], dtype_name: str, new_tokens: int, repeats: int,
                   with_transformers: bool = True, console: Optional[Console] = None) -> dict:
    console = console or Console(stderr=False)
    dtype = parse_dtype(dtype_name)
    loaded = load_model(model_name, dtype)
    ids = loaded.tokenizer.encode_chat(BENCH_PROMPT)
    decoder = ArDecoder(loaded.model)

    def ours(n: int) -> float:
        start = time.perf_counter()
        decoder.generate(ids, n, eos_ids=())  # no EOS: always exactly n tokens
        return time.perf_counter() - start

    contenders = {"entmtp ar": ours}
    if with_transformers:
        hf = _transformers_runner(loaded.folder, dtype, ids, console)
        if hf is not None:
            contenders["transformers generate"] = hf

    for run in contenders.values():
        run(4)  # warm-up: allocate the cache, fault in the weights
    samples = interleaved({name: (lambda run=run: _ms_per_step(run, new_tokens)) for name, run in contenders.items()},
                          repeats, warmup=0)

    weight_bytes = sum(t.numel() * t.element_size() for t in _weights(loaded.model))
    bandwidth = measure_read_bandwidth()
    floor_ms = weight_bytes / bandwidth * 1000.0
    medians = {name: statistics.median(v) for name, v in samples.items()}
    table = Table(title=f"greedy decode step, {dtype_name}, {torch.get_num_threads()} threads, "
                        f"{new_tokens} new tokens, median of {repeats}")
    table.add_column("contender")
    table.add_column("ms/step", justify="right")
    table.add_column("tok/s", justify="right")
    table.add_column("x floor", justify="right")
    table.add_column("runs (ms/step)")
    for name, value in medians.items():
        table.add_row(name, f"{value:.2f}", f"{1000.0 / value:.1f}", f"{value / floor_ms:.2f}",
                      " ".join(f"{v:.1f}" for v in samples[name]))
    console.print(table)
    console.print(f"weight-streaming floor: {weight_bytes / 1e6:.0f} MB at {bandwidth / 1e9:.1f} GB/s "
                  f"(measured now) = {floor_ms:.2f} ms/step")
    if "transformers generate" in medians:
        console.print(f"ours is {medians['transformers generate'] / medians['entmtp ar']:.2f}x "
                      f"faster than transformers per step")
    return {"medians_ms": medians, "samples_ms": samples, "floor_ms": floor_ms}


def _weights(model) -> list[torch.Tensor]:
    tensors = [model.embed, model.final_norm]
    if model.lm_head is not model.embed:
        tensors.append(model.lm_head)
    for layer in model.layers:
        tensors += [t for t in vars(layer).values() if isinstance(t, torch.Tensor)]
    return tensors


def _transformers_runner(folder, dtype, ids, console):
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        console.print("transformers is not installed: skipping it (pip install 'transformers>=5,<6')")
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
