"""Families recognised from their keys but not implemented yet: the file is named for what it is, with what to use
instead. Each becomes its own module (with detect / build_projection / encoder_need) when it is built."""
from __future__ import annotations

from ..errors import UnsupportedAdapterError
from .registry import Family, Tensors, register


def _sd35(image_proj: Tensors, ip_adapter: Tensors) -> bool:
    return "time_embedding.linear_1.weight" in image_proj or any(".norm_ip." in k for k in ip_adapter)


def _faceid(image_proj: Tensors, ip_adapter: Tensors) -> bool:
    p = image_proj
    lora = "0.to_q_lora.down.weight" in ip_adapter or "perceiver_resampler.proj_in.weight" in p
    mlp = "norm.weight" in p and "proj.2.weight" in p and "proj.weight" not in p and "proj.3.weight" not in p
    proj_in = p.get("proj_in.weight")
    unnorm = "latents" in p and proj_in is not None and proj_in.dim() == 2 and proj_in.shape[1] == 512
    return lora or mlp or unnorm


def _refuse(message: str):
    def detect(image_proj: Tensors, ip_adapter: Tensors, name: str):
        raise UnsupportedAdapterError(message.format(name=name))

    return detect


register(Family(name="sd35", label="InstantX SD3.5 adapters (not supported yet)", claims=_sd35,
                detect=_refuse("{name} is the InstantX SD3.5 IP-Adapter; SD3.5 is not supported yet."),
                patch_path="blocks", implemented=False))
register(Family(name="faceid", label="FaceID adapters (not supported yet)", claims=_faceid,
                detect=_refuse("{name} is an IP-Adapter FaceID / portrait model (it needs insightface face "
                               "embeddings); FaceID is not supported yet. Use a standard, plus or full-face adapter."),
                implemented=False))
