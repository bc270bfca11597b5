"""ip_adapter_core.siglip: the SigLIP attention-pooling head against transformers' SiglipVisionModel (its
pooler_output vs our head over its last_hidden_state, tiny random config), and the messages for a file without it."""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core.errors import NotAnIPAdapterError
from ip_adapter_core.siglip import SiglipPoolingHead, head_from_state_dict

try:
    from transformers import SiglipVisionConfig, SiglipVisionModel
except ImportError as e:  # transformers comes with ComfyUI; without it the oracle cannot run
    SiglipVisionModel, WHY = None, f"transformers is not importable ({e}): the SigLIP oracle cannot run"
    print(WHY)

HEADS = 4
NAME = "'sigclip_vision_patch14_384.safetensors'"


@pytest.fixture(scope="module", params=[1.0, 1e-3], ids=["plain", "small attention output"])
def hf(request):
    """A tiny SiglipVisionModel's state dict (a file's keys), last_hidden_state and pooler_output. The second case
    scales the head's out_proj by 1e-3, so the attention output's variance is near the LayerNorm's eps (1e-6)."""
    if SiglipVisionModel is None:
        pytest.skip(WHY)
    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=HEADS,
                                image_size=32, patch_size=8)
    model = SiglipVisionModel(config).eval()
    with torch.no_grad():  # the random init leaves the head's probe and biases near their defaults: spread them
        head = model.vision_model.head if hasattr(model, "vision_model") else model.head
        for p in head.parameters():
            p.add_(0.2 * torch.randn_like(p))
        head.attention.out_proj.weight.mul_(request.param)
        head.attention.out_proj.bias.mul_(request.param)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pixel_values=pixels)
    # a file's keys: transformers 5 leaves out the "vision_model." prefix of its state dict; put it back
    sd = {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in model.state_dict().items()}
    return dict(sd=sd, hidden=out.last_hidden_state, pooled=out.pooler_output)


def test_head_equals_transformers_pooler_output(hf):
    head = head_from_state_dict(hf["sd"], NAME, heads=HEADS)
    got = head(hf["hidden"])
    want = hf["pooled"]
    assert got.shape == want.shape == (3, 32)
    err, size = (got - want).abs().max().item(), want.abs().max().item()
    print(f"SigLIP head: max |diff| {err:.3g}, size {size:.3g}")
    assert err <= 1e-5 * size
    assert (want[0] - want[1]).abs().max() > 0.01 * size  # different images pool differently
    # the transformers 5 state dict (head.* without vision_model.) reads the same
    bare = {k.removeprefix("vision_model."): v for k, v in hf["sd"].items()}
    assert torch.equal(head_from_state_dict(bare, NAME, heads=HEADS)(hf["hidden"]), got)


def test_the_head_count_matters(hf):
    """The head count is not in the weights; a wrong one gives another pooled vector (so400m's is 16)."""
    wrong = head_from_state_dict(hf["sd"], NAME, heads=2)(hf["hidden"])
    assert (wrong - hf["pooled"]).abs().max() > 1e-3 * hf["pooled"].abs().max()


def test_16_bit_input_stays_16_bit(hf):
    head = head_from_state_dict(hf["sd"], NAME, heads=HEADS)
    got = head(hf["hidden"].to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert (got.float() - hf["pooled"]).abs().max() <= 0.05 * hf["pooled"].abs().max()


def test_a_file_without_the_head_is_named_with_what_to_use():
    sd = {"vision_model.post_layernorm.weight": torch.ones(4)}
    with pytest.raises(NotAnIPAdapterError) as e:
        head_from_state_dict(sd, NAME)
    msg = str(e.value)
    assert NAME in msg and "vision_model.head" in msg and "google/siglip-so400m-patch14-384" in msg


def test_a_damaged_head_is_named():
    head = SiglipPoolingHead(hidden=8, intermediate=12, heads=2)
    sd = {f"vision_model.head.{k}": torch.zeros_like(v) for k, v in head.state_dict().items()}
    sd["vision_model.head.attention.in_proj_weight"] = torch.zeros(20, 8)
    with pytest.raises(NotAnIPAdapterError, match="in_proj_weight") as e:
        head_from_state_dict(sd, NAME, heads=2)
    assert NAME in str(e.value)
    del sd["vision_model.head.mlp.fc2.bias"]
    sd["vision_model.head.attention.in_proj_weight"] = torch.zeros(24, 8)
    with pytest.raises(NotAnIPAdapterError, match="fc2.bias"):
        head_from_state_dict(sd, NAME, heads=2)
