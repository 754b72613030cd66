"""What machine this is: the facts a measured choice depends on (the GEMM backend
per shape in entmtp.model.linear; a bank's cost curve), and a short fingerprint
of them that names the per-machine caches."""
from __future__ import annotations

import hashlib
import platform
from functools import lru_cache

import torch

from entmtp import ops  # noqa: F401  (registers torch.ops.entmtp.cpu_isa)


@lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor"), from /proc/cpuinfo on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_class() -> str:
    """The CPU kernel path the extension runs here: amx, avx512bf16, avx512, avx2 or
    portable (the best this CPU runs, or the one ENTMTP_ISA asked for)."""
    return str(torch.ops.entmtp.cpu_isa())


@lru_cache(maxsize=None)
def build_id() -> str:
    """12 hex digits naming the compiled extension (a hash of its file): a rebuilt or
    upgraded entmtp runs other kernels, so what was measured with the old ones (GEMM
    choices, cost curves) is measured again rather than trusted. Measured on a 2-core
    Zen4: the one-op layer loop made the bf16 step 0.89x, and banks derived on the curve
    of the build before it priced every tree on costs that no longer held."""
    import entmtp._C as ext

    digest = hashlib.sha1()
    with open(ext.__file__, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def facts(device: torch.device | str = "cpu") -> dict:
    """The facts a measurement on `device` depends on."""
    device = torch.device(device)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device.type,
           "build": build_id()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    else:
        out.update(cpu=cpu_model(), cpu_class=cpu_class())
    return out


def fingerprint(device: torch.device | str = "cpu") -> str:
    """16 hex digits naming `facts(device)`: equal on the same machine and setup."""
    text = "|".join(f"{k}={v}" for k, v in sorted(facts(device).items()))
    return hashlib.sha1(text.encode()).hexdigest()[:16]
