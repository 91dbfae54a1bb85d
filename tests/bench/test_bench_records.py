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


def test_serving_overhead_ratios_use_the_batches_each_server_ran() -> None:
    """CPU outside the pipeline = server CPU per request - the in-process CPU per image at the
    batch sizes the server ran; throughput is held to the pipeline on the same batch mix; the
    rounds' ratios give a median and a range."""
    from bench.serving_overhead import median_overhead, overhead, pipeline_share

    pipe = {"b1": {"cpu_ms_per_image": 10.0, "img_per_s": 100.0},
            "b4": {"cpu_ms_per_image": 8.0, "img_per_s": 125.0}}  # fmt: skip
    share = pipeline_share(pipe, {"1": 100, "4": 300})  # 100 batches of 1, 75 of 4
    assert share["cpu_ms_per_image"] == pytest.approx(8.5)
    assert share["img_per_s"] == pytest.approx(400 / (100 / 100 + 300 / 125))
    assert share["mean_batch_size"] == pytest.approx(400 / 175, abs=0.01)
    assert pipeline_share(pipe, {"3": 10})["cpu_ms_per_image"] == 8.0  # the nearest size

    def cell(cpu: float, rps: float, sizes: dict[str, int]) -> dict[str, object]:
        return {"cpu_ms_per_request": cpu, "throughput_rps": rps, "images_by_batch_size": sizes}

    rounds = []
    for ts_cpu in (9.0, 10.0, 12.0):
        servers = {
            "gateway": {"4": cell(8.5, 120.0, {"4": 400})},
            "torchserve": {"4": cell(ts_cpu, 90.0, {"4": 400})},
        }
        rounds.append(overhead({"pipeline": pipe, "servers": servers}))
    assert rounds[0]["gateway_c4_cpu_ms_outside_pipeline"] == 0.5
    assert rounds[0]["gateway_c4_vs_pipeline_throughput"] == 0.96
    assert [r["c4_gateway_over_torchserve_overhead"] for r in rounds] == [0.5, 0.25, 0.125]
    med = median_overhead(rounds)
    assert med["c4_gateway_over_torchserve_overhead"] == 0.25
    assert med["c4_gateway_over_torchserve_overhead_range"] == [0.125, 0.5]
    assert med["gateway_c4_batch_sizes_observed"] is True
