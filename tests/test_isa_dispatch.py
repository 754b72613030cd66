"""Runtime ISA dispatch of the CPU kernels (csrc/cpu/isa_select.cpp).

Every code path this CPU can run is pinned to the references by re-running the
op test files (their stated tolerances) in a subprocess with ENTMTP_ISA set,
since the path is chosen once, at first use. Paths the CPU cannot run are
skipped with the reason; the default (best) path is covered by the plain run.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import entmtp.ops  # noqa: F401  (loads entmtp._C)

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["portable", "avx2", "avx512", "avx512bf16", "amx"]
E = torch.ops.entmtp
AVAILABLE = list(E.cpu_isa_available())
# The op tests whose kernels differ per path (tree_accept / kv_commit do not).
OP_TESTS = ["tests/test_linear.py", "tests/test_ops_quant.py", "tests/test_ops_fused_layer.py", "tests/test_ops_attention.py",
            "tests/test_ops_entropy.py"]


def _run(env_isa: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ENTMTP_ISA=env_isa)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_reports_a_runnable_path():
    assert AVAILABLE[0] == "portable" and AVAILABLE == PATHS[:len(AVAILABLE)]
    forced = os.environ.get("ENTMTP_ISA", "")
    assert E.cpu_isa() == (forced if forced not in ("", "auto") else AVAILABLE[-1])


@pytest.mark.parametrize("path", PATHS)
def test_op_tests_pass_on_path(path):
    if path not in AVAILABLE:
        pytest.skip(f"this CPU cannot run the {path} path (available: {', '.join(AVAILABLE)})")
    if path == AVAILABLE[-1] and os.environ.get("ENTMTP_ISA", "") in ("", "auto", path):
        pytest.skip(f"{path} is this process's path: the op tests already ran on it")
    code = (
        "import sys, pytest, torch, entmtp.ops\n"
        f"assert torch.ops.entmtp.cpu_isa() == {path!r}, torch.ops.entmtp.cpu_isa()\n"
        # torch.compile tests exercise tracing, not the kernels: left to the plain run.
        f"sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', '-k', 'not compile', *{OP_TESTS!r}]))\n"
    )
    proc = _run(path, code)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert re.search(r"\d+ passed", proc.stdout)


def test_bad_requests_fail_loudly():
    proc = _run("no-such-path", "import torch, entmtp.ops; print(torch.ops.entmtp.cpu_isa())")
    assert proc.returncode != 0 and "ENTMTP_ISA=no-such-path is not a code path" in proc.stderr
    missing = [p for p in PATHS if p not in AVAILABLE]
    if missing:
        proc = _run(missing[-1], "import torch, entmtp.ops; print(torch.ops.entmtp.cpu_isa())")
        assert proc.returncode != 0 and "cannot run" in proc.stderr


def test_no_simd_code_outside_the_isa_namespaces():
    """The ODR trap: an inline/template function compiled under an ISA's target
    pragma but named outside that ISA's namespace can be the copy the linker
    keeps for every caller. The library's generic code is built for baseline
    x86-64, so any ymm/zmm/tile instruction must sit in entmtp::kernels::<isa>::."""
    if not sys.platform.startswith("linux") or shutil.which("objdump") is None:
        pytest.skip("needs objdump on Linux")
    import entmtp._C as ext
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", ext.__file__], capture_output=True,
                         text=True, check=True).stdout
    if "x86-64" not in subprocess.run(["objdump", "-f", ext.__file__], capture_output=True, text=True).stdout:
        pytest.skip("not an x86-64 build")
    ns = re.compile(r"entmtp::kernels::(avx2|avx512|avx512bf16|amx)::")
    simd = re.compile(r"%[yz]mm|%tmm|:\s+(tile\w+|ldtilecfg)\b")  # operands, or the mnemonic after the address
    leaks, in_isa, cur = set(), 0, ""
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            cur = head.group(1)
        elif simd.search(line):
            if ns.search(cur):
                in_isa += 1
            else:
                leaks.add(cur)
    assert in_isa > 0  # the detector sees the ISA paths' code
    assert not leaks, sorted(leaks)[:10]
