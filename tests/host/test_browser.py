"""The real frontend in a headless browser: ComfyUI's server with this pack, the page ComfyUI serves, Chromium.

What is checked, on the surfaces a user sees:
- the pack's web extension (web/js/ipa.js) loads, and nothing the pack serves or runs logs a console error;
- every node of the pack is in the node library (sidebar search "IPA"), and the frontend shows the pack's help page
  for it (it fetches /extensions/<pack>/docs/<NodeId>.md and renders it: each input in bold): from the leaf's help
  button in the older library tree, from the Info tab of the node put on the canvas from its leaf in the redesigned
  library (found out in the page, see testkit.browser.library_search);
- example_workflows/ipadapter_simple.json loads into the graph editor (UI format, model names swapped for the random
  stand-ins), is queued from the page (app.queuePrompt), runs, and its image comes back to the page; the loader
  shows the detected variant on the node;
- the weight preview on IPA Apply (advanced) draws the route's per-site weights, follows widget edits and shows
  the node's error text for bad layer_weights.
Screenshots go to pytest's tmp dir; with IPA_SCREENSHOT_DIR=docs/images they are also written there (README).

Browser: Chromium from the system (IPA_CHROMIUM, or chromium / chromium-browser on PATH), driven by Playwright
(pip package ``playwright``; no browser download). Started headless, --no-sandbox, without background networking;
every request to another host than the ComfyUI server is blocked. Skipped, with the reason, when either is missing
(scripts/setup_env.sh --test installs both where it can). The page-driving helpers: testkit/browser.py.
"""
from __future__ import annotations

import json
import os

import pytest

from testkit import standins
from testkit.browser import (CHROMIUM_ARGS, HELP_BOLD, PREVIEW, Page, close_help_from_canvas, find_chromium,
                             frame_graph, library_leaf, library_search, load_graph, node_clip, open_help_from_canvas,
                             pack_nodes, screenshot, ui_standins)
from testkit.comfyui_env import REPO

PACK = "comfyui_ip_adapter"  # the pack's folder (module) name on the server: set by the server fixture
EXAMPLES = os.path.join(REPO, "example_workflows")
SIMPLE = os.path.join(EXAMPLES, "ipadapter_simple.json")
STYLE = os.path.join(EXAMPLES, "ipadapter_style_composition.json")
PAGE_TIMEOUT_MS = 180_000
RUN_TIMEOUT_MS = 600_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = find_chromium()
    if path is None:
        pytest.skip(f"browser tests: {why}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests: the Python package 'playwright' is not installed (pip install playwright; "
                    "no 'playwright install' needed, the system Chromium is used)")
    return path


@pytest.fixture(scope="module")
def server(chromium, standin_server):
    global PACK
    srv = standin_server
    # /extensions/<folder>/ and python_module "custom_nodes.<folder>": the folder the server loaded the pack from
    # (a hyphenated one when this checkout sits in custom_nodes/ as ComfyUI-Manager names it)
    PACK = os.path.basename(os.path.normpath(srv.pack_dir))
    # a fresh user folder: no first-run template browser over the canvas; no minimap or source badges in the
    # screenshots
    for key, value in {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                       "Comfy.NodeBadge.NodeSourceBadgeMode": "None"}.items():
        srv.session.post(f"{srv.url}/settings/{key}", json=value, timeout=30).raise_for_status()
    return srv


@pytest.fixture(scope="module")
def ui(chromium, server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    shots = tmp_path_factory.mktemp("screenshots")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            wrapped = Page(page, server.url, PACK, str(shots))
            page.goto(server.url)
            page.wait_for_function("window.app?.graph && window.LiteGraph && window.comfyAPI?.api?.api")
            page.wait_for_function("app.extensions.some(e => e.name === 'ipa.graphEditor')")
            page.evaluate("""() => {
                window.__ipaExecuted = [];
                window.__ipaFailed = [];
                const api = comfyAPI.api.api;
                api.addEventListener('executed', e => window.__ipaExecuted.push(e.detail));
                api.addEventListener('execution_error', e => window.__ipaFailed.push(e.detail));
            }""")
            yield wrapped
            print(f"\nbrowser screenshots: {shots}; blocked external requests: {wrapped.blocked or 'none'}")
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------------------------ tests

def test_extension_loads_without_console_errors(ui, server):
    r = server.session.get(f"{server.url}/extensions/{PACK}/js/ipa.js", timeout=30)
    assert r.status_code == 200 and "registerExtension" in r.text
    assert ui.served.get(f"{server.url}/extensions/{PACK}/js/ipa.js") == 200, ui.served
    assert not ui.ours(), "errors from the pack in the browser:\n" + "\n".join(ui.ours())


def search_words(name: str, limit: int = 30) -> str:
    """The node library's search text for a node: its name's first words up to ``limit`` characters (the 1.49
    frontend's search finds nothing for "IPAdapter Style & Composition Batch SDXL" or "Batch SDXL", and lists that
    node for "IPAdapter Style"; the leaf is then picked by its exact name)."""
    words = name.split()
    while len(words) > 1 and len(" ".join(words)) > limit:
        words = words[:-1]
    return " ".join(words)


def test_nodes_are_in_the_node_library_with_their_help_pages(ui, server):
    nodes = pack_nodes(server, PACK)
    assert "IPA_ApplyAdvanced" in nodes and "IPA_ModelLoader" in nodes, sorted(nodes)
    registered = ui.page.evaluate("Object.keys(LiteGraph.registered_node_types)")
    assert not set(nodes) - set(registered), f"not registered in the editor: {set(nodes) - set(registered)}"

    page = ui.page
    page.evaluate("app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library')")
    search = library_search(page)
    cleared = False
    for node_id, spec in sorted(nodes.items()):
        name = spec["display_name"]
        search.fill(search_words(name))  # a short result list (a long one scrolls, and its leaves move)
        leaf = library_leaf(page, name)
        leaf.wait_for(state="visible", timeout=30_000)
        leaf.hover()
        in_tree = leaf.locator("button.help-button").count() > 0  # the 1.2x tree: a help button per leaf
        if not in_tree and not cleared:
            page.evaluate("() => { app.graph.clear(); app.canvas.setDirty(true, true); }")  # room to place nodes
            cleared = True
        doc = f"/extensions/{PACK}/docs/{node_id}.md"
        with page.expect_response(lambda r: r.url.split("?")[0].endswith(doc), timeout=30_000) as response:
            if in_tree:
                leaf.locator("button.help-button").click()
            else:
                open_help_from_canvas(page, leaf, node_id)
        assert response.value.status == 200, f"{node_id}: help page {doc} -> HTTP {response.value.status}"
        inputs = [*spec["input"].get("required", {}), *spec["input"].get("optional", {})]
        page.wait_for_function(
            """([selector, names]) => {
                const bold = [...document.querySelectorAll(selector)];
                return names.every(n => bold.some(s => s.textContent.trim() === n));
            }""", arg=[HELP_BOLD, inputs], timeout=30_000)
        if node_id == "IPA_ApplyAdvanced":
            screenshot(ui, "help_page.png")
        if in_tree:
            page.locator("button:has(.pi-arrow-left)").first.click()  # the help page's back arrow
        else:
            close_help_from_canvas(page, node_id)
    page.evaluate("app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library')")
    assert not ui.ours(), "errors from the pack in the browser:\n" + "\n".join(ui.ours())


def test_simple_example_loads_queues_and_shows_its_image(ui, server):
    workflow = ui_standins(json.load(open(SIMPLE, encoding="utf-8")))
    load_graph(ui, workflow)
    page = ui.page
    assert sorted(page.evaluate("app.graph.nodes.map(n => n.type)")) == sorted(n["type"] for n in workflow["nodes"])
    ids = {n["type"]: n["id"] for n in workflow["nodes"]}
    page.evaluate("() => { __ipaExecuted.length = 0; __ipaFailed.length = 0; }")
    page.evaluate("app.queuePrompt(0, 1)")
    page.wait_for_function(
        "id => __ipaFailed.length || __ipaExecuted.some(d => String(d.node) === String(id) && d.output?.images)",
        arg=ids["SaveImage"], timeout=RUN_TIMEOUT_MS)
    failed = page.evaluate("__ipaFailed")
    assert not failed, f"the prompt failed: {failed}\n{server.log_tail()}"
    # the image reaches the page: the Save Image node displays it
    page.wait_for_function("id => app.graph.getNodeById(id).imgs?.[0]?.naturalWidth === 64", arg=ids["SaveImage"])
    # the loader shows what it detected (the base stand-in adapter on an SD1.5-shaped checkpoint)
    text = page.evaluate("id => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipa_info')?.value",
                         ids["IPA_ModelLoader"])
    assert text and text.startswith("Base, SD1.5, 4 tokens, needs "), text
    # what the editor saves is unchanged by the extension's displays (no extra widget values)
    saved = page.evaluate("id => app.graph.getNodeById(id).serialize().widgets_values", ids["IPA_ModelLoader"])
    assert saved == [standins.ADAPTER]
    # make room under the loader for its text (as a user would), then frame the whole graph for the screenshot
    page.evaluate("""id => {
        const loader = app.graph.getNodeById(id), bottom = loader.pos[1] + 60;
        const below = app.graph.nodes.filter(n => n !== loader && Math.abs(n.pos[0] - loader.pos[0]) < 10
                                              && n.pos[1] > loader.pos[1]);
        const shift = Math.max(0, loader.pos[1] + loader.size[1] + 40 - Math.min(...below.map(n => n.pos[1])));
        below.forEach(n => { n.pos[1] += shift; });
    }""", ids["IPA_ModelLoader"])
    screenshot(ui, "simple_workflow.png", readme=True, clip=frame_graph(ui, 0.8))
    assert not ui.ours(), "errors from the pack in the browser:\n" + "\n".join(ui.ours())


def test_weight_preview_on_apply_advanced(ui):
    workflow = ui_standins(json.load(open(STYLE, encoding="utf-8")))
    load_graph(ui, workflow)
    page = ui.page
    style, composition = [n["id"] for n in workflow["nodes"] if n["type"] == "IPA_ApplyAdvanced"]
    page.wait_for_function(f"ids => ids.every(id => ({PREVIEW})(id)?.data)", arg=[style, composition])

    def weights(node_id):
        data = page.evaluate(f"id => ({PREVIEW})(id).data", node_id)
        return {s["key"]: s["weight"] for s in data["sites"]}

    # SD1.5 (nothing ran yet, so the switch's default), SpatialTransformers in execution order: input 1, 2, 4, 5,
    # 7, 8 = t 0-5, middle = 6, output 3-11 = 7-15. style transfer: t 0-3 and 9-15 at w (1.0); composition: t 4 at
    # w/4, t 5 at w (0.8).
    keys = ["input.1.0", "input.2.0", "input.4.0", "input.5.0", "input.7.0", "input.8.0", "middle.0.0"] + [
        f"output.{i}.0" for i in range(3, 12)]
    assert weights(style) == {k: (1.0 if t <= 3 or t >= 9 else 0.0) for t, k in enumerate(keys)}
    assert weights(composition) == pytest.approx({k: {4: 0.2, 5: 0.8}.get(t, 0.0) for t, k in enumerate(keys)})

    # typing into the layer_weights text box (the real DOM widget) updates the bars
    page.evaluate("id => { app.canvas.centerOnNode(app.graph.getNodeById(id)); app.canvas.setDirty(true, true); }",
                  style)
    page.evaluate("""id => app.graph.getNodeById(id).widgets.find(w => w.name === 'layer_weights')
                      .element.setAttribute('data-ipa-test', 'layer-weights')""", style)
    box = page.locator("[data-ipa-test=layer-weights]")
    box.fill("3:1.0, N29:0.5")
    page.wait_for_function(f"id => ({PREVIEW})(id).data?.sites.some(s => s.weight === 0.5)", arg=style)
    assert {k: w for k, w in weights(style).items() if w} == {"input.5.0": 1.0, "output.11.0": 0.5}
    box.fill("3:1.0, bogus")
    page.wait_for_function(f"id => ({PREVIEW})(id).error", arg=style)
    error = page.evaluate(f"id => ({PREVIEW})(id).error", style)
    assert "layer_weights" in error and "bogus" in error, error
    box.fill("")

    # clicking SDXL on the preview switches the layout (70 sites); style transfer is then output block 1 only
    page.wait_for_function(f"id => !({PREVIEW})(id).error", arg=style)
    target = page.evaluate(f"""id => {{
        const node = app.graph.getNodeById(id), w = ({PREVIEW})(id), ds = app.canvas.ds;
        const box = w.boxes.find(b => b.family === 'sdxl');
        const [x, y] = ds.convertOffsetToCanvas([node.pos[0] + box.x + box.w / 2, node.pos[1] + w.last_y + 7]);
        const rect = app.canvas.canvas.getBoundingClientRect();
        return [rect.left + x, rect.top + y];
    }}""", style)
    page.mouse.click(*target)
    page.wait_for_function(f"id => ({PREVIEW})(id).data?.sites.length === 70", arg=style)
    assert page.evaluate("id => app.graph.getNodeById(id).properties.ipa_family", style) == "sdxl"
    on = {k for k, w in weights(style).items() if w}
    assert on == {f"output.1.{t}" for t in range(10)}
    # a schedule shows its curve: ease in-out over start_at..end_at
    page.evaluate("""id => {
        const w = app.graph.getNodeById(id).widgets.find(w => w.name === 'weight_schedule');
        w.value = 'ease in-out'; w.callback?.(w.value); app.canvas.setDirty(true, true);
    }""", style)
    page.wait_for_function(f"id => ({PREVIEW})(id).data?.schedule.at(0) === 0", arg=style)
    schedule = page.evaluate(f"id => ({PREVIEW})(id).data.schedule", style)
    assert schedule[len(schedule) // 2] == pytest.approx(1.0) and schedule[-1] == pytest.approx(0.0)
    # the precise type marks the sites it pushes away from the image (SDXL: the composition layer, input 8)
    page.evaluate("""id => {
        const node = app.graph.getNodeById(id), w = node.widgets.find(w => w.name === 'weight_type');
        w.value = 'style transfer precise'; w.callback?.(w.value);
        node.setSize([420, node.size[1]]);
        app.canvas.ds.scale = 1.2; app.canvas.centerOnNode(node); app.canvas.setDirty(true, true);
    }""", style)
    page.wait_for_function(f"id => ({PREVIEW})(id).data?.sites.some(s => s.swapped)", arg=style)
    swapped = page.evaluate(f"id => ({PREVIEW})(id).data.sites.filter(s => s.swapped).map(s => s.key)", style)
    assert swapped == [f"input.8.{t}" for t in range(10)]
    page.mouse.move(5, 890)
    page.wait_for_timeout(500)
    screenshot(ui, "weight_preview.png", readme=True, clip=node_clip(ui, style))

    # the preview is display only: not in the prompt, not in the saved widget values
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert not [k for k in prompt[str(style)]["inputs"] if k.startswith("ipa_")]
    names = page.evaluate("id => app.graph.getNodeById(id).widgets.map(w => w.name)", style)
    values = page.evaluate("id => app.graph.getNodeById(id).serialize().widgets_values", style)
    assert names[-1] == "ipa_preview" and len(values) == len(names) - 1, (names, values)

    # once the connected loader has run, its family wins over the switch: the frontend hands the loader's ui output
    # to onExecuted, as after a real run
    loader = next(n["id"] for n in workflow["nodes"] if n["type"] == "IPA_ModelLoader")
    page.evaluate("id => { app.graph.getNodeById(id).properties.ipa_family = 'sd15'; }", composition)
    page.evaluate("id => app.graph.getNodeById(id).onExecuted({text: ['Plus, SDXL, 16 tokens, needs CLIP ViT-H']})",
                  loader)
    page.wait_for_function(f"id => ({PREVIEW})(id).auto && ({PREVIEW})(id).data?.sites.length === 70",
                           arg=composition)
    assert not ui.ours(), "errors from the pack in the browser:\n" + "\n".join(ui.ours())
