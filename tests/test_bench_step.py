"""`entmtp bench-step --json` on the default model at toy settings: the keys the
issue asks for, the heads it times, and bad flags. Asserts no speed: a benchmark
prints ratios measured side by side; tests only check that it measures."""
from __future__ import annotations

import json

from test_cli import _one_error_line, _run


def test_bench_step_writes_the_documented_json(capsys, default_model_dir, tmp_path):
    out = tmp_path / "step.json"
    code, _, err = _run(capsys, "bench-step", "--model", str(default_model_dir), "--repeats", "1",
                        "--new-tokens", "4", "--tree-nodes", "0,2", "--no-peers", "--json", str(out))
    assert code == 0, err
    result = json.loads(out.read_text())
    assert {"cpu_class", "floor_ms", "ar_ms", "prefill_tps", "curve", "peers"} <= set(result)
    assert result["cpu_class"] in ("amx", "avx512bf16", "avx512", "avx2", "portable")
    assert set(result["prefill_tps"]) == {"128", "512"} and all(v > 0 for v in result["prefill_tps"].values())
    assert result["floor_ms"] > 0 and result["ar_ms"] > 0 and result["peers"] == {}
    heads = {p["heads"] for p in result["curve"]}
    assert heads == {"hydrapp", "hydra", "medusa", "hydrapp+dv", "hydra+dv", "medusa+dv"}
    for point in result["curve"]:
        assert {"heads", "nodes", "ms", "ratio"} <= set(point) and point["ms"] > 0
        assert point["ratio"] == 1.0 if point["nodes"] == 0 else point["ratio"] > 0
    assert result["gemm_plan"]  # the backend each weight shape took


def test_bench_step_rejects_bad_tree_sizes(capsys):
    code, _, err = _run(capsys, "bench-step", "--tree-nodes", "0,many")
    assert code == 2
    _one_error_line(err, "--tree-nodes must be a comma list")


def test_the_gemm_plan_prints_one_line_per_shape_with_runs_of_row_buckets():
    from entmtp.bench.step import compact_plan

    plan = {f"3072x576@{r}": ("onednn" if r in (56, 120, 256, 512) else "ours")
            for r in (*range(1, 33), *range(40, 129, 8), 256, 512)}
    plan["576x576+3072x576@1"] = "ours"
    plan["576x576+3072x576@2"] = "ours"
    plan["576x576+3072x576@4"] = "onednn"
    assert compact_plan(plan) == ["3072x576: onednn 56, 120, 256-512; ours 1-48, 64-112, 128",
                                  "576x576+3072x576: onednn 4; ours 1-2"]
