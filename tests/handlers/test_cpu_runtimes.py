"""bf16 / int8 / auto: host flags, the accuracy gate, auto's choice and its cache, fallbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import handlers.cpu_runtimes as cr
import handlers.runtime as rt
from handlers.pipeline import Pipeline, PipelineConfig
from sepvit import create_model

ROOT = Path(__file__).resolve().parents[2]
CPUINFO = (
    "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_vnni avx512_bf16\n\nprocessor\t: 1\n"
)


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sepvit_lite", num_classes=8, img_size=64).eval()


def _fixed(name: str, logits: torch.Tensor) -> rt.Runtime:
    """Answers ``logits[i]`` for an input image filled with the value ``i``."""
    return rt.Runtime(name, lambda x: [logits[x[:, 0, 0, 0].long()]], torch.device("cpu"))


def test_cpu_flags_from_cpuinfo_and_the_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    flags = cr.cpu_flags(info)
    assert flags["avx512_bf16"] and flags["avx512_vnni"] and not flags["amx_bf16"]
    assert cr.native_bf16(flags)
    monkeypatch.setenv("SEPVIT_CPU_FLAGS_MASK", "avx512_bf16, amx_bf16")
    masked = cr.cpu_flags(info)
    assert not masked["avx512_bf16"] and masked["avx2"] and not cr.native_bf16(masked)
    skipped = cr._candidates(masked, {})
    assert skipped["bf16:torch"] == "no native bf16 (avx512_bf16/amx_bf16 absent)"
    assert not any(cr.cpu_flags(tmp_path / "missing").values())


def test_gate_needs_99_percent_top1_agreement() -> None:
    want = torch.eye(8)[torch.arange(100) % 8] * 5
    one_flip, two_flips = want.clone(), want.clone()
    one_flip[0] = want[1]
    two_flips[:2] = want[2:4]
    x = torch.arange(100.0).view(100, 1, 1, 1).expand(100, 3, 8, 8)  # image i -> answer i
    ok = cr.gate("classify", _fixed("bf16", one_flip), [want], x)
    bad = cr.gate("classify", _fixed("bf16", two_flips), [want], x)
    assert ok.ok and ok.metrics["top1"] == pytest.approx(0.99)
    assert not bad.ok and bad.metrics["top1"] == pytest.approx(0.98)


def test_gate_judges_near_ties_by_probability_not_by_top1() -> None:
    """Random weights give near-uniform answers: a flip between classes fp32 itself barely
    separates is no disagreement, as long as the probabilities stay within 0.02."""
    want = torch.zeros(100, 8)
    want[:, 0] = 1e-3  # class 0 ahead of the rest by far less than the tie margin
    flipped = torch.zeros(100, 8)
    flipped[:, 1] = 1e-3
    x = torch.arange(100.0).view(100, 1, 1, 1).expand(100, 3, 8, 8)
    near = cr.gate("classify", _fixed("bf16", flipped), [want], x)
    assert near.ok and near.metrics["decided"] == 0.0 and near.metrics["top1_all"] == 0.0
    far = flipped.clone()
    far[:, 1] = 0.5  # the probabilities move by ~0.06: a real change
    assert not cr.gate("classify", _fixed("bf16", far), [want], x).ok


def test_gate_inputs_are_dataset_images_plus_golden(classifier: torch.nn.Module) -> None:
    full = cr.gate_inputs(classifier, (64, 64))
    quick = cr.gate_inputs(classifier, (64, 64), quick=True)
    assert full.shape == (cr.GATE_IMAGES + 4, 3, 64, 64)
    assert torch.equal(quick[: cr.QUICK_GATE_IMAGES], full[: cr.QUICK_GATE_IMAGES])
    # real scenes, normalised: mid-grey backgrounds sit near 0, shapes away from it
    assert full[: cr.GATE_IMAGES].abs().mean() < 1.5 and full.std() > 0.2


def test_auto_picks_the_fastest_gated_candidate_and_caches_it(
    classifier: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candidates with planted speeds: the fastest fails its gate, the next one wins; the second
    load reads the decision (no search), a changed flag set searches again."""
    eager = rt.build_runtime("eager", classifier, (64, 64))
    flags = dict.fromkeys(cr.CPU_FLAGS, True)
    monkeypatch.setattr(cr, "cpu_flags", lambda: dict(flags))
    speeds = {"eager": 10.0, "onnxruntime": 20.0, "bf16:torch": 40.0, "int8:dynamic": 80.0}
    monkeypatch.setattr(cr, "_rates", lambda runtimes, x, t: {n: speeds[n] for n in runtimes})
    opts = {"auto_candidates": list(speeds)}
    built: list[tuple[str, dict[str, Any]]] = []

    def build(name: str, extra: dict[str, Any]) -> rt.Runtime:
        built.append((name, extra))
        if name == "int8":  # fast but wrong: every answer moved to another class
            return rt.Runtime(name, lambda x: [eager(x)[0].roll(1, dims=-1)], eager.device)
        return rt.Runtime(name, eager.run, eager.device, {"engine": "test"})

    first = cr.auto_runtime(classifier, (64, 64), build, tmp_path, 1, opts)
    assert first.name == "bf16" and first.info["chosen"] == "bf16:torch"
    assert first.info["img_per_s"] == 40.0 and not first.info["cached"]
    assert ("bf16", {"bf16_engine": "torch"}) in built
    cands = first.info["candidates"]
    assert cands["int8:dynamic"]["gate_ok"] is False and cands["bf16:torch"]["gate_ok"] is True
    assert "gate" not in cands["onnxruntime"]  # slower than a passing one: never gated
    built.clear()
    monkeypatch.setattr(cr, "_search", lambda *a: pytest.fail("the decision was cached"))
    again = cr.auto_runtime(classifier, (64, 64), build, tmp_path, 1, opts)
    assert again.name == "bf16" and again.info["cached"]
    assert built == [("bf16", {"bf16_engine": "torch"})]
    assert len(list((tmp_path / "auto").glob("*.json"))) == 1
    flags["avx512_bf16"] = False  # another host: a new key, a new search (which now fails)
    with pytest.raises(pytest.fail.Exception):
        cr.auto_runtime(classifier, (64, 64), build, tmp_path, 1, opts)


def test_auto_without_bf16_or_onnx_candidates_runs_eager_or_better(
    classifier: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real search (no export) on a host whose bf16 flags are masked."""
    monkeypatch.setenv("SEPVIT_CPU_FLAGS_MASK", "avx512_bf16,amx_bf16")
    opts: dict[str, Any] = {"auto_candidates": ["eager", "bf16:torch"]}
    runtime = rt.build_runtime("auto", classifier, (64, 64), cache_dir=tmp_path, options=opts)
    assert runtime.name == "eager" and runtime.info["chosen"] == "eager"
    assert runtime.info["candidates"]["bf16:torch"]["skipped"].startswith("no native bf16")
    assert runtime.info["candidates"]["eager"]["img_per_s"] > 0
    assert runtime.info["flags"]["avx512_bf16"] is False


def test_pipeline_reports_a_failed_gate_and_falls_back(
    classifier: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = rt.build_runtime

    def wrong_bf16(name: str, model: torch.nn.Module, *a: Any, **k: Any) -> rt.Runtime:
        eager = real("eager", model, *a, **k)
        if name == "eager":
            return eager
        return rt.Runtime("bf16", lambda x: [eager(x)[0].roll(1, dims=-1)], eager.device)

    monkeypatch.setattr("handlers.pipeline.build_runtime", wrong_bf16)
    pipe = Pipeline(classifier, PipelineConfig(runtime="bf16"))
    assert pipe.runtime.name == "eager" and not pipe.parity.ok
    info = pipe.runtime_info
    assert info["requested"] == "bf16" and info["serving"] == "eager"
    assert "DISAGREES" in info["fallback"] and "top1" in info["fallback"]


def test_bf16_refuses_a_host_without_native_bf16(
    classifier: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEPVIT_CPU_FLAGS_MASK", "avx512_bf16,amx_bf16")
    with pytest.raises(rt.RuntimeUnavailable, match="native bf16"):
        rt.build_runtime("bf16", classifier, (64, 64), cache_dir=tmp_path)
    pipe = Pipeline(classifier, PipelineConfig(runtime="bf16"))
    assert pipe.runtime.name == "eager" and "native bf16" in pipe.runtime_info["fallback"]


def test_demo_classifier_under_auto_agrees_with_fp32_on_unseen_drawings() -> None:
    """Whatever auto picks on this host answers like fp32 on >= 98 % of the test split (never
    used for training, calibration or the gate), through the whole pipeline."""
    ckpt = ROOT / "model_store" / "sepvit_lite_shapes_cls" / "model.safetensors"
    if not ckpt.is_file():
        pytest.skip("demo classifier not trained (make models)")
    import io

    from PIL import Image

    from sepvit.checkpoint import read_metadata
    from sepvit.data import ShapesDataset

    meta = read_metadata(ckpt)
    model = create_model(meta["variant"], task=meta["task"], checkpoint=ckpt).eval()
    auto = Pipeline(model, PipelineConfig(runtime="auto", threads=1))  # as model-config.yaml
    eager = Pipeline(model)
    assert auto.runtime_info["requested"] == "auto"
    assert auto.runtime_info["serving"] == auto.runtime.name
    data = ShapesDataset("test", "classify", size=224, length=120)
    payloads = []
    for scene in data:
        buf = io.BytesIO()
        Image.fromarray(scene.image).save(buf, format="PNG")
        payloads.append(buf.getvalue())
    same = 0
    for i in range(0, len(payloads), 30):
        a = auto.handle(payloads[i : i + 30])
        b = eager.handle(payloads[i : i + 30])
        pairs = zip(a, b, strict=True)
        same += sum(x["top_k"][0]["index"] == y["top_k"][0]["index"] for x, y in pairs)
    assert same / len(payloads) >= 0.98, (auto.runtime.name, same)
