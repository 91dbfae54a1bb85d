"""SepViT: Separable Vision Transformer.

Paper: "SepViT: Separable Vision Transformer", Li et al., arXiv:2203.15380.

One implementation serves two layouts of the official code:

* the **classification** layout (``dense=False``): learnable window tokens, pointwise
  self-attention (PSA) only in blocks whose window grid has more than one window at the
  reference resolution, final LayerNorm + global average pooling + linear head. Its
  ``state_dict()`` keys and shapes equal the official ``SepViT_{Lite,Tiny,Small,Base}``.
* the **dense** layout (``dense=True``) used by the official detection and segmentation
  backbones: zero window tokens, PSA in every block, padding to the window size, a LayerNorm
  per stage output (``norm_list``), no head. Multi-scale outputs at strides 4/8/16/32.

Faithfulness notes (each matches the official code and is relied on by checkpoint parity):

* Block: ``x + attn(norm1(windows(x)))`` then ``x + mlp(norm2(x))``; the window token is
  concatenated *before* ``norm1``; LayerNorm eps is 1e-6 for ``norm1``/``norm2``/``norm``/
  ``norm_list`` and PyTorch's default 1e-5 for the patch-embedding norm and
  ``attn.win_tokens_norm``.
* Inside the attention, each sub-attention has its own shortcut: ``DSA(t) + t`` on the normalised
  windows (window token included), then ``PSA(u) + u`` on the window bodies. ``proj`` follows.
* PSA: window token -> LayerNorm -> GELU -> ``PSA_qk`` gives Q and K per window; the values are
  the window features themselves, so each head mixes whole windows with a ``[nW, nW]`` map. The
  softmax scale is ``head_dim ** -0.5`` for both attentions.
* Padding (dense layout, and the classifier at sizes that are not window multiples): the token
  map is padded with zeros *before* ``norm1``, so padded positions equal ``norm1.bias`` inside
  the attention; they are not masked, exactly as in the official detection backbone. Zero window
  tokens likewise become ``norm1.bias``.
* A conditional position encoding (depthwise 3x3 conv + identity, ``pos_block``) follows the first
  block of each stage.

Classification at other input sizes: the official classifier only runs at 224x224, because the
number of window tokens of each block is fixed by that resolution. Here the *block layout* (which
blocks have PSA, i.e. ``win_tokens``/``PSA_qk``) is always taken from the reference resolution
``layout_size`` (224, the official table), so the set of parameter names never depends on the
input size. ``img_size`` sizes each block's window-token grid (``ceil(H_s / ws) x ceil(W_s / ws)``
at stage resolution ``H_s x W_s``). Blocks without PSA attend globally over their stage, as the
official single-window blocks do. An official 224 checkpoint used at another size has its
window-token grids resized by bicubic interpolation (:func:`resample_window_tokens`), the way ViT
position tables are resized; an input whose grid differs from the constructed one is resampled the
same way on the fly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, backbone_state, check_batch

__all__ = [
    "SEPVIT_VARIANTS",
    "SepViT",
    "checkpoint_filter_fn",
    "resample_window_tokens",
    "stage_resolution",
]

_LN_EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6) in the official variants


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def stage_resolution(size: int, stage: int) -> int:
    """Side of the token map of ``stage`` for an input side ``size``.

    The stem is a 7x7 stride-4 conv with padding 3 and each later embedding a 3x3 stride-2 conv
    with padding 1, so each is a ceiling division.
    """
    side = (size - 1) // 4 + 1
    for _ in range(stage):
        side = (side - 1) // 2 + 1
    return side


def resample_window_tokens(
    tokens: Tensor, grid: tuple[int, int], src_grid: tuple[int, int] | None = None
) -> Tensor:
    """Resize a window-token table ``[1, sh*sw, 1, C]`` laid out on ``src_grid = (sh, sw)`` to
    ``grid = (gh, gw)``, giving ``[1, gh*gw, 1, C]``.

    Without ``src_grid`` the source must be square (the official checkpoints are all 224x224
    grids). Resampling is bicubic with ``align_corners=False``, as for ViT position embeddings.
    """
    _, n, _, c = tokens.shape
    gh, gw = grid
    if src_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"window-token table of {n} windows is not square; its source grid is needed"
            )
        src_grid = (side, side)
    if src_grid[0] * src_grid[1] != n:
        raise ValueError(f"source grid {src_grid} does not hold {n} window tokens")
    if tuple(src_grid) == (gh, gw):
        return tokens
    t = tokens.reshape(1, src_grid[0], src_grid[1], c).permute(0, 3, 1, 2)  # [1, C, sh, sw]
    t = F.interpolate(t.float(), size=(gh, gw), mode="bicubic", align_corners=False)
    return t.to(tokens.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, 1, c)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at inference)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: strided conv then LayerNorm (default eps, as official)."""

    def __init__(self, in_chans: int, embed_dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, H', W', C]`` (channels last)."""
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PosConv(nn.Module):
    """Conditional position encoding: depthwise 3x3 conv plus identity (official ``PosCNN``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim))

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, H, W, C]; the conv runs on a channels-last view, no copy needed.
        feat = x.permute(0, 3, 1, 2)
        return (self.proj(feat) + feat).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# attention and block
# ---------------------------------------------------------------------------------------------
class SeparableAttention(nn.Module):
    """Depthwise separable self-attention: DSA inside windows, then PSA across windows.

    Parameter names follow the official ``SeparableAttention`` (``DSA_qkv``, ``win_tokens_norm``,
    ``PSA_qk``, ``proj``) so checkpoints load key for key.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        do_psa: bool,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if window_size <= 0:
            raise ValueError(f"window_size must be positive, got {window_size}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.do_psa = do_psa
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.attn_drop = attn_drop

        self.DSA_qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if do_psa:
            self.win_tokens_norm = nn.LayerNorm(dim)
            self.win_tokens_act = nn.GELU()
            self.PSA_qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _dsa(self, t: Tensor) -> Tensor:
        """Self-attention inside each window plus its shortcut. ``t: [B, nW, T, C]``."""
        b, nw, n_tok, c = t.shape
        h, hd = self.num_heads, self.head_dim
        # qkv: [B*nW, T, 3, h, hd] -> 3 x [B*nW, h, T, hd]
        q, k, v = self.DSA_qkv(t).view(b * nw, n_tok, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        # out: [B*nW, h, T, hd] -> [B, nW, T, C]
        return out.transpose(1, 2).reshape(b, nw, n_tok, c) + t

    def _psa(self, u: Tensor) -> Tensor:
        """Attention among windows, queried by window tokens. ``u: [B, nW, 1 + ws*ws, C]``.

        Returns the window bodies ``[B, nW, ws*ws, C]`` with the PSA shortcut added.
        """
        b, nw, n_tok, c = u.shape
        h, hd = self.num_heads, self.head_dim
        tokens = self.win_tokens_act(self.win_tokens_norm(u[:, :, 0]))  # [B, nW, C]
        q, k = self.PSA_qk(tokens).view(b, nw, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # [B, h, nW, nW]
        attn = attn.softmax(dim=-1)
        if self.training and self.attn_drop > 0:
            attn = F.dropout(attn, self.attn_drop)
        body = u[:, :, 1:]  # [B, nW, ws*ws, C]
        # values are whole windows per head: [B, h, nW, ws*ws*hd]
        v = body.reshape(b, nw, n_tok - 1, h, hd).permute(0, 3, 1, 2, 4).reshape(b, h, nw, -1)
        out = attn @ v  # [B, h, nW, ws*ws*hd]
        out = out.view(b, h, nw, n_tok - 1, hd).permute(0, 2, 3, 1, 4).reshape(b, nw, n_tok - 1, c)
        return out + body

    def forward(self, x: Tensor, win_tokens: Tensor | None, pad_value: Tensor) -> Tensor:
        """Attend over a normalised token map.

        Args:
            x: ``[B, H, W, C]``, already passed through the block's ``norm1``.
            win_tokens: normalised window tokens ``[1 or B, nW, C]`` (PSA blocks only).
            pad_value: ``[C]`` value of a zero token after ``norm1`` (its bias), used for padding.

        Returns:
            ``[B, H, W, C]``.
        """
        b, height, width, c = x.shape
        if not self.do_psa:
            # one window covering the whole stage, no window token (official win_num == 1 path)
            t = x.reshape(b, 1, height * width, c)
            return self.proj_drop(self.proj(self._dsa(t).view(b, height, width, c)))

        ws = self.window_size
        gh, gw = -(-height // ws), -(-width // ws)
        hp, wp = gh * ws, gw * ws
        if hp != height or wp != width:
            padded = pad_value.expand(b, hp, wp, c).clone()
            padded[:, :height, :width] = x
            x = padded
        # windows: [B, gh, ws, gw, ws, C] -> [B, nW, ws*ws, C]
        win = x.view(b, gh, ws, gw, ws, c).transpose(2, 3).reshape(b, gh * gw, ws * ws, c)
        if win_tokens is None:
            raise ValueError("a PSA block needs window tokens")
        tok = win_tokens.expand(b, gh * gw, c).unsqueeze(2)  # [B, nW, 1, C]
        t = torch.cat((tok, win), dim=2)  # [B, nW, 1 + ws*ws, C]
        body = self._psa(self._dsa(t))  # [B, nW, ws*ws, C]
        out = body.view(b, gh, gw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        if hp != height or wp != width:
            out = out[:, :height, :width]
        return self.proj_drop(self.proj(out))


class SepViTBlock(nn.Module):
    """Transformer block with depthwise separable self-attention (official ``SepViTBlock``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        do_psa: bool,
        learned_tokens: bool,
        token_grid: tuple[int, int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.do_psa = do_psa
        self.token_grid = token_grid
        # Registration order mirrors the official block (timm Block with ``attn`` re-created
        # last), so ``state_dict()`` lists keys in the official order.
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.attn = SeparableAttention(
            dim, num_heads, window_size, do_psa, qkv_bias, qk_scale, attn_drop, drop
        )
        self.win_tokens: nn.Parameter | None = None
        if do_psa and learned_tokens:
            self.win_tokens = nn.Parameter(torch.zeros(1, token_grid[0] * token_grid[1], 1, dim))

    def _tokens(self, height: int, width: int) -> Tensor | None:
        """Normalised window tokens for an ``height x width`` map, ``[1, nW, C]``."""
        if not self.do_psa:
            return None
        ws = self.window_size
        grid = (-(-height // ws), -(-width // ws))
        if self.win_tokens is None:  # dense layout: zero tokens, which norm1 maps to its bias
            return self.norm1.bias.view(1, 1, -1).expand(1, grid[0] * grid[1], -1)
        tokens: Tensor = self.win_tokens
        if grid != self.token_grid:
            tokens = resample_window_tokens(tokens, grid, self.token_grid)
        n = self.norm1  # functional call: the module itself runs once per forward
        return F.layer_norm(tokens[:, :, 0], n.normalized_shape, n.weight, n.bias, n.eps)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, H, W, C]
        _, height, width, _ = x.shape
        y = self.attn(self.norm1(x), self._tokens(height, width), self.norm1.bias)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
EDGE = 2  # pixels of the top and left edges that estimate the background


def centre_on_edges(x: Tensor) -> Tensor:
    """``x`` minus, per image and channel, the mean of its top ``EDGE`` rows and left ``EDGE``
    columns. The top-left edges are image content under both the classification crop and the
    top-left letterbox of detection/segmentation (padding is only ever right or bottom)."""
    edges = torch.cat([x[:, :, :EDGE, :].flatten(2), x[:, :, EDGE:, :EDGE].flatten(2)], dim=2)
    return x - edges.mean(dim=2)[:, :, None, None]


class SepViT(Backbone):
    """SepViT backbone and classifier.

    Args:
        embed_dims: channels per stage.
        num_heads: attention heads per stage.
        depths: blocks per stage.
        window_sizes: one window size per block, per stage (7 = DSSA, 14 = GSA in the paper).
        num_classes: classifier outputs (0: no head). Ignored when ``dense``.
        img_size: classification input size (int or (H, W)); sizes the window-token grids.
        layout_size: reference resolution that decides which blocks carry PSA (classifier only).
        dense: build the detection/segmentation layout (see the module docstring).
        out_indices: stages returned by :meth:`forward_intermediates` in the dense layout.
        center_input: subtract each image's background estimate (the mean colour of its top
            and left edges, :func:`centre_on_edges`) before the first stage, so a drawing on any
            solid background looks like one on the normalisation mean (issue 18).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        depths: Sequence[int] = (1, 2, 6, 2),
        window_sizes: Sequence[Sequence[int]] = ((7,), (7, 14), (7, 14) * 3, (7, 7)),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        img_size: int | Sequence[int] = 224,
        layout_size: int = 224,
        dense: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        center_input: bool = False,
    ) -> None:
        super().__init__()
        self.center_input = bool(center_input)
        n_stages = len(depths)
        for name, seq in (("embed_dims", embed_dims), ("num_heads", num_heads)):
            if len(seq) != n_stages:
                raise ValueError(f"{name} has {len(seq)} entries, expected {n_stages} (depths)")
        if len(window_sizes) != n_stages:
            raise ValueError(f"window_sizes has {len(window_sizes)} stages, expected {n_stages}")
        for s, (d, stage_ws) in enumerate(zip(depths, window_sizes, strict=True)):
            if len(stage_ws) < d:
                raise ValueError(f"stage {s}: {d} blocks but only {len(stage_ws)} window sizes")

        self.embed_dims = tuple(embed_dims)
        self.num_heads = tuple(num_heads)
        self.depths = tuple(depths)
        self.window_sizes = tuple(tuple(ws[:d]) for ws, d in zip(window_sizes, depths, strict=True))
        self._init_layout(img_size, dense, num_classes, out_indices, "blocks")

        if dense:  # registered first, as in the official detection backbone
            self.norm_list = nn.ModuleList(
                [nn.LayerNorm(dim, eps=_LN_EPS) for dim in self.embed_dims]
            )
        self.patch_embeds = nn.ModuleList()
        self.pos_drops = nn.ModuleList()
        for i, dim in enumerate(self.embed_dims):
            if i == 0:
                self.patch_embeds.append(PatchEmbed(in_chans, dim, 7, 4))
            else:
                self.patch_embeds.append(PatchEmbed(self.embed_dims[i - 1], dim, 3, 2))
            self.pos_drops.append(nn.Dropout(drop_rate))
        self.pos_block = nn.ModuleList([PosConv(dim) for dim in self.embed_dims])

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.blocks = nn.ModuleList()
        cur = 0
        for s in range(n_stages):
            stage = nn.ModuleList()
            side_h = stage_resolution(self.img_size[0], s)
            side_w = stage_resolution(self.img_size[1], s)
            ref_side = stage_resolution(layout_size, s)
            for j in range(self.depths[s]):
                ws = self.window_sizes[s][j]
                do_psa = True if dense else (ref_side // ws) ** 2 > 1
                stage.append(
                    SepViTBlock(
                        self.embed_dims[s],
                        self.num_heads[s],
                        ws,
                        do_psa=do_psa,
                        learned_tokens=not dense,
                        token_grid=(-(-side_h // ws), -(-side_w // ws)),
                        mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias,
                        qk_scale=qk_scale,
                        drop=drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=dpr[cur + j],
                    )
                )
            self.blocks.append(stage)
            cur += self.depths[s]

        if not dense:
            self.norm = nn.LayerNorm(self.num_features, eps=_LN_EPS)
            self.reset_classifier(num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("win_tokens")}

    # -- forward passes ------------------------------------------------------------------------
    def _stage(self, i: int, x: Tensor) -> Tensor:
        """Run stage ``i``: ``[B, C_in, H, W] -> [B, H', W', C]``."""
        if i == 0 and self.center_input:
            x = centre_on_edges(x)
        x = self.pos_drops[i](self.patch_embeds[i](x))
        stage: nn.ModuleList = self.blocks[i]  # type: ignore[assignment]
        for j, blk in enumerate(stage):
            x = blk(x)
            if j == 0:
                x = self.pos_block[i](x)
        return x

    def forward_intermediates(
        self, x: Tensor, indices: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Multi-scale features ``[B, C_i, H/s_i, W/s_i]`` of stages ``indices`` (default
        ``out_indices``; strides 4, 8, 16, 32). Stages after the last requested one are skipped.

        In the dense layout each stage output passes through its ``norm_list`` LayerNorm, as in
        the official detection backbone. Any ``H x W`` is accepted.
        """
        wanted = self._wanted_stages(x, indices)
        outs: list[Tensor] = []
        last = max(wanted)
        for i in range(len(self.depths)):
            tokens = self._stage(i, x)
            if self.dense:
                tokens = self.norm_list[i](tokens)
            x = tokens.permute(0, 3, 1, 2)
            if i in wanted:
                outs.append(x.contiguous())
            if i == last:
                break
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """Last-stage tokens after the final norm, ``[B, H/32, W/32, C]`` (classifier layout)."""
        if self.dense:
            raise RuntimeError("the dense layout has no final norm; use forward_intermediates")
        check_batch(x)
        n = len(self.depths)
        for i in range(n):
            tokens = self._stage(i, x)
            if i < n - 1:
                x = tokens.permute(0, 3, 1, 2)
        return self.norm(tokens)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(1, 2))  # global average pooling
        return x if pre_logits else self.head(x)


# ---------------------------------------------------------------------------------------------
# checkpoint filter
# ---------------------------------------------------------------------------------------------
def checkpoint_filter_fn(
    state_dict: Mapping[str, Any],
    model: SepViT,
    source_img_size: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Convert an official (or already native) SepViT state dict for ``model``.

    * unwraps ``model`` / ``state_dict`` containers and strips ``module.`` and ``backbone.``
      prefixes (mmdet/mmseg checkpoints keep the backbone under ``backbone.``; other entries of
      such checkpoints, e.g. ``neck.*`` or ``decode_head.*``, are dropped);
    * for the dense layout, drops classifier-only tensors (``win_tokens``, ``norm``, ``head``);
    * for the classifier, drops a ``head`` whose class count differs and resizes window-token
      grids to the model's input size. The source grids follow from ``source_img_size`` (the
      input size the weights were trained at); by default they must be square, as the official
      224x224 ones are.

    Returns a dict ready for ``model.load_state_dict``; the caller reports what is missing.
    """
    sd = backbone_state(state_dict)

    own = model.state_dict()
    if all(k in own and own[k].shape == v.shape for k, v in sd.items()) and len(sd) == len(own):
        return dict(sd)  # already native, nothing to rename

    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if model.dense and (k.endswith("win_tokens") or k.startswith(("norm.", "head."))):
            continue
        if k.endswith("win_tokens") and k in own and own[k].shape != v.shape:
            blk = model.get_submodule(k.removesuffix(".win_tokens"))
            if not isinstance(blk, SepViTBlock):
                raise ValueError(f"{k} does not belong to a SepViT block")
            src = None
            if source_img_size is not None:
                stage = int(k.split(".")[1])
                ws = blk.window_size
                src = (
                    -(-stage_resolution(source_img_size[0], stage) // ws),
                    -(-stage_resolution(source_img_size[1], stage) // ws),
                )
            v = resample_window_tokens(v, blk.token_grid, src)
        if k.startswith("head.") and k in own and own[k].shape != v.shape:
            continue
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# variants (Table 1 of the paper; window sizes from the official per-block table)
# ---------------------------------------------------------------------------------------------
def _ws(depths: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Official per-block windows: 7 (DSSA) in stage 1; 7/14 alternating (GSA) after; 7 last."""
    return (
        (7,) * depths[0],
        (7, 14) * (depths[1] // 2),
        (7, 14) * (depths[2] // 2),
        (7,) * depths[3],
    )


SEPVIT_VARIANTS: dict[str, dict[str, Any]] = {
    "sepvit_lite": dict(
        embed_dims=(32, 64, 128, 256), num_heads=(1, 2, 4, 8), depths=(1, 2, 6, 2),
        window_sizes=_ws((1, 2, 6, 2)), official_name="SepViT_Lite",
    ),
    "sepvit_tiny": dict(
        embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(1, 2, 6, 2),
        window_sizes=_ws((1, 2, 6, 2)), official_name="SepViT_Tiny",
    ),
    "sepvit_small": dict(
        embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(1, 2, 14, 2),
        window_sizes=_ws((1, 2, 14, 2)), official_name="SepViT_Small",
    ),
    "sepvit_base": dict(
        embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), depths=(1, 2, 14, 2),
        window_sizes=_ws((1, 2, 14, 2)), official_name="SepViT_Base",
    ),
}  # fmt: skip
