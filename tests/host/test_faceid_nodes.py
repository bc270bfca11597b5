"""FaceID through the real host (issue #12): IPA Load Face Models finds random-weight ONNX stand-ins of buffalo_l
(a planted-face detector whose score map follows a bright blob, and a random recogniser) where the old pack keeps
them, IPA Encode Face / IPA Apply FaceID find the blob's face, embed it and patch a tiny SD1.5 UNet, and the adapter's
own LoRA goes on through ComfyUI's weight patching. Needs onnx (to build the stand-ins) and onnxruntime; skipped with
the reason where they are missing."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the FaceID host tests build their ONNX stand-ins with the onnx package")
pytest.importorskip("onnxruntime", reason="the FaceID nodes run the face models with onnxruntime")

from testkit import faceid_adapters as fk  # noqa: E402
from testkit import onnx_faces  # noqa: E402


@pytest.fixture(scope="module")
def face_root(pack, tmp_path_factory):
    """A temporary insightface folder holding buffalo_l stand-ins (planted detector), registered with ComfyUI."""
    import folder_paths

    root = tmp_path_factory.mktemp("insightface")
    onnx_faces.buffalo_folder(str(root), detector="planted", seed=3)
    paths, ext = folder_paths.folder_names_and_paths["insightface"]
    folder_paths.folder_names_and_paths["insightface"] = ([str(root)] + list(paths), ext)
    yield root
    folder_paths.folder_names_and_paths["insightface"] = (paths, ext)


@pytest.fixture(scope="module")
def face_models(face_root, run_node):
    return run_node("IPA_FaceModelLoader", model_name="buffalo_l", provider="CPU")["result"][0]


def face_image(*centres, h: int = 256, w: int = 320, radius: float = 30.0) -> torch.Tensor:
    """A ComfyUI IMAGE (1, h, w, 3) with a bright disc (a 'face' for the planted detector) at each centre."""
    return torch.from_numpy(onnx_faces.blob_image(h, w, list(centres), radius)).float()[None] / 255.0


@pytest.fixture(scope="module")
def adapters(ipadapter_dir, sd15, host):
    """Tiny FaceID files for the tiny SD1.5 UNet: name -> LoadedAdapter (the file name says the Plus version)."""
    sites = [s.hidden for s in host.model_sites(sd15)]
    ctx = host.model_context_dim(sd15)
    files = {
        "faceid": ("tiny-faceid_sd15.bin", dict(kind="faceid", lora_rank=8)),
        "plusv2": ("tiny-faceid-plusv2_sd15.bin", dict(kind="faceid_plus", clip_dim=48, lora_rank=8)),
        "portrait": ("tiny-faceid-portrait_sd15.bin", dict(kind="portrait")),
    }
    out = {}
    for key, (name, kw) in files.items():
        fk.save_faceid(os.path.join(str(ipadapter_dir), name), ctx=ctx, site_dims=sites, seed=11, **kw)
        out[key] = host.load_adapter(os.path.join(str(ipadapter_dir), name))
    return out


def apply(run_node, model, adapter, face_models, image, **kw):
    inputs = dict(model=model, ipadapter=adapter, face_models=face_models, image=image, weight=1.0,
                  weight_faceidv2=1.0, weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                  lora_strength=1.0)
    inputs.update(kw)
    return run_node("IPA_ApplyFaceID", **inputs)


def test_loader_finds_the_old_packs_layout_and_names_the_files(face_models, face_root, run_node):
    out = run_node("IPA_FaceModelLoader", model_name="buffalo_l", provider="CPU")
    assert out["result"][0] is face_models  # loaded once, shared
    text = out["ui"]["text"][0]
    assert "det_10g.onnx" in text and "w600k_r50.onnx" in text


def test_missing_face_models_list_every_folder_looked_in(face_root, run_node):
    with pytest.raises(ValueError) as e:
        run_node("IPA_FaceModelLoader", model_name="antelopev2", provider="CPU")
    message = str(e.value)
    assert message.startswith("IPA Load Face Models") and str(face_root) in message and "antelopev2" in message


def test_faceid_finds_the_face_and_weight_and_lora_act(adapters, face_models, sd15, run_node, sample):
    image = face_image((200, 120))
    plain = sample(sd15)
    out = apply(run_node, sd15, adapters["faceid"], face_models, image, weight=0.0)
    model, crops = out["result"]
    assert torch.equal(sample(model), plain), "weight 0 must be the model without the adapter, LoRA included"
    assert not model.patches
    assert crops.shape == (1, 224, 224, 3) and crops.mean() > 0.05, "the aligned crop shows the blob"

    term_only = apply(run_node, sd15, adapters["faceid"], face_models, image, lora_strength=0.0)["result"][0]
    both = apply(run_node, sd15, adapters["faceid"], face_models, image)
    assert not term_only.patches, "lora_strength 0 = no LoRA"
    scale = plain.abs().mean()
    term, full = sample(term_only), sample(both["result"][0])
    assert (term - plain).abs().max() > 1e-3 * scale
    assert (full - term).abs().max() > 1e-3 * scale, "the LoRA changes the result"
    assert not sd15.patches, "the caller's model keeps no LoRA patch"
    assert len(both["result"][0].patches) == len(adapters["faceid"].lora) // 2
    assert any("LoRA" in t for t in both["ui"]["text"])


def test_lora_is_added_once_per_model_and_a_second_copy_is_reported(adapters, face_models, sd15, run_node, pack_module):
    image = face_image((160, 128))
    first = apply(run_node, sd15, adapters["faceid"], face_models, image)["result"][0]
    again = apply(run_node, first, adapters["faceid"], face_models, image)
    patches = again["result"][0].patches
    assert all(len(v) == 1 for v in patches.values()), "a second apply of the same adapter adds no second LoRA"
    assert any("already on this model" in t for t in again["ui"]["text"])

    # the separate *_lora file through a LoRA loader: the same pairs under another key layout
    import comfy.lora

    lora = pack_module("nodes.patch.lora")
    other = sd15.clone()
    lora.add_lora(other, adapters["faceid"].lora, 1.0, adapter_name="x", where="test")
    other.model_options.get("transformer_options", {}).pop(lora.LORAS, None)
    twice = apply(run_node, other, adapters["faceid"], face_models, image)
    assert any("applied twice" in t for t in twice["ui"]["text"])
    assert comfy.lora is not None


def test_plus_v2_needs_clip_and_the_shortcut_scale_changes_the_tokens(adapters, face_models, cv, run_node):
    image = face_image((150, 140))
    with pytest.raises(ValueError, match="clip_vision"):
        run_node("IPA_EncodeFace", ipadapter=adapters["plusv2"], face_models=face_models, image=image)
    one = run_node("IPA_EncodeFace", ipadapter=adapters["plusv2"], face_models=face_models, image=image,
                   clip_vision=cv)
    two = run_node("IPA_EncodeFace", ipadapter=adapters["plusv2"], face_models=face_models, image=image,
                   clip_vision=cv, weight_faceidv2=2.0)
    t1, t2 = one["result"][0], two["result"][0]
    assert t1.cond.shape == (1, 4, 768) and "v2" in one["ui"]["text"][0]
    assert (t1.cond - t2.cond).abs().max() > 1e-4 * t1.cond.abs().max()
    assert not torch.equal(t1.uncond, t2.uncond), "the uncond uses the same shortcut scale"


def test_portrait_joins_the_faces_of_several_images(adapters, face_models, run_node):
    images = torch.cat([face_image((100, 100)), face_image((220, 150)), face_image((160, 60))])
    tokens, crops = run_node("IPA_EncodeFace", ipadapter=adapters["portrait"], face_models=face_models,
                             image=images)["result"]
    assert tokens.cond.shape == (1, 48, 768) and tokens.uncond.shape == (1, 48, 768)
    assert crops.shape[0] == 3


def test_faceid_embeds_feed_the_other_apply_nodes(adapters, face_models, sd15, run_node, sample):
    tokens = run_node("IPA_EncodeFace", ipadapter=adapters["faceid"], face_models=face_models,
                      image=face_image((200, 120)))["result"][0]
    plain = sample(sd15)
    m = run_node("IPA_ApplyAdvanced", model=sd15, ipadapter=adapters["faceid"], weight=1.0, weight_type="style transfer",
                 start_at=0.0, end_at=1.0, embeds_scaling="V only", embeds=tokens)[0]
    assert (sample(m) - plain).abs().max() > 0
    assert m.patches, "IPA Apply (advanced) applies the adapter's LoRA too"


def test_no_face_policies(adapters, face_models, sd15, run_node):
    blank = torch.zeros(1, 200, 200, 3)
    with pytest.raises(ValueError, match=r"IPA Apply FaceID: no face found in image 1 of 1"):
        apply(run_node, sd15, adapters["faceid"], face_models, blank)
    out = apply(run_node, sd15, adapters["faceid"], face_models, blank, no_face="skip")
    assert out["result"][0] is sd15 and any("unchanged" in t for t in out["ui"]["text"])
    zero = run_node("IPA_EncodeFace", ipadapter=adapters["faceid"], face_models=face_models,
                    image=torch.cat([blank, face_image((100, 100), h=200, w=200)]), no_face="zero embedding")
    tokens = zero["result"][0]
    assert tokens.cond.shape[0] == 2
    scale = float(tokens.uncond.abs().max())  # batch-2 and batch-1 kernels differ in the last bits
    assert (tokens.cond[0] - tokens.uncond[0]).abs().max() <= 1e-5 * scale, "zero embedding = the uncond's"
    assert (tokens.cond[1] - tokens.uncond[0]).abs().max() > 1e-2 * scale


def test_a_faceid_adapter_on_the_clip_vision_path_is_told_what_to_use(adapters, sd15, cv, run_node):
    with pytest.raises(ValueError, match="IPA Apply FaceID"):
        run_node("IPA_Apply", model=sd15, ipadapter=adapters["faceid"], weight=1.0, start_at=0.0, end_at=1.0,
                 image=face_image((100, 100)), clip_vision=cv)


def test_bad_images(adapters, face_models, sd15, run_node):
    gray = face_image((150, 120))[..., :1]
    rgba = torch.cat([face_image((150, 120)), torch.ones(1, 256, 320, 1)], dim=-1)
    for image in (gray, rgba):
        assert apply(run_node, sd15, adapters["faceid"], face_models, image)["result"][0].patches
    big = torch.zeros(1, 4000, 6000, 3)
    big[:, 1900:2100, 2900:3100] = 1.0
    model, crops = apply(run_node, sd15, adapters["faceid"], face_models, big)["result"]
    assert crops.shape == (1, 224, 224, 3)
    many = face_image(*[(30 + 60 * (i % 6), 30 + 50 * (i // 6)) for i in range(30)], h=256, w=360, radius=12)
    out = run_node("IPA_EncodeFace", ipadapter=adapters["faceid"], face_models=face_models, image=many)
    assert out["result"][0].cond.shape == (1, 4, 768)
    assert np.isfinite(out["result"][0].cond.numpy()).all()


def test_unified_loader_faceid_preset_gives_no_clip_vision(adapters, sd15, run_node):
    out = run_node("IPA_UnifiedLoader", model=sd15, preset="faceid")
    model, adapter, clip_vision = out["result"]
    assert model is sd15 and clip_vision is None
    assert adapter.spec.kind == "faceid" and "IPA Load Face Models" in out["ui"]["text"][0]
    out = run_node("IPA_UnifiedLoader", model=sd15, preset="faceid portrait")
    assert out["result"][1].spec.kind == "portrait"


def test_without_onnxruntime_the_face_loader_says_what_to_install(pack, run_node, tmp_path, monkeypatch):
    """onnxruntime not importable: IPA Load Face Models names the package to install (on fresh files, so no cache
    answers for it); the pack's other nodes are unaffected (they never import it)."""
    import sys

    import folder_paths

    onnx_faces.buffalo_folder(str(tmp_path), detector="planted", name="ort_missing_set")
    paths, ext = folder_paths.folder_names_and_paths["insightface"]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path)] + list(paths), ext))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ValueError) as e:
        run_node("IPA_FaceModelLoader", model_name="ort_missing_set", provider="CPU")
    assert str(e.value).startswith("IPA Load Face Models") and "pip install onnxruntime" in str(e.value)


def test_portrait_unnorm_reads_the_raw_embedding(face_models, ipadapter_dir, sdxl, host, run_node, pack_module):
    """Portrait unnorm (SDXL) projects the face model's raw embedding, not the normalised one."""
    face_features = pack_module("ip_adapter_core.families.faceid").face_features

    sites = [s.hidden for s in host.model_sites(sdxl)]
    name = "tiny-faceid-portrait_sdxl_unnorm.bin"
    fk.save_faceid(os.path.join(str(ipadapter_dir), name), "portrait_unnorm", ctx=host.model_context_dim(sdxl),
                   site_dims=sites, resampler_dim=64, heads=1, depth=1, seed=12)
    adapter = host.load_adapter(os.path.join(str(ipadapter_dir), name))
    assert adapter.spec.kind == "portrait_unnorm" and not adapter.lora
    image = face_image((170, 110))
    tokens = run_node("IPA_EncodeFace", ipadapter=adapter, face_models=face_models, image=image)["result"][0]
    assert tokens.cond.shape == (1, 16, 2048)

    pipe = face_models.pipeline
    pixels = (image[0].numpy() * 255).astype(np.uint8)
    faces, _ = pipe.detect(pixels, det_sizes=(640, 576, 512, 448, 384, 320))
    raw, normed = pipe.embedding(pixels, faces[0])
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-2, "the stand-in recogniser's raw embedding is not unit length"
    project = adapter.model.project
    spec = adapter.spec
    by_raw = project(face_features(spec, torch.from_numpy(raw)[None].float()))
    by_normed = project(face_features(spec, torch.from_numpy(normed)[None].float()))
    scale = float(by_raw.abs().max())
    assert (tokens.cond - by_raw).abs().max() <= 1e-4 * scale
    assert (tokens.cond - by_normed).abs().max() > 1e-2 * scale


def test_a_20_pixel_face_is_found_or_named(adapters, face_models, run_node):
    """A 20-pixel face in a 640-pixel picture: the planted detector (64-px boxes) finds it at 640 or the node says
    which image had no face; never a tensor error."""
    image = face_image((320, 320), h=640, w=640, radius=10)
    try:
        tokens, crops = run_node("IPA_EncodeFace", ipadapter=adapters["faceid"], face_models=face_models,
                                 image=image)["result"]
    except ValueError as e:
        assert "no face found in image 1 of 1" in str(e)
    else:
        assert tokens.cond.shape == (1, 4, 768) and crops.shape == (1, 224, 224, 3)
