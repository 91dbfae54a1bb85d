"""Benchmark records: host facts from /proc/cpuinfo, and the report drops JSON without them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from bench import hostinfo, report

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu avx2 fma avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: another
"""


def test_cpuinfo_names_the_first_processor_and_its_flags(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    monkeypatch.setenv("SEPVIT_CPU_FLAGS_MASK", "avx512_bf16")  # the record keeps real flags
    info = hostinfo.cpuinfo(path)
    assert (info["cpu_model"], info["family"], info["model"], info["stepping"]) == (
        "AMD EPYC",
        "26",
        "2",
        "1",
    )
    assert info["flags"]["avx512_bf16"] and info["flags"]["avx512_vnni"]
    assert not info["flags"]["amx_bf16"]
    assert hostinfo.cpuinfo(tmp_path / "missing") == {}


def test_peak_fraction_and_the_report_drops_untied_records(tmp_path: Path) -> None:
    peaks = {"fp32": {"2": 100.0}, "bf16": {"2": 400.0}}
    assert hostinfo.peak_fraction(peaks, 9.0, 20.0, 2, "bf16") == 0.45
    assert hostinfo.peak_fraction(peaks, 9.0, 20.0, 1, "fp32") is None
    untied = {"machine": {"cpu_model": "AMD EPYC"}, "started": "t", "results": []}
    tied = {"machine": {"family": "26", "flags": {"avx2": True}}, "gemm_peaks": peaks}
    assert not report.tied_to_host(untied) and report.tied_to_host(tied)
    text = "\n".join(report.model_section(untied, tmp_path, "img"))
    assert "does not record its host" in text and "|" not in text


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (Path(__file__).parents[2] / "bench").glob("*.py"))
)
def test_every_bench_script_imports(name: str) -> None:
    """A helper moved between bench modules breaks a script only when it runs (hours later, on
    a quiet machine): importing each one here catches it."""
    importlib.import_module(f"bench.{name}")
