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


def facts(device: torch.device | str = "cpu") -> dict:
    """The facts a measurement on `device` depends on."""
    device = torch.device(device)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    else:
        out.update(cpu=cpu_model(), cpu_class=cpu_class())
    return out


def fingerprint(device: torch.device | str = "cpu") -> str:
    """16 hex digits naming `facts(device)`: equal on the same machine and setup."""
    text = "|".join(f"{k}={v}" for k, v in sorted(facts(device).items()))
    return hashlib.sha1(text.encode()).hexdigest()[:16]
