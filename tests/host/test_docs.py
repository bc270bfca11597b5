"""Every node is documented where ComfyUI users look: a help page in web/docs/, a tooltip per input, a README row.
The ComfyUI_IPAdapter_plus IDs the pack serves (nodes/old_api/) have their own rules: a help page each (the old
pack's display name, each input named), web/docs/old_api.md listing them with the switch, and the README section."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OLD_API_SECTION = "## Using clients built for ComfyUI_IPAdapter_plus"


def _old_ids(pack_module):
    return set(pack_module("nodes.old_api.register").served_classes())


def _pack_nodes(pack):
    """The pack's own IPA_* nodes (the served old IDs are checked below)."""
    return {k: v for k, v in pack.NODE_CLASS_MAPPINGS.items() if k.startswith("IPA_")}


def test_the_pack_registers_its_nodes_and_the_served_old_ids(pack, pack_module):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(_pack_nodes(pack)) | _old_ids(pack_module)


def test_every_node_has_a_help_page_naming_each_input(pack):
    for node_id, cls in _pack_nodes(pack).items():
        page = os.path.join(ROOT, "web", "docs", f"{node_id}.md")
        assert os.path.isfile(page), f"{node_id} has no help page at web/docs/{node_id}.md"
        text = open(page, encoding="utf-8").read()
        inputs = {**cls.INPUT_TYPES().get("required", {}), **cls.INPUT_TYPES().get("optional", {})}
        missing = [name for name in inputs if f"**{name}**" not in text]
        assert not missing, f"web/docs/{node_id}.md does not describe inputs {missing}"


def test_readme_lists_every_node_and_the_two_commands(pack):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for node_id, cls in _pack_nodes(pack).items():
        assert f"`{node_id}`" in readme and cls.DISPLAY_NAME in readme, f"README does not list {node_id}"
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme


def test_node_ids_are_prefixed_and_categorised(pack):
    for node_id, cls in _pack_nodes(pack).items():
        assert node_id.startswith("IPA_"), node_id
        assert cls.CATEGORY.startswith("ip-adapter"), (node_id, cls.CATEGORY)
        assert cls.DESCRIPTION, node_id


def _signature(cls):
    spec = cls.INPUT_TYPES()

    def entries(group):
        return [[name, "COMBO" if isinstance(d[0], list) else d[0]] for name, d in spec.get(group, {}).items()]

    return {"category": cls.CATEGORY, "required": entries("required"), "optional": entries("optional"),
            "returns": list(cls.RETURN_TYPES)}


def test_public_api_is_never_broken(pack):
    """Node IDs, input names/order/types and socket types recorded in public_api.json still exist unchanged;
    new nodes may appear and new optional inputs may be appended."""
    import json

    frozen = json.load(open(os.path.join(os.path.dirname(__file__), "public_api.json"), encoding="utf-8"))
    nodes = _pack_nodes(pack)
    for node_id, want in frozen.items():
        if node_id.startswith("_"):
            continue
        assert node_id in nodes, f"node {node_id} was removed or renamed; retire it instead (keep it loading)"
        got = _signature(nodes[node_id])
        assert got["category"] == want["category"], node_id
        assert got["required"] == want["required"], f"{node_id}: required inputs changed"
        assert got["optional"][: len(want["optional"])] == want["optional"], f"{node_id}: optional inputs changed"
        assert got["returns"] == want["returns"], f"{node_id}: outputs changed"


def test_the_served_old_ids_are_documented(pack, pack_module):
    index = open(os.path.join(ROOT, "web", "docs", "old_api.md"), encoding="utf-8").read()
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert OLD_API_SECTION in readme, "README has no section for clients of the old pack"
    section = readme.split(OLD_API_SECTION, 1)[1].split("\n## ", 1)[0]
    assert "IPA_OLD_API=reference" in section and "IPA_OLD_API=reference" in index
    for node_id in sorted(_old_ids(pack_module)):
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        assert f"`{node_id}`" in section, f"the README section does not list {node_id}"
        assert f"({node_id}.md)" in index, f"web/docs/old_api.md does not list {node_id}'s page"
        path = os.path.join(ROOT, "web", "docs", f"{node_id}.md")  # what ComfyUI's node library shows for it
        assert os.path.isfile(path), f"{node_id} has no help page at web/docs/{node_id}.md"
        text = open(path, encoding="utf-8").read()
        spec = cls.INPUT_TYPES()
        inputs = {**spec.get("required", {}), **spec.get("optional", {})}
        missing = [name for name in inputs if f"**{name}**" not in text]
        assert not missing, f"web/docs/{node_id}.md: inputs {missing} not described"
        assert cls.CATEGORY.startswith("ipadapter") and cls.DISPLAY_NAME in text, node_id
