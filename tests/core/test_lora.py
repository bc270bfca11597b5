"""ip_adapter_core.lora: a FaceID file's LoRA keys -> (site, attention, projection) targets, checked against a model."""
import pytest
import torch

from ip_adapter_core.errors import IncompatibleError
from ip_adapter_core.lora import has_lora, lora_rank, lora_targets
from ip_adapter_core.sites import SD15_LAYOUT, expand_layout

SITES = expand_layout(SD15_LAYOUT)
CTX = 768


def faceid_lora(sites, ctx, rank=2):
    """Shapes as in the published ip-adapter-faceid_sd15.bin (formats §1): attn1 in = h, attn2 k/v in = ctx."""
    out = {}
    for i, s in enumerate(sites):
        for n in (2 * i, 2 * i + 1):
            for proj in ("q", "k", "v", "out"):
                width_in = ctx if n % 2 and proj in ("k", "v") else s.hidden
                out[f"{n}.to_{proj}_lora.down.weight"] = torch.zeros(rank, width_in)
                out[f"{n}.to_{proj}_lora.up.weight"] = torch.zeros(s.hidden, rank)
    return out


def test_every_pair_of_an_sd15_faceid_lora_has_one_target():
    lora = faceid_lora(SITES, CTX)
    targets = lora_targets({**lora, "1.to_k_ip.weight": torch.zeros(320, CTX)}, SITES, CTX, adapter_name="f",
                           where="w")
    assert len(targets) == 16 * 2 * 4 and has_lora(lora) and lora_rank(lora) == 2
    by_prefix = {t.prefix: t for t in targets}
    assert (by_prefix["0.to_q"].site, by_prefix["0.to_q"].attention) == (0, "attn1")
    assert (by_prefix["31.to_out"].site, by_prefix["31.to_out"].attention, by_prefix["31.to_out"].module) == \
        (15, "attn2", "to_out.0")
    assert not has_lora({"1.to_k_ip.weight": torch.zeros(1)}) and lora_rank({}) is None


def test_a_lora_for_another_model_or_a_broken_pair_is_refused():
    sdxl_like = faceid_lora(SITES, 2048)
    with pytest.raises(IncompatibleError, match=r"w: 'f' LoRA '1.to_k' is down \(2, 2048\).*maps 768 -> 320"):
        lora_targets(sdxl_like, SITES, CTX, adapter_name="f", where="w")
    more = faceid_lora(SITES + SITES[:1], CTX)
    with pytest.raises(IncompatibleError, match="attention processor 32, but the model has 32"):
        lora_targets(more, SITES, CTX, adapter_name="f", where="w")
    half = faceid_lora(SITES, CTX)
    del half["5.to_v_lora.up.weight"]
    with pytest.raises(IncompatibleError, match="'5.to_v_lora' without its up half"):
        lora_targets(half, SITES, CTX, adapter_name="f", where="w")
