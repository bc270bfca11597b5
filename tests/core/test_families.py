"""The family registry (ip_adapter_core.families, issue #11): detection asks each family's key signature in turn,
a toy family registered here is detected, builds its projection and loads a file's tensors without any change to
the package, and an unknown layout names every family that was tried."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ip_adapter_core import detect_spec, families
from ip_adapter_core.errors import NotAnIPAdapterError, UnsupportedAdapterError
from ip_adapter_core.projection import CastLinear, IPAdapterModel
from ip_adapter_core.spec import AdapterSpec
from testkit.adapters import adapter_parts

CTX, ENC, SITES = 32, 24, (16, 16, 8)


class ToyProj(nn.Module):
    """Two tokens straight from a linear map of the image embeds (no norm): a family no published file has."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        self.toy_proj = CastLinear(spec.encoder_dim, 2 * spec.cross_attention_dim)
        self.context = spec.cross_attention_dim

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.toy_proj(e).reshape(e.shape[0], 2, self.context)


def _toy_detect(image_proj, ip_adapter, name):
    rows, enc = image_proj["toy_proj.weight"].shape
    dims = tuple(ip_adapter[f"{2 * i + 1}.to_k_ip.weight"].shape[0] for i in range(len(ip_adapter) // 2))
    return AdapterSpec(kind="toy", cross_attention_dim=rows // 2, encoder_input="image_embeds", encoder_dim=enc,
                       num_tokens=2, site_dims=dims, adapter_family="toy")


@pytest.fixture
def toy():
    family = families.register(families.Family(
        name="toy", label="toy adapters", claims=lambda p, a: "toy_proj.weight" in p, detect=_toy_detect,
        build_projection=ToyProj,
        encoder_need=lambda s: families.EncoderNeed("clip_vision", "image_embeds", s.encoder_dim, "a toy encoder"),
        presets={"toy": families.Preset("a toy adapter", lambda s: s.adapter_family == "toy", "a toy encoder", {})}),
        first=True)
    yield family
    families.unregister("toy")


def toy_parts(seed=0):
    g = torch.Generator().manual_seed(seed)
    image_proj = {"toy_proj.weight": torch.randn(2 * CTX, ENC, generator=g),
                  "toy_proj.bias": torch.randn(2 * CTX, generator=g)}
    _, ip_adapter = adapter_parts("base", ctx=CTX, encoder_dim=ENC, site_dims=SITES, seed=seed)
    return image_proj, ip_adapter


def test_built_in_families_and_their_order():
    names = [f.name for f in families.registered()]
    # narrower signatures first; XLabs Flux's (double_blocks.* keys) overlaps none of the others
    assert names == ["instantx-flux", "kolors-faceid", "instantx-sd3", "faceid", "sd-unet", "xlabs-flux"], names
    assert [f.implemented for f in families.registered()] == [True, False, True, True, True, True]
    assert families.get("sd-unet").patch_path == "attn2" and families.get("instantx-sd3").patch_path == "joint"
    assert families.get("faceid").patch_path == "attn2" and families.get("xlabs-flux").patch_path == "blocks"


def test_a_toy_family_is_detected_builds_and_loads_without_touching_the_package(toy):
    image_proj, ip_adapter = toy_parts()
    spec = detect_spec(image_proj, ip_adapter, name="'toy.safetensors'")
    assert (spec.adapter_family, spec.kind, spec.cross_attention_dim, spec.site_dims) == ("toy", "toy", CTX, SITES)
    assert families.family_of(spec) is toy
    model = IPAdapterModel.from_parts(spec, image_proj, ip_adapter, name="'toy.safetensors'")
    e = torch.randn(3, ENC)
    want = (e @ image_proj["toy_proj.weight"].T + image_proj["toy_proj.bias"]).reshape(3, 2, CTX)
    torch.testing.assert_close(model.project(e), want)
    assert spec.encoder_name == "a toy encoder" and "needs a toy encoder" in spec.describe()
    assert "toy" in families.presets()


def test_without_the_toy_family_its_file_is_not_claimed_by_another():
    image_proj, ip_adapter = toy_parts()
    with pytest.raises(NotAnIPAdapterError, match="image projection this package does not recognise"):
        detect_spec(image_proj, ip_adapter)


def test_an_unknown_layout_names_the_families_tried():
    with pytest.raises(NotAnIPAdapterError) as e:
        detect_spec({"foo.weight": torch.zeros(2, 2)}, {"bar.weight": torch.zeros(2, 2)}, name="'x.safetensors'")
    text = str(e.value)
    for family in families.registered():
        assert family.label in text, text


def test_a_recognised_family_that_is_not_built_says_what_the_file_is():
    _, ip_adapter = adapter_parts("base", ctx=CTX, encoder_dim=ENC, site_dims=SITES)
    with pytest.raises(UnsupportedAdapterError, match="Kolors FaceID is not supported yet"):
        detect_spec({"perceiver_resampler.proj_in.weight": torch.zeros(4096, 4)}, ip_adapter)


def test_two_families_cannot_define_one_preset(toy):
    families.register(families.Family(name="clash", label="clash", claims=lambda p, a: False, detect=_toy_detect,
                                      presets={"standard": toy.presets["toy"]}))
    try:
        with pytest.raises(ValueError, match="'standard'"):
            families.presets()
    finally:
        families.unregister("clash")
