"""Smoke test of the kernel benchmark (entmtp.bench.kernels) at tiny sizes."""
from __future__ import annotations

from entmtp.bench import kernels as kernel_bench


def test_quick_bench_runs(capsys):
    argv = ["--quick", "--repeats", "1", "--dtype", "fp32", "--T", "1,4", "--L", "16", "--V", "300", "--N", "1,2"]
    assert kernel_bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "tree_attention vs SDPA" in out and "token_entropy vs" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2 + 2  # two attention rows (T = 1, 4) and two entropy rows (N = 1, 2)
    assert all(float(row[-1]) > 0 for row in rows)  # every row ends with a ratio
