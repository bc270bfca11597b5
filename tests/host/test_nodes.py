"""The node classes run as ComfyUI runs them (NODE_CLASS_MAPPINGS of ComfyUI's nodes module, FUNCTION with keyword
inputs), with files found through folder_paths. Equalities here are bit for bit (same code path, same inputs)."""
from __future__ import annotations

import os

import pytest
import torch

IPA_NODES = ("IPA_ModelLoader", "IPA_Encode", "IPA_Apply", "IPA_ApplySimple")


@pytest.fixture(scope="module")
def model(make_sd15_model):
    return make_sd15_model(0)


@pytest.fixture(scope="module")
def adapters(make_adapter_file, model, cv, pack_module, tmp_path_factory):
    """kind -> LoadedAdapter for the tiny SD1.5 model and the default tiny CLIP vision."""
    host = pack_module("nodes.patch.host")
    d = tmp_path_factory.mktemp("nodes")
    return {kind: host.load_adapter(make_adapter_file(d, kind, model, cv, seed=i))
            for i, kind in enumerate(("base", "plus", "full_face"))}


# --------------------------------------------------------------------------------------------- loader

@pytest.mark.parametrize("kind, fmt, words", [
    ("base", "safetensors", ("Base", "SD1.5", "4 tokens")),
    ("plus", "bin", ("Plus", "SD1.5", "8 tokens")),
    ("full_face", "safetensors", ("Full face", "SD1.5", "one token per ViT patch")),
])
def test_loader_finds_file_through_folder_paths_and_describes_it(ipadapter_dir, comfy_nodes, run_node,
                                                                 make_adapter_file, model, cv, kind, fmt, words):
    sub = ipadapter_dir / f"loader_{kind}"
    sub.mkdir()
    make_adapter_file(sub, kind, model, cv, name=f"tiny_{kind}.{fmt}", fmt=fmt)
    (sub / "notes.txt").write_text("not a model")
    name = f"loader_{kind}/tiny_{kind}.{fmt}"
    choices = comfy_nodes.NODE_CLASS_MAPPINGS["IPA_ModelLoader"].INPUT_TYPES()["required"]["ipadapter_file"][0]
    assert name in choices
    assert f"loader_{kind}/notes.txt" not in choices

    out = run_node("IPA_ModelLoader", ipadapter_file=name)
    adapter = out["result"][0]
    text = " ".join(out["ui"]["text"])
    for word in words:
        assert word in text, f"{word!r} not in the loader's ui text {text!r}"
    assert adapter.spec.kind == kind
    needs = "40-wide image embeds" if kind == "base" else "48-wide hidden states"
    assert needs in text, f"the ui text should say which encoder the adapter needs: {text!r}"

    again = run_node("IPA_ModelLoader", ipadapter_file=name)["result"][0]
    assert again is adapter, "loading the same file twice must return the shared adapter"


def test_register_folder_keeps_paths_from_extra_model_paths(comfyui_path, pack_module, monkeypatch, tmp_path):
    """extra_model_paths.yaml is read before custom nodes load; registering must keep its ipadapter path."""
    import runpy

    import folder_paths

    # run by file: ComfyUI puts comfy/ on sys.path, where "utils" is comfy/utils.py
    load_extra_path_config = runpy.run_path(os.path.join(comfyui_path, "utils", "extra_config.py"))[
        "load_extra_path_config"]
    loader = pack_module("nodes.folders")
    extra = tmp_path / "my_ipadapters"
    extra.mkdir()
    yaml_path = tmp_path / "extra_model_paths.yaml"
    yaml_path.write_text(f"test:\n  base_path: {tmp_path}\n  ipadapter: my_ipadapters\n")
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "ipadapter")
    monkeypatch.delitem(folder_paths.filename_list_cache, "ipadapter", raising=False)

    load_extra_path_config(str(yaml_path))
    assert folder_paths.folder_names_and_paths["ipadapter"][0] == [str(extra)]
    loader.register_folder()
    paths, extensions = folder_paths.folder_names_and_paths["ipadapter"]
    assert str(extra) in paths
    assert extensions == folder_paths.supported_pt_extensions

    monkeypatch.delitem(folder_paths.folder_names_and_paths, "ipadapter")
    loader.register_folder()
    paths, extensions = folder_paths.folder_names_and_paths["ipadapter"]
    # models/ipadapter first (where downloads go), then x-flux-comfyui's folder for the XLabs Flux adapters
    assert paths == [os.path.join(folder_paths.models_dir, "ipadapter"),
                     os.path.join(folder_paths.models_dir, "xlabs", "ipadapters")]
    assert extensions == folder_paths.supported_pt_extensions
    loader.register_folder()  # registering again adds nothing
    assert folder_paths.folder_names_and_paths["ipadapter"][0] == paths


def test_the_xlabs_folder_of_x_flux_comfyui_is_read(comfyui_path, pack_module, run_node, monkeypatch, tmp_path):
    """An XLabs Flux adapter where x-flux-comfyui keeps it (models/xlabs/ipadapters/ip_adapter.safetensors) is listed
    and loaded by IPA Load Adapter as it is."""
    import folder_paths

    from testkit.flux_adapters import write_xlabs

    folder = tmp_path / "xlabs" / "ipadapters"
    folder.mkdir(parents=True)
    write_xlabs(folder / "ip_adapter.safetensors", tokens=16, clip_dim=12, ctx=16, hidden=8, blocks=3)
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "ipadapter")
    monkeypatch.delitem(folder_paths.filename_list_cache, "ipadapter", raising=False)
    pack_module("nodes.folders").register_folder()
    assert str(folder) in folder_paths.get_folder_paths("ipadapter")
    listed = pack_module("nodes.loader").IPAModelLoader.INPUT_TYPES()["required"]["ipadapter_file"][0]
    assert "ip_adapter.safetensors" in listed, listed
    out = run_node("IPA_ModelLoader", ipadapter_file="ip_adapter.safetensors")
    assert out["result"][0].spec.adapter_family == "xlabs-flux" and out["result"][0].spec.num_tokens == 16


# --------------------------------------------------------------------------------------------- encode / apply

@pytest.mark.parametrize("kind", ["base", "plus", "full_face"])
def test_every_kind_encodes_applies_and_samples(adapters, model, cv, run_node, make_image, sample, kind):
    adapter = adapters[kind]
    image = make_image(1, batch=2)
    embeds = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]
    tokens = {"base": 4, "plus": 8, "full_face": 17}[kind]
    assert embeds.cond.shape == (2, tokens, 768) and embeds.uncond.shape == (1, tokens, 768)
    patched = run_node("IPA_Apply", model=model, ipadapter=adapter, weight=1.0, start_at=0.0, end_at=1.0,
                       embeds=embeds)[0]
    out = sample(patched, steps=2)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, sample(model, steps=2), atol=1e-4)


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_encode_then_apply_equals_apply_simple(adapters, model, cv, run_node, make_image, sample, kind):
    adapter = adapters[kind]
    image = make_image(2)
    settings = dict(weight=0.8, start_at=0.0, end_at=0.9)
    embeds = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]
    two_nodes = run_node("IPA_Apply", model=model, ipadapter=adapter, embeds=embeds, **settings)[0]
    simple = run_node("IPA_ApplySimple", model=model, ipadapter=adapter, clip_vision=cv, image=image, **settings)[0]
    direct = run_node("IPA_Apply", model=model, ipadapter=adapter, image=image, clip_vision=cv, **settings)[0]
    reference = sample(two_nodes, steps=2)
    assert torch.equal(sample(simple, steps=2), reference)
    assert torch.equal(sample(direct, steps=2), reference)


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_rgba_and_gray_images_give_the_tokens_of_their_rgb_version(adapters, cv, run_node, make_image, kind):
    adapter = adapters[kind]

    def tokens(image):
        return run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0].cond

    rgb = make_image(3)
    alpha = make_image(4, channels=1)
    assert torch.equal(tokens(torch.cat((rgb, alpha), dim=-1)), tokens(rgb))
    gray = make_image(5, channels=1)
    gray_rgb = tokens(gray.expand(-1, -1, -1, 3).contiguous())
    assert torch.equal(tokens(gray), gray_rgb)
    assert torch.equal(tokens(torch.cat((gray, alpha), dim=-1)), gray_rgb)
    assert not torch.equal(gray_rgb, tokens(rgb))


# --------------------------------------------------------------------------------------------- schema

@pytest.mark.parametrize("node_id", IPA_NODES)
def test_every_input_has_a_tooltip(comfy_nodes, node_id):
    cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    assert inputs
    for name, definition in inputs.items():
        assert len(definition) >= 2 and isinstance(definition[1], dict), f"{node_id}.{name} has no options dict"
        assert str(definition[1].get("tooltip", "")).strip(), f"{node_id}.{name} has no tooltip"
    assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id)


def test_chunked_encoding_gives_the_batched_tokens(run_node, sd15, cv, make_adapter_file, host, make_image, tmp_path):
    adapter = host.load_adapter(make_adapter_file(tmp_path, "plus", sd15, cv, seed=5))
    images = make_image(seed=9, batch=5)
    whole = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=images)[0]
    chunked = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=images, encode_batch_size=2)[0]
    assert whole.cond.shape[0] == chunked.cond.shape[0] == 5
    # Same math in smaller batches: equal up to fp32 summation order.
    torch.testing.assert_close(chunked.cond, whole.cond, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(whole.cond[0], whole.cond[1]), "different images must give different tokens"


def test_old_pack_names_find_the_nodes_in_the_node_library(comfy_nodes):
    """Each node lists the old pack's IDs it replaces as search aliases (ComfyUI 0.33 serves SEARCH_ALIASES in
    object_info); the aliases name old-pack nodes the migration knows (migration/schemas.py)."""
    from migration import schemas as rules

    old_ids = set(rules.OLD_INPUTS) | set(rules.UNSUPPORTED)  # old-pack node IDs the migration knows
    ours = {k: v for k, v in comfy_nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("IPA_")}
    for node_id, cls in ours.items():
        assert "ipadapter" in cls.SEARCH_ALIASES, node_id
        generic = ("ipadapter", "ip-adapter", "faceid", "insightface")  # words users search for
        unknown = [a for a in cls.SEARCH_ALIASES if a not in generic and a not in old_ids]
        assert not unknown, (node_id, unknown)
    assert "IPAdapterAdvanced" in ours["IPA_ApplyAdvanced"].SEARCH_ALIASES
