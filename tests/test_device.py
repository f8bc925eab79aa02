"""The device policy: pure decisions over a described machine, no mocked CUDA."""

from __future__ import annotations

import pytest

from workbench import device as D
from workbench.exceptions import ConfigError

A100 = D.GPU(0, "NVIDIA A100", (8, 0), 80 * 2**30)
T4 = D.GPU(0, "Tesla T4", (7, 5), 16 * 2**30)
CPU_ONLY = D.Hardware(cpu_cores=2)
AMPERE = D.Hardware(gpus=(A100, D.GPU(1, "NVIDIA A100", (8, 0), 80 * 2**30)), cpu_cores=16,
                    bitsandbytes=True)
TURING = D.Hardware(gpus=(T4,), cpu_cores=8)
MAC = D.Hardware(mps=True, cpu_cores=8)


@pytest.mark.parametrize(("hw", "want"), [(CPU_ONLY, "cpu"), (AMPERE, "cuda:0"),
                                          (TURING, "cuda:0"), (MAC, "mps")])
def test_auto_takes_the_best_device_present(hw: D.Hardware, want: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(D.DEVICE_ENV, raising=False)
    assert D.resolve_device("auto", hw) == want
    assert D.resolve_device(None, hw) == want


def test_named_devices_are_checked_against_the_machine() -> None:
    assert D.resolve_device("cuda:1", AMPERE) == "cuda:1"
    assert D.resolve_device("CUDA", AMPERE) == "cuda:0"
    assert D.resolve_device("cpu", AMPERE) == "cpu"
    with pytest.raises(ConfigError, match=r"'cuda' is not available.*available: cpu \(2 cores\)"):
        D.resolve_device("cuda", CPU_ONLY)
    with pytest.raises(ConfigError, match="'cuda:2' is not available"):
        D.resolve_device("cuda:2", AMPERE)
    with pytest.raises(ConfigError, match="'mps' is not available"):
        D.resolve_device("mps", AMPERE)
    with pytest.raises(ConfigError, match="not one of auto, cpu"):
        D.resolve_device("tpu", AMPERE)
    with pytest.raises(ConfigError, match="cuda:N"):
        D.resolve_device("cuda:x", AMPERE)


def test_the_environment_overrides_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(D.DEVICE_ENV, "cpu")
    assert D.resolve_device("auto", AMPERE) == "cpu"
    assert D.resolve_device("cuda:1", AMPERE) == "cuda:1"


def test_auto_precision_is_the_best_the_device_does() -> None:
    assert D.resolve_precision("auto", "cpu", CPU_ONLY) == "fp32"
    assert D.resolve_precision("auto", "cuda:0", AMPERE) == "bf16"
    assert D.resolve_precision("auto", "cuda:0", TURING) == "fp16"
    assert D.resolve_precision("auto", "mps", MAC) == "bf16"
    # the train config's older spellings still read
    assert D.resolve_precision("bfloat16", "cuda:1", AMPERE) == "bf16"
    assert D.resolve_precision("float32", "cuda:0", TURING) == "fp32"


def test_impossible_precisions_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match=r"bf16 is not supported on Tesla T4 .*7\.5"):
        D.resolve_precision("bf16", "cuda:0", TURING)
    with pytest.raises(ConfigError, match="fp16 is not supported .* CPU"):
        D.resolve_precision("fp16", "cpu", CPU_ONLY)
    with pytest.raises(ConfigError, match="not one of auto"):
        D.resolve_precision("int3", "cpu", CPU_ONLY)
    # bf16 on the CPU is slow but possible: allowed, as before
    assert D.resolve_precision("bf16", "cpu", CPU_ONLY) == "bf16"


def test_qlora_is_refused_without_cuda_or_bitsandbytes() -> None:
    with pytest.raises(ConfigError, match="needs a CUDA GPU; this run's device is cpu"):
        D.check_qlora("cpu", CPU_ONLY)
    with pytest.raises(ConfigError, match="bitsandbytes"):
        D.check_qlora("cuda:0", TURING)
    D.check_qlora("cuda:1", AMPERE)


def test_descriptions_and_page_options() -> None:
    assert D.describe("cuda:0", AMPERE) == "cuda:0 (NVIDIA A100, 80 GB)"
    assert D.describe("cpu", CPU_ONLY) == "cpu (2 cores)"
    assert D.device_options(AMPERE) == ["auto", "cuda:0", "cuda:1", "cpu"]
    assert D.device_options(CPU_ONLY) == ["auto", "cpu"]


def test_this_machine_probes_without_error() -> None:
    hw = D.probe()
    assert D.resolve_device("cpu", hw) == "cpu"
    assert "cpu" in hw.devices()
