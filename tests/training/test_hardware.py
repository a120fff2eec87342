"""The training machine's description: CPU name and native bf16 from /proc/cpuinfo."""

from __future__ import annotations

import pytest
import torch

from pneumolab.training import hardware

EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"
XEON_AMX = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def write(text: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(hardware, "CPU_INFO", path)

    return write


def test_a_cpu_without_bf16_instructions_is_described_as_such(cpuinfo):
    cpuinfo(EPYC_AVX2)
    assert not hardware.cpu_has_bf16()
    described = hardware.describe_device("CPUAccelerator")
    assert described.startswith("AMD EPYC (CPU, ")
    assert torch.backends.cpu.get_cpu_capability() in described
    assert described.endswith("no native bf16)")


def test_a_cpu_with_bf16_instructions_is_described_as_such(cpuinfo):
    cpuinfo(XEON_AMX)
    assert hardware.cpu_has_bf16()
    assert hardware.describe_device("CPUAccelerator").endswith(", native bf16)")


def test_without_cpuinfo_the_cpu_is_named_by_platform(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "CPU_INFO", tmp_path / "missing")
    assert not hardware.cpu_has_bf16()
    assert hardware.cpu_name()  # platform.processor() or the machine type, never empty
