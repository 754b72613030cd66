"""Micro-benchmark of the entmtp kernels against plain torch, side by side.

    entmtp kernels bench [--device cpu|cuda] [--dtype bf16,fp32] [--quick] [--repeats N]

Each table row times our op and the torch contender alternately within every
repetition (so drift, turbo and noisy neighbours hit both alike) and reports
the medians and their ratio (torch / ours: > 1 means ours is faster).

- tree_attention vs F.scaled_dot_product_attention with an explicit dense bool
  mask (kv heads repeated for GQA), over T new tokens on an L-token prefix.
- token_entropy vs log_softmax + entropy sum + argmax + max; on CUDA also the
  achieved read bandwidth against the card's peak.
"""
from __future__ import annotations

import argparse
import math
import statistics
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from entmtp import ops
from entmtp.reference import causal_tree_bits, dense_mask_from_tree_bits, tree_bits_from_parents
from entmtp.timing import interleaved, seconds_per_call

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
# Peak memory bandwidth in GB/s by device-name fragment (first match wins).
_PEAK_GBPS = (("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("A100-SXM4-80GB", 2039.0),
              ("A100", 1555.0), ("L40S", 864.0), ("RTX 4090", 1008.0))


def compare(ours: Callable[[], object], theirs: Callable[[], object], repeats: int, device: str,
            min_seconds: float = 0.01) -> tuple[float, float]:
    """Median seconds per call of (ours, theirs), measured alternately."""
    for fn in (ours, theirs):  # warm-up (allocator, thread pool, lazy init)
        fn()
    probe = max(seconds_per_call(ours, device), seconds_per_call(theirs, device), 1e-7)
    inner = max(1, int(min_seconds / probe))
    samples = interleaved({"ours": lambda: seconds_per_call(ours, device, inner),
                           "theirs": lambda: seconds_per_call(theirs, device, inner)}, repeats, warmup=0)
    return statistics.median(samples["ours"]), statistics.median(samples["theirs"])


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f}"


def _random_tree_bits(n_new: int, device: str) -> torch.Tensor:
    # A bushy tree like Medusa's: each node hangs under one of the earlier ones.
    gen = torch.Generator().manual_seed(n_new)
    parents = [-1] + [int(torch.randint(max(0, i - 8), i, (1,), generator=gen)) for i in range(1, n_new)]
    return tree_bits_from_parents(torch.tensor(parents)).to(device)


def bench_attention(device: str, dtype: torch.dtype, shapes: Sequence[tuple[int, int, int]],
                    t_values: Sequence[int], l_values: Sequence[int], repeats: int) -> None:
    print(f"\ntree_attention vs SDPA + dense mask  ({device}, {dtype}, B=1, median ms per call)")
    print(f"{'Hq':>3} {'Hkv':>3} {'D':>4} {'T':>4} {'L':>5} {'ours':>9} {'torch':>9} {'ratio':>6}")
    for n_q, n_kv, head_dim in shapes:
        for prefix in l_values:
            for n_new in t_values:
                lk = prefix + n_new
                cache = torch.randn(2, 1, n_kv, lk + 16, head_dim, device=device, dtype=dtype)
                k, v = cache[0, :, :, :lk], cache[1, :, :, :lk]
                qkv = torch.randn(1, n_new, (n_q + 2 * n_kv) * head_dim, device=device, dtype=dtype)
                q = qkv[..., :n_q * head_dim].view(1, n_new, n_q, head_dim)
                bits = None if n_new == 1 else _random_tree_bits(n_new, device)
                mask = dense_mask_from_tree_bits(bits if bits is not None else causal_tree_bits(n_new, device),
                                                 prefix)
                scale = 1.0 / math.sqrt(head_dim)
                group = n_q // n_kv

                def ours():
                    return ops.tree_attention(q, k, v, bits, scale)

                def theirs():
                    kk = k.repeat_interleave(group, dim=1) if group > 1 else k
                    vv = v.repeat_interleave(group, dim=1) if group > 1 else v
                    out = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, attn_mask=mask, scale=scale)
                    return out.transpose(1, 2).contiguous()

                t_ours, t_torch = compare(ours, theirs, repeats, device)
                print(f"{n_q:>3} {n_kv:>3} {head_dim:>4} {n_new:>4} {prefix:>5} {_fmt_ms(t_ours)} "
                      f"{_fmt_ms(t_torch)} {t_torch / t_ours:6.2f}")


def _peak_gbps(device: str) -> Optional[float]:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for frag, peak in _PEAK_GBPS if frag in name), None)


def bench_entropy(device: str, dtype: torch.dtype, vocabs: Sequence[int], rows: Sequence[int],
                  repeats: int) -> None:
    print(f"\ntoken_entropy vs log_softmax + sum + argmax/max  ({device}, {dtype}, median ms per call)")
    header = f"{'N':>4} {'V':>7} {'ours':>9} {'torch':>9} {'ratio':>6}"
    peak = _peak_gbps(device)
    if device == "cuda":
        header += f" {'GB/s':>8} {'of peak':>8}"
    print(header)
    for vocab in vocabs:
        for n in rows:
            logits = torch.randn(n, vocab, device=device, dtype=dtype) * 4

            def ours():
                return ops.token_entropy(logits, 0)

            def theirs():
                logp = torch.log_softmax(logits.float(), dim=-1)
                entropy = -(logp.exp() * logp).sum(-1)
                return entropy, logits.argmax(-1), logp.max(-1).values.exp()

            t_ours, t_torch = compare(ours, theirs, repeats, device)
            line = f"{n:>4} {vocab:>7} {_fmt_ms(t_ours)} {_fmt_ms(t_torch)} {t_torch / t_ours:6.2f}"
            if device == "cuda":
                gbps = logits.numel() * logits.element_size() / t_ours / 1e9
                share = f"{100 * gbps / peak:7.1f}%" if peak else f"{'n/a':>8}"
                line += f" {gbps:8.1f} {share}"
            print(line)


def _int_list(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="entmtp kernels bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", default="bf16,fp32", help="comma list of bf16, fp32, fp16")
    parser.add_argument("--quick", action="store_true", help="a few shapes only (CI smoke)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--T", type=_int_list, default=None, help="override the T values (comma list)")
    parser.add_argument("--L", type=_int_list, default=None, help="override the prefix lengths")
    parser.add_argument("--V", type=_int_list, default=None, help="override the vocabulary sizes")
    parser.add_argument("--N", type=_int_list, default=None, help="override the logit row counts")
    parser.add_argument("--skip", choices=("attention", "entropy"), default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")

    shapes = [(9, 3, 64)] if args.quick else [(9, 3, 64), (32, 32, 128)]
    t_values = args.T or ([1, 64] if args.quick else [1, 8, 32, 64, 128])
    l_values = args.L or ([1024] if args.quick else [256, 1024, 4096])
    vocabs = args.V or ([49152] if args.quick else [49152, 131072])
    rows = args.N or [1, 64]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    for name in args.dtype.split(","):
        dtype = _DTYPES[name.strip()]
        if args.skip != "attention":
            bench_attention(args.device, dtype, shapes, t_values, l_values, args.repeats)
        if args.skip != "entropy":
            bench_entropy(args.device, dtype, vocabs, rows, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
