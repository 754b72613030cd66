"""Micro-benchmark of the entmtp kernels against plain torch, side by side.

    entmtp kernels bench [--device cpu|cuda] [--dtype bf16,fp32] [--quick] [--repeats N]
                         [--T 1,8] [--L 256] [--V 49152] [--N 1,64] [--skip attention|entropy]

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
import contextlib
import dataclasses
import math
import statistics
import sys
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from entmtp import ops
from entmtp.errors import EntmtpError, UsageError
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


_ALL_DTYPES = ", ".join(_DTYPES)


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    device: str
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]
    t_values: tuple[int, ...]
    l_values: tuple[int, ...]
    vocabs: tuple[int, ...]
    rows: tuple[int, ...]
    repeats: int
    skip: str | None


# Upper bounds of what is benched: well past any draft tree (T: <= 128 nodes), context
# (L), vocabulary (V: the largest in use are ~256k) or batch of logit rows (N), and
# short of tensors no machine holds (an L of 1e12 asked torch for terabytes).
MAX_T, MAX_L, MAX_V, MAX_N, MAX_REPEATS = 4096, 131072, 1 << 20, 8192, 1000


def _int_list(text: str | None, option: str, minimum: int, maximum: int) -> list[int] | None:
    """A comma list of integers in [minimum, maximum], or None when the option is not given."""
    if text is None:
        return None
    values = []
    what = f"{option} must be a comma list of integers >= {minimum}"
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            raise UsageError(f"{what}, not {text!r}") from None
        if value < minimum:
            raise UsageError(f"{what}, got {value}")
        if value > maximum:
            raise UsageError(f"{option} values must be at most {maximum}, got {value}")
        values.append(value)
    return values


def bench_options(device: str = "cpu", dtype: str = "bf16,fp32", quick: bool = False, repeats: int = 7,
                  t_list: str | None = None, l_list: str | None = None, v_list: str | None = None,
                  n_list: str | None = None, skip: str | None = None) -> BenchOptions:
    """Check the options as typed (the same for the CLI and `python -m`): every mistake
    is one UsageError naming the option and what it takes, before anything is timed."""
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise EntmtpError("--device cuda was asked for but no CUDA GPU is available")
    dtypes = tuple(name.strip() for name in dtype.split(","))
    unknown = [name for name in dtypes if name not in _DTYPES]
    if unknown:
        raise UsageError(f"--dtype must be a comma list of {_ALL_DTYPES}, not {unknown[0]!r}")
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    if repeats > MAX_REPEATS:
        raise UsageError(f"--repeats must be at most {MAX_REPEATS}, got {repeats}")
    if skip not in (None, "attention", "entropy"):
        raise UsageError(f"--skip must be attention or entropy, not {skip!r}")
    # T new tokens and N logit rows are at least one; a prefix may be empty (L = 0).
    t_values = _int_list(t_list, "--T", 1, MAX_T) or ([1, 64] if quick else [1, 8, 32, 64, 128])
    l_values = _int_list(l_list, "--L", 0, MAX_L) or ([1024] if quick else [256, 1024, 4096])
    vocabs = _int_list(v_list, "--V", 1, MAX_V) or ([49152] if quick else [49152, 131072])
    rows = _int_list(n_list, "--N", 1, MAX_N) or [1, 64]
    shapes = ((9, 3, 64),) if quick else ((9, 3, 64), (32, 32, 128))
    return BenchOptions(device, tuple(dict.fromkeys(dtypes)), shapes, tuple(t_values), tuple(l_values),
                        tuple(vocabs), tuple(rows), repeats, skip)


def run(options: BenchOptions) -> int:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {options.device}"
          + (f" ({torch.cuda.get_device_name()})" if options.device == "cuda" else ""))
    for name in options.dtypes:
        dtype = _DTYPES[name]
        if options.skip != "attention":
            with _out_of_memory_is_one_line(f"tree_attention ({name})", "--T or --L"):
                bench_attention(options.device, dtype, options.shapes, options.t_values, options.l_values,
                                options.repeats)
        if options.skip != "entropy":
            with _out_of_memory_is_one_line(f"token_entropy ({name})", "--V or --N"):
                bench_entropy(options.device, dtype, options.vocabs, options.rows, options.repeats)
    return 0


@contextlib.contextmanager
def _out_of_memory_is_one_line(what: str, options: str):
    """A tensor this machine cannot allocate (shapes within the bounds can still be too
    big for it) becomes one EntmtpError line naming the options to lower."""
    try:
        yield
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one too
        text = str(exc)
        if not isinstance(exc, torch.cuda.OutOfMemoryError) and not any(
                needle in text.lower() for needle in ("can't allocate", "cannot allocate", "not enough memory",
                                                      "out of memory")):
            raise  # not an allocation: a bug, reported as one
        # The CPU allocator says "[enforce fail at ...] DefaultCPUAllocator: can't allocate memory: you
        # tried to allocate N bytes. Error code 12 (...)": keep what was asked for.
        detail = text.splitlines()[0] if text else type(exc).__name__
        if "you tried" in detail:
            detail = detail[detail.find("you tried"):].split(". ")[0]
        raise EntmtpError(f"benching {what} ran out of memory ({detail[:160].rstrip('. ')}); "
                          f"give smaller {options}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One UsageError line, as from `entmtp kernels bench`, instead of argparse's usage block.
        raise UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m entmtp.bench.kernels`, with the options of `entmtp kernels bench`."""
    parser = _Parser(prog="python -m entmtp.bench.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="bf16,fp32", help=f"comma list of {_ALL_DTYPES}")
    parser.add_argument("--quick", action="store_true", help="a few shapes only (CI smoke)")
    parser.add_argument("--repeats", type=int, default=7, help=f"interleaved rounds per row (1 to {MAX_REPEATS})")
    parser.add_argument("--T", help=f"override the T values (comma list, 1 to {MAX_T})")
    parser.add_argument("--L", help=f"override the prefix lengths (0 to {MAX_L})")
    parser.add_argument("--V", help=f"override the vocabulary sizes (1 to {MAX_V})")
    parser.add_argument("--N", help=f"override the logit row counts (1 to {MAX_N})")
    parser.add_argument("--skip", default=None, help="attention or entropy")
    args = parser.parse_args(argv)
    return run(bench_options(args.device, args.dtype, args.quick, args.repeats, args.T, args.L, args.V, args.N,
                             args.skip))


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except EntmtpError as error:
        print(f"entmtp: error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
