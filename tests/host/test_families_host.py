"""A toy adapter family registered by the test (issue #11) runs through the real host: IPA Load Adapter detects it,
IPA Apply encodes the image with CLIP vision through the family's encoder need and projection, and patches the
UNet's attn2 sites; weight 0 is the unpatched model and another weight changes the latents. Nothing of the pack is
edited for it: the family is data registered in the pack's own ip_adapter_core.families."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn


@pytest.fixture
def toy_family(pack_module):
    families = pack_module("ip_adapter_core.families")
    projection = pack_module("ip_adapter_core.projection")
    AdapterSpec = pack_module("ip_adapter_core.spec").AdapterSpec

    class ToyProj(nn.Module):
        def __init__(self, spec):
            super().__init__()
            self.toy_proj = projection.CastLinear(spec.encoder_dim, 2 * spec.cross_attention_dim)
            self.context = spec.cross_attention_dim

        def forward(self, e):
            return self.toy_proj(e).reshape(e.shape[0], 2, self.context)

    def detect(image_proj, ip_adapter, name):
        rows, enc = image_proj["toy_proj.weight"].shape
        dims = tuple(ip_adapter[f"{2 * i + 1}.to_k_ip.weight"].shape[0] for i in range(len(ip_adapter) // 2))
        return AdapterSpec(kind="toy", cross_attention_dim=rows // 2, encoder_input="image_embeds",
                           encoder_dim=enc, num_tokens=2, site_dims=dims, adapter_family="toy")

    families.register(families.Family(
        name="toy", label="toy adapters", claims=lambda p, a: "toy_proj.weight" in p, detect=detect,
        build_projection=ToyProj,
        encoder_need=lambda s: families.EncoderNeed("clip_vision", "image_embeds", s.encoder_dim, "the tiny CLIP")),
        first=True)
    yield families
    families.unregister("toy")


def test_toy_family_loads_encodes_and_patches(toy_family, ipadapter_dir, sd15, cv, host, run_node, make_image,
                                              sample):
    import testkit.adapters as kit

    sites = host.model_sites(sd15)
    ctx, enc = host.model_context_dim(sd15), host.clip_vision_dims(cv).projection
    g = torch.Generator().manual_seed(5)
    image_proj = {"toy_proj.weight": torch.randn(2 * ctx, enc, generator=g) * enc ** -0.5,
                  "toy_proj.bias": torch.zeros(2 * ctx)}
    _, ip_adapter = kit.adapter_parts("base", ctx=ctx, encoder_dim=enc, site_dims=[s.hidden for s in sites], seed=5)
    kit.save_adapter(os.path.join(str(ipadapter_dir), "toy_adapter.safetensors"), image_proj, ip_adapter)

    loaded = run_node("IPA_ModelLoader", ipadapter_file="toy_adapter.safetensors")
    adapter = loaded["result"][0]
    assert adapter.spec.adapter_family == "toy" and "needs the tiny CLIP" in loaded["ui"]["text"][0]

    def apply(weight):
        return run_node("IPA_Apply", model=sd15, ipadapter=adapter, weight=weight, start_at=0.0, end_at=1.0,
                        image=make_image(0), clip_vision=cv)[0]

    plain = sample(sd15)
    assert torch.equal(sample(apply(0.0)), plain)
    patched = sample(apply(1.0))
    assert (patched - plain).abs().max() > 1e-3
