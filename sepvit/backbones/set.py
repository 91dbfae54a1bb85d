"""SeT: Patch-based Separable Transformer.

Paper: "Patch-based Separable Transformer for Visual Recognition", Sun, Yue, Zhao, Torr, Bai
(IEEE TPAMI; manuscript received 29 July 2021). Text used: ``shared/seeds/
set_separable_transformer_paper.txt`` (Sections 3.1-3.5, Tables 1, 2, 3, 6 and 7).

The network (Tables 1 and 2): a ResNet stem (7x7/2 conv with 64 channels, 3x3/2 max-pool), then
four stages at strides 4/8/16/32, separated by 2x2/2 average pooling. Each stage stacks
bottleneck blocks (``C = B * D`` channels outside, ``D`` inside; ``D`` = 64/128/256/512,
``G`` = 4/8/8/8 heads) whose spatial operator is the *separable attention*:

* **pixel-wise attention** (every stage): the map is cut into non-overlapping ``K x K`` query
  patches; each patch attends to its ``(K + 2O) x (K + 2O)`` reference patch (the query patch plus
  an ``O``-pixel border, step ``K``), with ``G`` heads;
* **patch-wise attention** (stages 3 and 4 only, Section 3.5): every patch is pooled into one
  token and every pixel attends to all patch tokens (global interaction).

Block::

    h = SiLU(BN(conv1x1_{C_in->D}(x)))
    h = h + W^O  PixelAttn(h)             # eq. (1)-(3)
    h = h + W^O' PatchAttn(BN(h))         # eq. (4)-(5), stages 3-4; the BN of Section 3.3
    h = SiLU(BN(h))                       # "normalization after the identity mapping"
    out = SiLU(BN(conv1x1_{D->C}(h)) + shortcut(x))   # shortcut: 1x1 conv + BN if C_in != C

Padding and masking (Section 3.1): a map whose side is not a multiple of ``K`` is zero-padded at
the bottom/right to whole patches, and reference patches reach ``O`` pixels beyond the map on
every side. Every key outside the valid ``H x W`` region is masked out of the pixel-wise softmax
(additive ``-inf``), and the patch pooling is a softmax-weighted average over the valid pixels of
a patch only, so valid outputs never depend on padding (``tests/sepvit/backbones/test_set.py``).
Map sizes enter only as Python ints from ``x.shape`` (static in an exported graph); there is no
control flow on tensor values, so the dynamo ONNX exporter traces the model as is.

Choices where the paper is ambiguous (also in ``docs/models.md``):

1. **Relative positional embedding.** Eq. (1) gives ``M = q k^T + q r^T`` with a learned ``r``
   of shape ``(K+2O)^2 x D``: one embedding per position of the reference patch, i.e. relative
   to the *query patch*. It is implemented exactly, as ``q (k + r)^T`` (``rel_pos``, per head
   ``(K+2O)^2 x D/G``). Because ``r`` cannot tell a query pixel where it sits inside its patch, a
   learned bias per head indexed by the *pixel* offset between query and key (a Swin-style table
   of ``(2K+2O-1)^2`` entries, ``rel_bias``) is added too; ``rel_bias=False`` leaves eq. (1)
   alone.
2. **Softmax scale.** Eq. (2) prints ``1/sqrt(D)`` outside the softmax; we use the standard
   ``softmax(M / sqrt(D/G))`` per head, for both attentions.
3. **Patch-wise attention.** Eq. (4) has pixel queries ``q' = y W_q'`` and patch-token keys and
   values; its second term ``q' (v')^T`` is read as ``q' (r')^T``, since the text then defines
   the absolute patch position embedding ``r'``. Implemented as ``q' (k' + r')^T``. The
   ``K^2 -> 1`` linear pooling ("identical to a weighted average pooling") is a softmax-weighted
   average with learned logits (zero at initialisation: plain average pooling), so masking a
   padded pixel simply drops it. ``r'`` is a learned grid sized from ``img_size``
   (``ceil(H_s/K) x ceil(W_s/K)`` patches at stage resolution ``H_s x W_s``), resized
   bilinearly on the fly for other grids, the way ViT position tables are; the paper itself
   re-initialises ``r'`` for COCO. Dense (detection/segmentation) backbones are built at 224.
4. **Skip connections.** "When both attentions are applied, the final output of the attention
   module is z", with a skip from the module input. ``x + z`` alone would discard the local
   pixel-wise output (at 224 the last stage is a single patch, so every pixel would receive the
   same vector); we read it as one residual per attention, i.e. ``x + y + z``.
5. **Output projections.** The paper stacks the heads without naming a projection. Table 6 pins
   the sizes: pixel-wise attention in every stage adds 4.0 ``D^2`` per block over the
   attention-free network (19.2 M against 25.5 M minus ResNet-50's 3x3 convs), and patch-wise
   attention in stages 3-4 adds 4.2 ``D^2`` (24.2 M). So each attention has ``W_q, W_k, W_v`` and
   one ``D x D`` output projection (``W^O``, ``W^O'``), as in [42].
6. **Keys and values per reference patch.** Eq. (1) computes ``k, v`` from the content of each
   reference patch; overlapping pixels are then projected once per patch that sees them, which
   is what the paper's FLOPs count (SeT-8/SeT-16 land within 5 % of Table 3 only this way).
   ``kv_per_patch=False`` projects every pixel once and gathers the results instead: the same
   outputs (same weights), with ``(K+2O)^2/K^2`` times fewer key/value MACs.
7. **Downsampling.** Table 1's 2x2/2 average pooling sits between stages (``ceil_mode``: an odd
   map's last row/column is averaged over its valid pixels, so every stage side is
   ``ceil(side / 2)``, as :func:`~sepvit.backbones.sepvit.stage_resolution` and the detector's
   anchors expect). The first block of each stage widens channels through its shortcut.
8. **Patch-wise attention only in stages 3-4** (Section 3.5; ``patch_stages``). Table 3's SeT-16
   (24.7 M, 4.4 G, 81.7 %) is Table 6's row with patch-wise attention in *all* stages; the
   stage 3-4 network is listed there at 24.2 M / 4.1 G.

Measured at 224x224 with 1000 classes (``sepvit.profiling``; pinned by
``tests/sepvit/backbones/test_set.py``):

=======  ==========  ==================  ========  =================
variant  params (M)  Table 3 (M)         MACs (G)  Table 3 (G)
=======  ==========  ==================  ========  =================
set_8    9.900       9.7 (+2.1 %)        1.709     1.8 (-5.0 %)
set_16   24.595      24.7 (-0.4 %)       4.279     4.4 (-2.7 %)
set_33   43.185      40.3 (+7.2 %)       8.521     7.7 (+10.7 %)
=======  ==========  ==================  ========  =================

SeT-33 cannot be matched together with SeT-16: the two differ only by 17 stage-3 blocks, so
Table 3 implies 15.6 M / 17 = 0.92 M per block, i.e. 0.39 M (6.0 ``D^2``) for the attention
beside the two 1x1 convs, while SeT-16's own 24.7 M (and Table 6) require about 8 ``D^2`` per
attention block: without the two output projections SeT-16 has 22.2 M (-10 %). Its MACs
likewise: Table 3 adds 3.3 G (194 M per stage-3 block), which fits ``kv_per_patch=False``
(200 M), while SeT-8 and SeT-16 fit the per-patch keys and values (250 M per block).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, backbone_state
from .sepvit import DropPath, stage_resolution

__all__ = [
    "SET_VARIANTS",
    "PatchAttention",
    "PixelAttention",
    "SeT",
    "SeTBlock",
    "SeparableAttention",
    "checkpoint_filter_fn",
]


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _window_index(n: int, step: int, size: int) -> Tensor:
    """``[n * size]`` flat indices of ``n`` windows of ``size`` taken every ``step``."""
    return (torch.arange(n)[:, None] * step + torch.arange(size)[None, :]).reshape(-1)


def _relative_index(k: int, o: int) -> Tensor:
    """``[K*K, R*R]`` index into a ``(2K+2O-1)^2`` table of (query pixel, key pixel) offsets.

    Query ``(a, b)`` of a patch and key ``(c, d)`` of its reference patch (``R = K + 2O``, whose
    row ``c`` is patch row ``c - O``) are ``(c - O - a, d - O - b)`` apart.
    """
    r = k + 2 * o
    span = 2 * k + 2 * o - 1
    qa = torch.arange(k)
    kc = torch.arange(r)
    dh = kc[None, :] - o - qa[:, None] + (k - 1 + o)  # [K, R] in [0, span)
    idx = dh[:, None, :, None] * span + dh[None, :, None, :]  # [K(a), K(b), R(c), R(d)]
    return idx.reshape(k * k, r * r)


def _valid_mask(n: int, step: int, size: int, offset: int, limit: int) -> Tensor:
    """``[n, size]``: whether pixel ``j`` of window ``i`` (image coordinate ``i*step + j - offset``)
    lies in ``[0, limit)``."""
    coord = torch.arange(n)[:, None] * step + torch.arange(size)[None, :] - offset
    return (coord >= 0) & (coord < limit)


def _window_mask(
    grid: tuple[int, int], step: int, size: int, offset: int, valid: tuple[int, int]
) -> Tensor:
    """``[gh*gw, size*size]``: which pixels of each ``size x size`` window (windows every
    ``step`` pixels, starting ``offset`` pixels before the map) lie in the valid ``h x w`` map."""
    rows = _valid_mask(grid[0], step, size, offset, valid[0])  # [gh, size]
    cols = _valid_mask(grid[1], step, size, offset, valid[1])  # [gw, size]
    ok = rows[:, None, :, None] & cols[None, :, None, :]  # [gh, gw, size, size]
    return ok.reshape(grid[0] * grid[1], size * size)


def _conv_bn(c_in: int, c_out: int, zero_init: bool = False) -> nn.Sequential:
    """1x1 conv (no bias) + BatchNorm; ``zero_init`` starts the BN scale at 0."""
    bn = nn.BatchNorm2d(c_out)
    if zero_init:
        nn.init.zeros_(bn.weight)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), bn)


def _check_heads(dim: int, num_heads: int) -> int:
    if num_heads <= 0 or dim % num_heads != 0:
        raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
    return dim // num_heads


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------
class PixelAttention(nn.Module):
    """Pixel-wise separable attention, eq. (1)-(3): each ``K x K`` query patch attends to its
    ``(K+2O) x (K+2O)`` reference patch; keys outside the valid region are masked.

    Args:
        dim: channels ``D``. num_heads: heads ``G``. patch_size: ``K``. overlap: ``O``.
        qkv_bias: bias of the ``W_q, W_k, W_v`` projection.
        rel_bias: add a learned per-head bias indexed by the pixel offset (module docstring, 1).
        kv_per_patch: compute ``k, v`` from each gathered reference patch, as eq. (1) writes
            them (a pixel in the overlap is projected once per patch that sees it; the paper's
            FLOPs count this). ``False`` projects every pixel once and gathers the results:
            the same outputs with ``(K+2O)^2 / K^2`` times fewer key/value MACs.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_size: int = 8,
        overlap: int = 2,
        qkv_bias: bool = False,
        rel_bias: bool = True,
        kv_per_patch: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = _check_heads(dim, num_heads)
        if patch_size < 1 or overlap < 0:
            raise ValueError(f"need patch_size >= 1 and overlap >= 0, got {patch_size}, {overlap}")
        self.dim = dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.overlap = overlap
        self.ref_size = patch_size + 2 * overlap
        self.kv_per_patch = kv_per_patch
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias)  # W_q, W_k, W_v stacked
        self.proj = nn.Conv2d(dim, dim, 1)  # W^O over the stacked heads
        # eq. (1): r, one D-vector per reference-patch position, split across heads
        self.rel_pos = nn.Parameter(torch.zeros(num_heads, self.ref_size**2, self.head_dim))
        self.rel_bias: nn.Parameter | None = None
        self.rel_index: Tensor | None
        if rel_bias:
            span = 2 * patch_size + 2 * overlap - 1
            self.rel_bias = nn.Parameter(torch.zeros(num_heads, span * span))
            self.register_buffer("rel_index", _relative_index(patch_size, overlap), False)
            nn.init.trunc_normal_(self.rel_bias, std=0.02)
        else:
            self.register_buffer("rel_index", None, False)
        nn.init.trunc_normal_(self.rel_pos, std=0.02)

    def _project(self, x: Tensor, part: slice) -> Tensor:
        """Apply rows ``part`` of the stacked ``W_q, W_k, W_v`` 1x1 conv to ``x``."""
        bias = None if self.qkv.bias is None else self.qkv.bias[part]
        return F.conv2d(x, self.qkv.weight[part], bias)

    def forward(self, x: Tensor, valid: tuple[int, int] | None = None) -> Tensor:
        """``x [B, D, H, W] -> [B, D, H, W]``.

        ``valid = (h, w)``: only the top-left ``h x w`` pixels are real; the rest of ``x`` is
        padding, masked out of every softmax (its outputs are meaningless). Default: all of ``x``.
        """
        b, _, height, width = x.shape
        vh, vw = (height, width) if valid is None else valid
        k, o, r = self.patch_size, self.overlap, self.ref_size
        g, hd, d = self.num_heads, self.head_dim, self.dim
        gh, gw = _ceil_div(height, k), _ceil_div(width, k)
        n = gh * gw
        rows = _window_index(gh, k, r).to(x.device)
        cols = _window_index(gw, k, r).to(x.device)

        def reference_patches(t: Tensor) -> Tensor:
            # pad by O around the patch grid, gather: [B, c, H, W] -> [B, c, gh*R, gw*R]
            t = F.pad(t, (o, gw * k - width + o, o, gh * k - height + o))
            return t.index_select(2, rows).index_select(3, cols)

        if self.kv_per_patch:
            q = self._project(x, slice(0, d))
            kv = self._project(reference_patches(x), slice(d, 3 * d))
        else:
            q, kv = self.qkv(x).split([d, 2 * d], dim=1)
            kv = reference_patches(kv)
        # queries: pad to whole patches; [B, G, hd, gh, K, gw, K] -> [B, G, N, K*K, hd]
        q = F.pad(q, (0, gw * k - width, 0, gh * k - height))
        q = q.reshape(b, g, hd, gh, k, gw, k).permute(0, 1, 3, 5, 4, 6, 2)
        q = q.reshape(b, g, n, k * k, hd)
        # keys/values: [B, 2, G, hd, gh, R, gw, R] -> [2, B, G, N, R*R, hd]
        kv = kv.reshape(b, 2, g, hd, gh, r, gw, r).permute(1, 0, 2, 4, 6, 5, 7, 3)
        key, value = kv.reshape(2, b, g, n, r * r, hd).unbind(0)
        key = key + self.rel_pos[:, None]  # q (k + r)^T = q k^T + q r^T, eq. (1)

        # additive mask [N, 1, R*R]: -inf on keys outside the valid region
        ok = _window_mask((gh, gw), k, r, o, (vh, vw)).to(x.device)[:, None]
        mask = torch.zeros(ok.shape, dtype=x.dtype, device=x.device).masked_fill(~ok, -math.inf)
        mask = mask.expand(g, n, 1, r * r)
        if self.rel_bias is not None and self.rel_index is not None:
            bias = self.rel_bias[:, self.rel_index]  # [G, K*K, R*R]
            mask = mask + bias[:, None]  # [G, N, K*K, R*R]
        # explicit softmax attention: every query has a valid key (its own patch), so no row is
        # fully masked and the plain softmax is safe (SDPA's math path pays for that check)
        attn = (q * self.scale) @ key.transpose(-2, -1) + mask  # [B, G, N, K*K, R*R]
        out = attn.softmax(dim=-1) @ value  # [B, G, N, K*K, hd]
        # [B, G, gh, gw, K, K, hd] -> [B, G, hd, gh, K, gw, K] -> [B, D, H, W]
        out = out.reshape(b, g, gh, gw, k, k, hd).permute(0, 1, 6, 2, 4, 3, 5)
        out = out.reshape(b, d, gh * k, gw * k)
        return self.proj(out[:, :, :height, :width])


class PatchAttention(nn.Module):
    """Patch-wise separable attention, eq. (4)-(5): every pixel queries all patch tokens.

    A patch token is the softmax-weighted average of the patch's valid pixels (learned ``K^2``
    logits); keys get the absolute patch position embedding ``r'`` (module docstring, 3).

    Args:
        dim: channels ``D``. num_heads: heads ``G``. patch_size: ``K``.
        pos_grid: patch grid ``(gh, gw)`` of the learned ``r'`` table.
        qkv_bias: bias of ``W_q', W_k', W_v'``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_size: int = 8,
        pos_grid: tuple[int, int] = (1, 1),
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.head_dim = _check_heads(dim, num_heads)
        if min(pos_grid) < 1:
            raise ValueError(f"pos_grid must be positive, got {pos_grid}")
        self.dim = dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.pos_grid = (int(pos_grid[0]), int(pos_grid[1]))
        self.scale = self.head_dim**-0.5
        self.pool_logits = nn.Parameter(torch.zeros(patch_size * patch_size))
        self.q = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Conv2d(dim, dim, 1)  # W^O' over the stacked heads
        self.pos = nn.Parameter(torch.zeros(1, dim, *self.pos_grid))  # r', [1, D, gh, gw]
        nn.init.trunc_normal_(self.pos, std=0.02)

    def patch_pos(self, grid: tuple[int, int]) -> Tensor:
        """``r'`` for a ``grid = (gh, gw)`` of patches, ``[gh*gw, D]`` (bilinear resize)."""
        pos: Tensor = self.pos
        if grid != self.pos_grid:
            pos = F.interpolate(pos, size=grid, mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)[0]

    def forward(self, x: Tensor, valid: tuple[int, int] | None = None) -> Tensor:
        """``x [B, D, H, W]`` (already normalised) ``-> [B, D, H, W]``; see
        :meth:`PixelAttention.forward` for ``valid``."""
        b, _, height, width = x.shape
        vh, vw = (height, width) if valid is None else valid
        k, g, hd = self.patch_size, self.num_heads, self.head_dim
        gh, gw = _ceil_div(vh, k), _ceil_div(vw, k)  # patches that hold valid pixels
        n = gh * gw

        # pooling weights [N, K*K]: softmax of the logits over the valid pixels of each patch
        ok = _window_mask((gh, gw), k, k, 0, (vh, vw)).to(x.device)
        logits = self.pool_logits.masked_fill(~ok, -math.inf)  # [N, K*K]
        weights = logits.softmax(dim=-1)
        # pixels to patches: [B, D, gh, K, gw, K] -> [B, N, K*K, D]
        xp = x[:, :, : gh * k, : gw * k]
        xp = F.pad(xp, (0, gw * k - xp.shape[-1], 0, gh * k - xp.shape[-2]))
        xp = xp.reshape(b, self.dim, gh, k, gw, k).permute(0, 2, 4, 3, 5, 1)
        xp = xp.reshape(b, n, k * k, self.dim)
        # zero the masked pixels' values too: 0 * garbage could be nan/inf
        xp = xp.masked_fill(~ok[None, :, :, None], 0.0)
        tokens = torch.einsum("nk,bnkd->bnd", weights, xp)  # y_d, [B, N, D]

        key, value = self.kv(tokens).reshape(b, n, 2, self.dim).unbind(2)
        key = key + self.patch_pos((gh, gw))  # q'(k' + r')^T, eq. (4)
        key = key.reshape(b, n, g, hd).transpose(1, 2)  # [B, G, N, hd]
        value = value.reshape(b, n, g, hd).transpose(1, 2)
        q = self.q(x).reshape(b, g, hd, height * width).transpose(2, 3)  # [B, G, H*W, hd]
        out = F.scaled_dot_product_attention(q, key, value, scale=self.scale)  # [B, G, HW, hd]
        return self.proj(out.transpose(2, 3).reshape(b, self.dim, height, width))


class SeparableAttention(nn.Module):
    """Pixel-wise attention, then (optionally) patch-wise attention, each with its residual:
    ``h + Pixel(h)``, then ``h + Patch(BN(h))`` (module docstring, 4).

    Args:
        dim, num_heads, patch_size, qkv_bias: as in :class:`PixelAttention` and
            :class:`PatchAttention`.
        patch_attn: add the patch-wise attention. pos_grid: its position-table grid.
        pixel: the other options of :class:`PixelAttention` (``overlap``, ``rel_bias``,
            ``kv_per_patch``), by name.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_size: int = 8,
        patch_attn: bool = False,
        pos_grid: tuple[int, int] = (1, 1),
        qkv_bias: bool = False,
        **pixel: Any,
    ) -> None:
        super().__init__()
        self.pixel = PixelAttention(dim, num_heads, patch_size, qkv_bias=qkv_bias, **pixel)
        self.patch_norm: nn.BatchNorm2d | None = None
        self.patch: PatchAttention | None = None
        if patch_attn:
            self.patch_norm = nn.BatchNorm2d(dim)
            self.patch = PatchAttention(dim, num_heads, patch_size, pos_grid, qkv_bias)

    def forward(self, x: Tensor, valid: tuple[int, int] | None = None) -> Tensor:
        x = x + self.pixel(x, valid)
        if self.patch is not None and self.patch_norm is not None:
            x = x + self.patch(self.patch_norm(x), valid)
        return x


# ---------------------------------------------------------------------------------------------
# block
# ---------------------------------------------------------------------------------------------
class SeTBlock(nn.Module):
    """Bottleneck block with separable attention (module docstring)::

        h = SiLU(BN(conv1x1(x)))           # C_in -> D
        h = SiLU(BN(SeparableAttention(h)))
        out = SiLU(BN(conv1x1(h)) + shortcut(x))   # D -> C; shortcut: 1x1 conv + BN if C_in != C

    Args:
        in_chs: input channels. out_chs: output channels ``C``. dim: attention channels ``D``.
        num_heads: attention heads.
        drop_path: stochastic depth rate of the residual branch.
        attn: the other options of :class:`SeparableAttention` (``patch_size``, ``overlap``,
            ``patch_attn``, ``pos_grid``, ``qkv_bias``, ``rel_bias``, ``kv_per_patch``), by name.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        dim: int,
        num_heads: int,
        drop_path: float = 0.0,
        **attn: Any,
    ) -> None:
        super().__init__()
        self.reduce = _conv_bn(in_chs, dim)
        self.attn = SeparableAttention(dim, num_heads, **attn)
        self.norm = nn.BatchNorm2d(dim)
        self.expand = _conv_bn(dim, out_chs, zero_init=True)  # each block starts as identity
        self.shortcut: nn.Module = _conv_bn(in_chs, out_chs) if in_chs != out_chs else nn.Identity()
        self.act = nn.SiLU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, valid: tuple[int, int] | None = None) -> Tensor:
        """``x [B, C_in, H, W] -> [B, C, H, W]``; ``valid`` as in :meth:`PixelAttention.forward`."""
        h = self.act(self.reduce(x))
        h = self.act(self.norm(self.attn(h, valid)))
        return self.act(self.shortcut(x) + self.drop_path(self.expand(h)))


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class SeT(Backbone):
    """SeT backbone and classifier.

    Args:
        depths: blocks per stage ``[L1..L4]``. bottleneck: ``B`` (``C = B * D``).
        dims: attention channels ``D`` per stage (64, 128, 256, 512).
        num_heads: heads ``G`` per stage (4, 8, 8, 8).
        patch_size: ``K``. overlap: ``O``.
        patch_stages: per stage, whether its blocks also apply patch-wise attention.
        stem_chs: stem width.
        num_classes: classifier outputs (0: no head). Ignored when ``dense``.
        img_size: reference input size (int or (H, W)); sizes the patch position tables ``r'``.
        dense: detection/segmentation layout (no head; :meth:`forward` returns the features).
        out_indices: stages returned by :meth:`forward_intermediates` by default.
        qkv_bias, rel_bias, kv_per_patch: see :class:`PixelAttention`.
        drop_rate: dropout before the classifier. drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 3),
        bottleneck: int = 4,
        dims: Sequence[int] = (64, 128, 256, 512),
        num_heads: Sequence[int] = (4, 8, 8, 8),
        patch_size: int = 8,
        overlap: int = 2,
        patch_stages: Sequence[bool] = (False, False, True, True),
        stem_chs: int = 64,
        in_chans: int = 3,
        num_classes: int = 1000,
        img_size: int | Sequence[int] = 224,
        dense: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        qkv_bias: bool = False,
        rel_bias: bool = True,
        kv_per_patch: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        n_stages = len(depths)
        for name, seq in (("dims", dims), ("num_heads", num_heads), ("patch_stages", patch_stages)):
            if len(seq) != n_stages:
                raise ValueError(f"{name} has {len(seq)} entries, expected {n_stages} (depths)")
        if not depths or min(depths) < 1:
            raise ValueError(f"every stage needs at least one block, got depths {tuple(depths)}")
        if bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1, got {bottleneck}")
        self.depths = tuple(int(d) for d in depths)
        self.dims = tuple(int(d) for d in dims)
        self.num_heads = tuple(int(h) for h in num_heads)
        self.patch_stages = tuple(bool(p) for p in patch_stages)
        self.bottleneck = bottleneck
        self.patch_size = patch_size
        self.overlap = overlap
        self.embed_dims = tuple(d * bottleneck for d in self.dims)  # stage output channels C
        self._init_layout(img_size, dense, num_classes, out_indices, "stages")

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_chs, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem_chs),
            nn.SiLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        # Table 1: 2x2/2 average pooling between stages (ceil: odd maps keep their border)
        self.downsample = nn.AvgPool2d(2, 2, ceil_mode=True)
        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = nn.ModuleList()
        c_in, cur = stem_chs, 0
        for s in range(n_stages):
            grid = (
                _ceil_div(stage_resolution(self.img_size[0], s), patch_size),
                _ceil_div(stage_resolution(self.img_size[1], s), patch_size),
            )
            self.stages.append(
                nn.ModuleList(
                    SeTBlock(
                        c_in if j == 0 else self.embed_dims[s],
                        self.embed_dims[s],
                        self.dims[s],
                        self.num_heads[s],
                        patch_size=patch_size,
                        overlap=overlap,
                        patch_attn=self.patch_stages[s],
                        pos_grid=grid,
                        qkv_bias=qkv_bias,
                        rel_bias=rel_bias,
                        kv_per_patch=kv_per_patch,
                        drop_path=dpr[cur + j],
                    )
                    for j in range(self.depths[s])
                )
            )
            c_in, cur = self.embed_dims[s], cur + self.depths[s]

        if not dense:
            self.head_drop = nn.Dropout(drop_rate)
            self.reset_classifier(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position tables and pooling logits (excluded from weight decay, as in Swin)."""
        ends = ("rel_pos", "rel_bias", ".pos", "pool_logits")
        return {n for n, _ in self.named_parameters() if n.endswith(ends)}

    # -- forward passes ------------------------------------------------------------------------
    def _stage(self, i: int, x: Tensor) -> Tensor:
        if i > 0:
            x = self.downsample(x)
        stage: nn.ModuleList = self.stages[i]  # type: ignore[assignment]
        for blk in stage:
            x = blk(x)
        return x

    def forward_intermediates(
        self, x: Tensor, indices: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Multi-scale features ``[B, C_i, H/s_i, W/s_i]`` of stages ``indices`` (default
        ``out_indices``; strides 4, 8, 16, 32, sides rounded up as
        :func:`~sepvit.backbones.sepvit.stage_resolution`). Later stages are skipped."""
        wanted = self._wanted_stages(x, indices)
        outs: list[Tensor] = []
        x = self.stem(x)
        for i in range(max(wanted) + 1):
            x = self._stage(i, x)
            if i in wanted:
                outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """Last-stage features ``[B, C, H/32, W/32]``."""
        return self.forward_intermediates(x, (len(self.depths) - 1,))[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.dense:
            raise RuntimeError("the dense layout has no classifier")
        x = self.head_drop(x.mean(dim=(2, 3)))  # global average pooling
        return x if pre_logits else self.head(x)


# ---------------------------------------------------------------------------------------------
# checkpoint filter
# ---------------------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: SeT) -> dict[str, Tensor]:
    """Adapt a SeT state dict (bare or wrapped, e.g. a detector's ``backbone.*``) to ``model``.

    * unwraps ``model`` / ``state_dict`` containers and strips ``module.`` and ``backbone.``
      prefixes (other entries of a detector/segmenter checkpoint are dropped);
    * drops a classifier ``head`` the model lacks (dense layout) or whose class count differs;
    * resizes each patch position table ``r'`` (``*.patch.pos``, ``[1, D, gh, gw]``) bilinearly
      to the model's grid, so a classifier trained at one ``img_size`` loads at another.

    Returns a dict ready for ``model.load_state_dict``; the caller reports what is missing.
    """
    sd = backbone_state(state_dict)
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        mine = own.get(k)
        if k.startswith("head.") and (mine is None or mine.shape != v.shape):
            continue
        if k.endswith(".patch.pos") and mine is not None and mine.shape != v.shape:
            size = (int(mine.shape[-2]), int(mine.shape[-1]))
            v = F.interpolate(v.float(), size=size, mode="bilinear", align_corners=False)
            v = v.to(mine.dtype)
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# variants (Table 2 of the paper; Table 1 for D and G)
# ---------------------------------------------------------------------------------------------
SET_VARIANTS: dict[str, dict[str, Any]] = {
    "set_8": dict(depths=(2, 2, 2, 2), bottleneck=2, patch_size=8, overlap=2),
    "set_16": dict(depths=(3, 4, 6, 3), bottleneck=4, patch_size=8, overlap=2),
    "set_33": dict(depths=(3, 4, 23, 3), bottleneck=4, patch_size=8, overlap=2),
}
