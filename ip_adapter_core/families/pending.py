"""Families recognised from their keys but not implemented yet: the file is named for what it is, with what to use
instead. Each becomes its own module (with detect / build_projection / encoder_need) when it is built."""
from __future__ import annotations

from ..errors import UnsupportedAdapterError
from .registry import Family, Tensors, register

KOLORS_WIDTH = 4096  # Kolors FaceID's id tokens live in the ChatGLM text space, before the UNet's 4096 -> 2048 projection


def _kolors_faceid(image_proj: Tensors, ip_adapter: Tensors) -> bool:
    """A FaceID Plus layout (perceiver_resampler) whose perceiver or id tokens are 4096 wide."""
    proj_in, norm = image_proj.get("perceiver_resampler.proj_in.weight"), image_proj.get("norm.weight")
    widths = {int(t.shape[0]) for t in (proj_in, norm) if t is not None and t.dim() >= 1}
    return proj_in is not None and KOLORS_WIDTH in widths


def _refuse(message: str):
    def detect(image_proj: Tensors, ip_adapter: Tensors, name: str):
        raise UnsupportedAdapterError(message.format(name=name))

    return detect


register(Family(name="kolors-faceid", label="Kolors FaceID adapters (not supported yet)", claims=_kolors_faceid,
                detect=_refuse("{name} is the Kwai-Kolors FaceID Plus IP-Adapter (its face tokens are 4096 wide, in "
                               "Kolors' ChatGLM text space, and need the Kolors UNet's text projection); Kolors "
                               "FaceID is not supported yet. For SD1.5 / SDXL use an h94 FaceID adapter such as "
                               "ip-adapter-faceid-plusv2_sdxl.bin."),
                implemented=False))
