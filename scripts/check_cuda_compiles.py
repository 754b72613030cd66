#!/usr/bin/env python3
"""CI check: every csrc/**/*.cu compiles with nvcc against the installed torch's headers.

Compile-only (no link), so it works with a CPU-only torch: the CPU wheel ships
the CUDA headers except one generated file, which a shim provides (the
header torch writes at its own build time). PTX-only for compute_90 (skips ptxas).
Exits 1 if any file fails; prints a skip notice and exits 0 without nvcc.
"""
from __future__ import annotations

import glob
import inspect
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    fallback = "/usr/local/cuda/bin/nvcc"
    return fallback if os.access(fallback, os.X_OK) else None


def cxx_standard() -> str:
    # Follow torch: extensions build with c++20 from torch 2.13 on, c++17 before.
    import torch.utils.cpp_extension as cpp_extension

    return "-std=c++20" if "c++20" in inspect.getsource(cpp_extension) else "-std=c++17"


def nvcc_command(nvcc: str, source: str, shim_dir: str, out: str) -> list[str]:
    import torch.utils.cpp_extension as cpp_extension

    includes = cpp_extension.include_paths() + [shim_dir, sysconfig.get_paths()["include"],
                                                 os.path.join(ROOT, "csrc")]
    return [
        nvcc, "-c", source, "-o", out, cxx_standard(), "-O1",
        "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
        "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
        "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", "-DENTMTP_WITH_CUDA",
        "-gencode=arch=compute_90,code=compute_90",
    ] + [f"-I{path}" for path in includes]


def main() -> int:
    nvcc = find_nvcc()
    if nvcc is None:
        print("check_cuda_compiles: nvcc not found, skipping the CUDA compile check")
        return 0
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        shim = os.path.join(tmp, "c10", "cuda", "impl")
        os.makedirs(shim)
        with open(os.path.join(shim, "cuda_cmake_macros.h"), "w") as fh:
            fh.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        for source in sources:
            rel = os.path.relpath(source, ROOT)
            start = time.perf_counter()
            result = subprocess.run(nvcc_command(nvcc, source, tmp, os.path.join(tmp, "out.o")),
                                    capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            if result.returncode == 0:
                print(f"ok    {rel} ({elapsed:.1f} s)")
                if "warning" in result.stderr:  # shown, but not fatal
                    print(result.stderr)
            else:
                failures += 1
                print(f"FAIL  {rel} ({elapsed:.1f} s)\n{result.stdout}{result.stderr}")
    print(f"check_cuda_compiles: {len(sources) - failures}/{len(sources)} .cu files compile")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
