"""RetinaNet anchors: 3 scales x 3 aspect ratios = 9 per location on each pyramid level."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch import Tensor


class AnchorGenerator:
    """Anchors for pyramid levels with the given ``strides``.

    On a level with stride ``s`` the base size is ``octave_base_scale * s`` (4 * s: 32 px at P3
    through 512 px at P7), times ``scales`` (``2**0, 2**(1/3), 2**(2/3)``), each in every aspect
    ratio ``h / w`` in ``ratios`` (mmdet's ``AnchorGenerator``, scale-major). Anchor centres sit at
    ``((x + center_offset) s, (y + center_offset) s)``: mmdet's default offset is 0 (cell corners);
    0.5 puts them at cell centres.

    Output order is level, then row, then column, then anchor: it matches head outputs reshaped
    ``[B, A*K, H, W] -> [B, H, W, A, K] -> [B, H*W*A, K]``.
    """

    def __init__(
        self,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 4.0,
        scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        center_offset: float = 0.0,
    ) -> None:
        self.strides = tuple(int(s) for s in strides)
        self.octave_base_scale = float(octave_base_scale)
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in ratios)
        self.center_offset = float(center_offset)
        self._cache: dict[tuple[object, ...], Tensor] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        # the lock cannot be pickled or deep-copied, and the cache is cheap to rebuild
        state = dict(self.__dict__)
        state.pop("_lock")
        state["_cache"] = {}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def num_anchors(self) -> int:
        return len(self.scales) * len(self.ratios)

    def cell_anchors(self, stride: int) -> Tensor:
        """``[A, 4]`` anchors centred on the origin for one level."""
        base = self.octave_base_scale * stride
        out = []
        for r in self.ratios:
            for s in self.scales:
                size = base * s
                w = size / r**0.5
                h = size * r**0.5
                out.append((-w / 2, -h / 2, w / 2, h / 2))
        return torch.tensor(out, dtype=torch.float32)

    def grid_anchors(
        self, sizes: Sequence[tuple[int, int]], device: torch.device | None = None
    ) -> list[Tensor]:
        """Per-level anchors ``[H*W*A, 4]`` for feature maps of ``sizes`` (H, W).

        The tensors are views of a shared cache (thread-safe): treat them as read-only.
        """
        key = (tuple(sizes), str(device))
        with self._lock:
            flat = self._cache.get(key)
        if flat is None:
            levels = []
            for (h, w), stride in zip(sizes, self.strides, strict=True):
                ys = (torch.arange(h, dtype=torch.float32) + self.center_offset) * stride
                xs = (torch.arange(w, dtype=torch.float32) + self.center_offset) * stride
                cy, cx = torch.meshgrid(ys, xs, indexing="ij")
                shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
                levels.append((shifts + self.cell_anchors(stride)[None]).reshape(-1, 4).to(device))
            flat = torch.cat(levels)
            with self._lock:
                if len(self._cache) > 64:
                    self._cache.clear()
                self._cache[key] = flat
        counts = [h * w * self.num_anchors for h, w in sizes]
        return list(flat.split(counts))

    def __call__(
        self, sizes: Sequence[tuple[int, int]], device: torch.device | None = None
    ) -> Tensor:
        """All anchors ``[sum(H*W*A), 4]``."""
        return torch.cat(self.grid_anchors(sizes, device))
