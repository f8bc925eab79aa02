"""One device policy for every model the workbench runs: where it runs and in which precision.

``resolve_device("auto")`` picks CUDA, else Apple MPS, else the CPU; a named device ("cpu",
"cuda", "cuda:1", "mps") is checked against what this machine has and refused with a one-line
reason when it is absent. ``resolve_precision`` picks the arithmetic for a device: fp32 on the
CPU (bf16 there is ~12x slower on the dev CPU, see train.py), bf16 on a GPU that supports it,
fp16 (with loss scaling in training) on an older GPU, and refuses an impossible request (bf16 on
a GPU without it, fp16 on the CPU).

The deciding parts are pure functions of a ``Hardware`` description, so they are tested on the
CPU without mocking CUDA; ``probe()`` reads the real machine once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Literal

from workbench.exceptions import ConfigError
from workbench.lazy import lazy_module

torch = lazy_module("torch")

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DEVICE_ENV = "WORKBENCH_DEVICE"  # overrides "auto" for a whole process (CI, a user's shell)
# Older spellings the train config accepted: keep reading them.
_PRECISION_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16",
                      "auto": "auto", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class GPU:
    """One CUDA device as the policy needs to see it."""

    index: int
    name: str
    capability: tuple[int, int]  # compute capability; bf16 and TF32 need 8.0 (Ampere) or newer
    memory_bytes: int

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Hardware:
    """What a machine offers: CUDA devices, whether MPS works, CPU cores, bitsandbytes."""

    gpus: tuple[GPU, ...] = ()
    mps: bool = False
    cpu_cores: int = 1
    bitsandbytes: bool = False
    extras: dict[str, bool] = field(default_factory=dict)

    def devices(self) -> list[str]:
        """Every device name a user may pick here, best first ("cuda:0", ..., "mps", "cpu")."""
        return [f"cuda:{g.index}" for g in self.gpus] + (["mps"] if self.mps else []) + ["cpu"]

    def gpu(self, device: str) -> GPU | None:
        if not device.startswith("cuda"):
            return None
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return next((g for g in self.gpus if g.index == index), None)


# Device files a GPU that torch can use always has (NVIDIA, AMD ROCm, NVIDIA under WSL2).
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd",
                     "/dev/dxg")


def may_have_gpu() -> bool:
    """Whether torch might find a GPU here, answered without importing torch.

    Importing torch takes 2-3 s, and pages that only offer a device selector must open without
    it (tests/test_page_imports.py): torch is asked only where an NVIDIA/AMD driver's device
    files exist, on an Apple-silicon Mac (MPS), or once torch is imported anyway.
    """
    if "torch" in sys.modules:
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    return any(os.path.exists(p) for p in _GPU_DEVICE_FILES)


@functools.lru_cache(maxsize=1)
def probe() -> Hardware:
    """Reads this machine once per process (imports torch only where a GPU may be, so that
    resolving "auto" on a CPU-only machine costs no torch import: 2-3 s in a page)."""
    gpus: list[GPU] = []
    if may_have_gpu() and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(GPU(i, p.name, (p.major, p.minor), int(p.total_memory)))
    mps = may_have_gpu() and bool(getattr(torch.backends, "mps", None)
                                  and torch.backends.mps.is_available())
    return Hardware(
        gpus=tuple(gpus),
        mps=mps,
        cpu_cores=os.cpu_count() or 1,
        bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
        extras={"vllm": importlib.util.find_spec("vllm") is not None},
    )


def resolve_device(requested: str | None = "auto", hardware: Hardware | None = None) -> str:
    """Returns a concrete torch device string ("cuda:0", "mps" or "cpu") for a request.

    "auto" (or None) takes $WORKBENCH_DEVICE when set, else the best device present. A named
    device that is absent raises ConfigError naming what is available.
    """
    hw = hardware if hardware is not None else probe()
    name = (requested or "auto").strip().lower()
    if name == "auto":
        name = (os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if name == "auto":
        return hw.devices()[0]
    if name == "cpu":
        return "cpu"
    if name == "mps":
        if not hw.mps:
            raise ConfigError(f"device 'mps' is not available here; available: {_listing(hw)}")
        return "mps"
    if name == "cuda" or name.startswith("cuda:"):
        index = name.split(":", 1)[1] if ":" in name else "0"
        if not index.isdigit():
            raise ConfigError(f"device {requested!r}: write cuda or cuda:N (N a GPU index)")
        if hw.gpu(f"cuda:{index}") is None:
            raise ConfigError(
                f"device {requested!r} is not available here (no such CUDA GPU); "
                f"available: {_listing(hw)}"
            )
        return f"cuda:{index}"
    raise ConfigError(f"device {requested!r} is not one of auto, cpu, cuda, cuda:N, mps")


def precision_name(name: object) -> str | None:
    """The canonical spelling of a precision ("auto", "fp32", "bf16", "fp16"), reading the
    older dtype names ("float32", "bfloat16", "float16"); None for anything else."""
    return _PRECISION_ALIASES.get(str(name).strip().lower())


def resolve_precision(requested: str | None, device: str,
                      hardware: Hardware | None = None) -> Precision:
    """Returns the precision to run a model in on a (resolved) device.

    "auto": bf16 on a GPU with bf16 (compute capability >= 8.0) and on MPS, fp16 on an older
    GPU, fp32 on the CPU. An impossible request raises ConfigError with the reason.
    """
    hw = hardware if hardware is not None else probe()
    key = _PRECISION_ALIASES.get((requested or "auto").strip().lower())
    if key is None:
        raise ConfigError(f"precision {requested!r} is not one of auto, {', '.join(PRECISIONS)}")
    gpu = hw.gpu(device)
    if key == "auto":
        if gpu is not None:
            return "bf16" if gpu.bf16 else "fp16"
        return "bf16" if device == "mps" else "fp32"
    if key == "bf16" and gpu is not None and not gpu.bf16:
        raise ConfigError(
            f"bf16 is not supported on {gpu.name} (compute capability "
            f"{gpu.capability[0]}.{gpu.capability[1]}, bf16 needs 8.0 or newer); use fp16 or fp32"
        )
    if key == "fp16" and device == "cpu":
        raise ConfigError("fp16 is not supported for running models on the CPU; use fp32")
    return key  # type: ignore[return-value]


def torch_dtype(precision: str):
    """The torch dtype a precision loads weights in."""
    key = _PRECISION_ALIASES.get(precision, precision)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[key]


def check_qlora(device: str, hardware: Hardware | None = None) -> None:
    """Raises ConfigError with a one-line reason unless 4-bit (QLoRA) loading can run here."""
    hw = hardware if hardware is not None else probe()
    if hw.gpu(device) is None:
        raise ConfigError(
            f"QLoRA (4-bit base weights) needs a CUDA GPU; this run's device is {device}. "
            "Train without 4-bit, or run on a machine with an NVIDIA GPU"
        )
    if not hw.bitsandbytes:
        raise ConfigError('QLoRA needs bitsandbytes: pip install -e ".[gpu]"')


def enable_fast_matmul(device: str, hardware: Hardware | None = None) -> None:
    """Turns on TF32 matmuls on Ampere or newer GPUs (a no-op elsewhere)."""
    hw = hardware if hardware is not None else probe()
    gpu = hw.gpu(device)
    if gpu is not None and gpu.capability >= (8, 0):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def free_bytes(device: str) -> int | None:
    """Free memory of a CUDA device right now, in bytes; None for the CPU and MPS."""
    if not device.startswith("cuda"):
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def rows_that_fit(device: str, bytes_per_row: float, *, cpu_rows: int, most: int,
                  share: float = 0.3) -> int:
    """Rows per batch on a device: ``cpu_rows`` off CUDA (the CPU figures were measured with
    it); on a CUDA device as many rows as fit ``share`` of its free memory at
    ``bytes_per_row``, never fewer than cpu_rows nor more than ``most``."""
    free = free_bytes(device)
    if free is None:
        return cpu_rows
    return int(max(cpu_rows, min(most, share * free // max(1.0, bytes_per_row))))


def describe(device: str, hardware: Hardware | None = None) -> str:
    """A short human name for a device: "cuda:0 (NVIDIA H100, 80 GB)", "cpu (2 cores)"."""
    hw = hardware if hardware is not None else probe()
    gpu = hw.gpu(device)
    if gpu is not None:
        return f"{device} ({gpu.name}, {gpu.memory_bytes / 2**30:.0f} GB)"
    if device == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({hw.cpu_cores} cores)"


def device_options(hardware: Hardware | None = None) -> list[str]:
    """Choices for a page's device selector: "auto" first, then what this machine has."""
    hw = hardware if hardware is not None else probe()
    return ["auto", *hw.devices()]


def option_label(option: str, hardware: Hardware | None = None) -> str:
    """How a page shows one of device_options(): "auto: cuda:0 (NVIDIA H100, 80 GB)", or the
    device described."""
    hw = hardware if hardware is not None else probe()
    if option != "auto":
        return describe(option, hw)
    try:
        return f"auto: {describe(resolve_device('auto', hw), hw)}"
    except ConfigError:  # $WORKBENCH_DEVICE names a device this machine lacks: a run says so
        return f"auto (${DEVICE_ENV}={os.environ.get(DEVICE_ENV)})"


def _listing(hw: Hardware) -> str:
    return ", ".join(describe(d, hw) for d in hw.devices())
