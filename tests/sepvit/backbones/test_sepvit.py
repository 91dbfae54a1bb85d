"""SepViT backbone: official layout, parity with the official implementation, sizes, arguments."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sepvit import SEPVIT_VARIANTS, SepViT, create_model
from sepvit.backbones.sepvit import resample_window_tokens, stage_resolution
from sepvit.profiling import count_macs, count_params
from tests.golden import DATA, seeded_input, seeded_state_dict

GOLDEN = DATA / "golden_official.safetensors"


def reference_listing(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``tests/data/reference/keys_<name>.tsv`` (the official checkpoints' key names and shapes)
    as ``[(key, shape)]``."""
    rows = []
    for line in (DATA / "reference" / f"keys_{name}.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        rows.append((key, dims))
    return rows


OFFICIAL = {name: cfg["official_name"] for name, cfg in SEPVIT_VARIANTS.items()}


def _backbone(name: str, **kw: object) -> SepViT:
    cfg = {k: v for k, v in SEPVIT_VARIANTS[name].items() if k != "official_name"}
    cfg.update(kw)
    return SepViT(**cfg)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(SEPVIT_VARIANTS))
def test_state_dict_equals_official_listing(name: str) -> None:
    ref = reference_listing(OFFICIAL[name])
    sd = create_model(name).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == ref


def test_dense_layout_matches_official_detection_backbone() -> None:
    ref = reference_listing("det_SepViT_Tiny")
    sd = _backbone("sepvit_tiny", dense=True).state_dict()
    # The official detection backbone also builds the classifier's `norm` and `head`, which its
    # forward never uses; ours leaves them out and the checkpoint filter drops them.
    unused = {k for k, _ in ref if k.startswith(("norm.", "head."))}
    assert len(unused) == 4
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == [r for r in ref if r[0] not in unused]


@pytest.mark.parametrize(
    ("name", "millions"),
    [
        ("sepvit_lite", 3.661),
        ("sepvit_tiny", 31.183),
        ("sepvit_small", 46.571),
        ("sepvit_base", 82.377),
    ],
)
def test_parameter_counts(name: str, millions: float) -> None:
    assert round(count_params(create_model(name)) / 1e6, 3) == millions


@pytest.mark.parametrize(
    ("name", "gmacs"),
    [("sepvit_lite", 0.57), ("sepvit_tiny", 4.52), ("sepvit_small", 7.46), ("sepvit_base", 13.06)],
)
def test_macs_at_224_within_3_percent_of_paper(name: str, gmacs: float) -> None:
    macs = count_macs(create_model(name)) / 1e9
    assert abs(macs / gmacs - 1) <= 0.03, macs


@pytest.mark.parametrize(("name", "tag"), [("sepvit_lite", "lite"), ("sepvit_tiny", "tiny")])
def test_logits_match_official_implementation(name: str, tag: str) -> None:
    """Golden logits come from the official code with the same seeded weights (tests/golden.py)."""
    golden = load_file(str(GOLDEN))[f"cls_{tag}"]
    model = create_model(name).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    with torch.no_grad():
        logits = model(seeded_input((2, 3, 224, 224)))
    assert (logits - golden).abs().max().item() <= 1e-5


def test_dense_features_match_official_detection_backbone() -> None:
    golden = load_file(str(GOLDEN))
    model = _backbone("sepvit_lite", dense=True).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    with torch.no_grad():
        feats = model.forward_intermediates(seeded_input((1, 3, 97, 131)))
    for i, f in enumerate(feats):
        assert (f - golden[f"dense_lite_97x131_{i}"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("hw", [(97, 131), (224, 224), (512, 384), (64, 200)])
def test_dense_runs_at_any_size(hw: tuple[int, int]) -> None:
    model = _backbone("sepvit_lite", dense=True).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *hw))
    for i, (f, dim) in enumerate(zip(feats, model.embed_dims, strict=True)):
        assert f.shape == (1, dim, stage_resolution(hw[0], i), stage_resolution(hw[1], i))
        assert torch.isfinite(f).all()
    assert [fi["reduction"] for fi in model.feature_info] == [4, 8, 16, 32]


@pytest.mark.slow
def test_dense_runs_at_detection_resolution() -> None:
    model = _backbone("sepvit_lite", dense=True).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 800, 1216))
    assert feats[-1].shape == (1, 256, 25, 38)


def test_dense_padding_does_not_leak_into_valid_region_shape() -> None:
    """Padding happens inside blocks: outputs keep the unpadded stage size at every stage."""
    model = _backbone("sepvit_lite", dense=True).eval()
    x = torch.randn(1, 3, 100, 100)
    with torch.no_grad():
        feats = model.forward_intermediates(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(25, 25), (13, 13), (7, 7), (4, 4)]


@pytest.mark.parametrize("img_size", [256, (160, 192), 97])
def test_classifier_at_other_sizes(img_size: int | tuple[int, int]) -> None:
    model = create_model("sepvit_lite", num_classes=7, img_size=img_size).eval()
    hw = (img_size, img_size) if isinstance(img_size, int) else img_size
    blk = model.blocks[0][0]
    side = (stage_resolution(hw[0], 0), stage_resolution(hw[1], 0))
    expected = (-(-side[0] // 7), -(-side[1] // 7))
    assert blk.token_grid == expected
    assert blk.win_tokens.shape == (1, expected[0] * expected[1], 1, 32)
    # the parameter names never depend on the size
    assert set(model.state_dict()) == set(create_model("sepvit_lite", num_classes=7).state_dict())
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_official_224_weights_at_other_size_resample_window_tokens() -> None:
    src = create_model("sepvit_lite").eval()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.05)
    official = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst = SepViT(
        **{k: v for k, v in SEPVIT_VARIANTS["sepvit_lite"].items() if k != "official_name"},
        img_size=448,
    )
    from sepvit.checkpoint import load_official_into

    report = load_official_into(dst, {"model": official})
    assert report.exact
    tok = dst.blocks[0][0].win_tokens
    assert tok.shape == (1, 256, 1, 32)  # 112 / 7 = 16 -> 16 x 16 windows
    expected = resample_window_tokens(src.blocks[0][0].win_tokens, (16, 16))
    assert torch.equal(tok, expected)
    # a constant grid stays constant under bicubic resampling
    const = torch.full((1, 64, 1, 4), 3.0)
    assert torch.allclose(resample_window_tokens(const, (5, 3)), torch.full((1, 15, 1, 4), 3.0))


def test_input_size_differing_from_construction_resamples_on_the_fly() -> None:
    model = create_model("sepvit_lite", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 288, 288))
    assert out.shape == (1, 3)


@pytest.mark.parametrize("name", sorted(SEPVIT_VARIANTS))
def test_forward_backward_every_variant(name: str) -> None:
    model = create_model(name, num_classes=5, img_size=(67, 93)).train()
    out = model(torch.randn(2, 3, 67, 93))
    assert out.shape == (2, 5)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.blocks[0][0].win_tokens.grad.abs().sum() > 0  # type: ignore[union-attr]


def test_changing_window_size_changes_the_model() -> None:
    base = _backbone("sepvit_lite", num_classes=10).eval()
    ws = ((8,), (8, 14), (8, 14) * 3, (8, 8))
    other = _backbone("sepvit_lite", num_classes=10, window_sizes=ws).eval()
    assert other.blocks[0][0].attn.window_size == 8
    assert other.blocks[0][0].win_tokens.shape != base.blocks[0][0].win_tokens.shape


def test_changing_heads_changes_outputs_with_same_weights() -> None:
    a = _backbone("sepvit_lite", num_classes=10).eval()
    b = _backbone("sepvit_lite", num_classes=10, num_heads=(2, 4, 8, 16)).eval()
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0, 0.1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x), atol=1e-4)
    assert b.blocks[3][0].attn.num_heads == 16


def test_changing_mlp_ratio_and_depths_changes_parameters() -> None:
    a = _backbone("sepvit_lite", num_classes=10)
    b = _backbone("sepvit_lite", num_classes=10, mlp_ratio=2.0)
    assert count_params(b) < count_params(a)
    c = _backbone("sepvit_lite", num_classes=10, depths=(1, 2, 4, 2))
    assert len(c.blocks[2]) == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_heads": (3, 2, 4, 8)},  # 32 channels, 3 heads
        {"depths": (1, 2, 6)},
        {"window_sizes": ((7,), (7,), (7, 14) * 3, (7, 7))},  # stage 1 has 2 blocks
        {"img_size": (0, 5)},
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _backbone("sepvit_lite", **kwargs)


def test_bad_input_rank_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="image batch"):
        create_model("sepvit_lite")(torch.randn(3, 224, 224))


def test_window_tokens_excluded_from_weight_decay() -> None:
    names = create_model("sepvit_lite").no_weight_decay()
    assert "blocks.0.0.win_tokens" in names and all(n.endswith("win_tokens") for n in names)


def test_non_square_window_token_grids_resample_correctly() -> None:
    tokens = torch.arange(2 * 4, dtype=torch.float32).reshape(1, 8, 1, 1)  # 2 x 4 grid
    same = resample_window_tokens(tokens, (2, 4), src_grid=(2, 4))
    assert same is tokens
    out = resample_window_tokens(tokens, (4, 2), src_grid=(2, 4))  # not a transpose
    assert out.shape == (1, 8, 1, 1) and not torch.equal(out, tokens)
    with pytest.raises(ValueError, match="not square"):
        resample_window_tokens(tokens, (3, 3))
    # a (224, 448) classifier run at 448 x 224 resamples its own (8, 16) grid, not a square one
    model = create_model("sepvit_lite", num_classes=3, img_size=(224, 448)).eval()
    assert model.blocks[0][0].token_grid == (8, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 448, 224)).shape == (1, 3)
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3)


def test_dense_is_chosen_by_task() -> None:
    with pytest.raises(TypeError, match="task"):
        create_model("sepvit_lite", dense=True)


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_center_input_ignores_the_background_colour(task: str) -> None:
    """With ``center_input`` a drawing on any solid background gives the same outputs: the
    background colour (read from the top/left edges) is subtracted before the first stage."""
    from sepvit.backbones.sepvit import centre_on_edges

    torch.manual_seed(0)
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 20:44, 16:40] = torch.tensor([1.5, -0.5, 0.8])[:, None, None]  # a square
    shifted = x + torch.tensor([-1.2, 0.9, 2.0])[None, :, None, None]  # another background
    assert torch.allclose(centre_on_edges(shifted), x, atol=1e-6)
    model = SepViT(
        **_lite(), num_classes=8, img_size=64, center_input=True, dense=task != "classify"
    )
    plain = SepViT(**_lite(), num_classes=8, img_size=64, dense=task != "classify")
    for name, p in model.named_parameters():  # trained-like biases: at init they are all zero,
        if name.endswith("bias"):  # and a LayerNorm of an all-zero token amplifies rounding
            p.data.normal_(0, 0.1)
    plain.load_state_dict(model.state_dict())  # no new parameters
    model.eval(), plain.eval()
    with torch.no_grad():
        for a, b in zip(_flat(model(shifted)), _flat(model(x)), strict=True):
            assert torch.allclose(a, b, atol=1e-4)
        assert not torch.allclose(_flat(plain(shifted))[0], _flat(plain(x))[0], atol=1e-2)


def _lite() -> dict[str, object]:
    return {k: v for k, v in SEPVIT_VARIANTS["sepvit_lite"].items() if k != "official_name"}


def _flat(out: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return out if isinstance(out, list) else [out]
