"""Cross-attention sites: where the image term goes, and which checkpoint layer N feeds each.

A site is one BasicTransformerBlock's attn2, keyed as ComfyUI keys its attn2 replace patches:
(block, block_id, transformer_index inside the SpatialTransformer), e.g. ("input", 4, 1) or ("middle", 0, 0).
Checkpoints number their layers in diffusers' registration order (down blocks, up blocks, mid block), so the i-th
site in that order reads the checkpoint keys ``{2i+1}.to_k_ip`` / ``{2i+1}.to_v_ip``.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

_BLOCK_ORDER = {"input": 0, "output": 1, "middle": 2}


class Site(NamedTuple):
    block: str
    block_id: int
    index: int
    hidden: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.block, self.block_id, self.index)


def checkpoint_order(sites: Iterable[Site]) -> list[Site]:
    """Sort sites into checkpoint order: input blocks, then output blocks, then the middle block."""
    return sorted(sites, key=lambda s: (_BLOCK_ORDER[s.block], s.block_id, s.index))


def layer_number(position: int) -> int:
    """Checkpoint layer number N of the site at ``position`` in checkpoint order (1, 3, 5, ...)."""
    return 2 * position + 1


def expand_layout(layout: Iterable[tuple[str, int, int, int]]) -> list[Site]:
    """(block, block_id, depth, hidden) rows -> every site, in checkpoint order."""
    return checkpoint_order(Site(b, i, t, h) for b, i, depth, h in layout for t in range(depth))


# Reference layouts of the published base models: (block, block_id, transformer depth, hidden width).
SD15_LAYOUT = (
    ("input", 1, 1, 320), ("input", 2, 1, 320), ("input", 4, 1, 640), ("input", 5, 1, 640),
    ("input", 7, 1, 1280), ("input", 8, 1, 1280), ("middle", 0, 1, 1280),
    ("output", 3, 1, 1280), ("output", 4, 1, 1280), ("output", 5, 1, 1280),
    ("output", 6, 1, 640), ("output", 7, 1, 640), ("output", 8, 1, 640),
    ("output", 9, 1, 320), ("output", 10, 1, 320), ("output", 11, 1, 320),
)
SDXL_LAYOUT = (
    ("input", 4, 2, 640), ("input", 5, 2, 640), ("input", 7, 10, 1280), ("input", 8, 10, 1280),
    ("middle", 0, 10, 1280),
    ("output", 0, 10, 1280), ("output", 1, 10, 1280), ("output", 2, 10, 1280),
    ("output", 3, 2, 640), ("output", 4, 2, 640), ("output", 5, 2, 640),
)
