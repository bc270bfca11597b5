"""Driving ComfyUI's frontend in a headless Chromium with Playwright, for tests/host/test_browser.py: finding the
system Chromium, a page wrapper that records what went wrong (console errors, page errors, failed responses, blocked
requests), screenshots, loading a UI-format workflow on the stand-ins, the node library of either frontend
generation, and screen boxes of nodes and graphs. Playwright is imported by the caller (the test skips without it).
"""
from __future__ import annotations

import copy
import os
import re
import shutil

from . import faceid_standins, standins

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-default-apps", "--disable-sync", "--no-first-run", "--disable-extensions",
                 "--metrics-recording-only", "--disable-dev-shm-usage"]


def find_chromium() -> tuple[str | None, str]:
    """(path, "") of the system Chromium (IPA_CHROMIUM, chromium, chromium-browser on PATH), or (None, why not)."""
    env = os.environ.get("IPA_CHROMIUM")
    if env:
        return (env, "") if os.path.isfile(env) else (None, f"IPA_CHROMIUM={env} does not exist")
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path, ""
    return None, ("no Chromium found (IPA_CHROMIUM, chromium, chromium-browser); install it with "
                  "'apt-get install chromium' (scripts/setup_env.sh --test does so when run as root)")


class Page:
    """The Playwright page plus what it logged: console errors, page errors, failed responses, blocked requests."""

    def __init__(self, page, server_url: str, pack: str, shots: str):
        self.page = page
        self.pack = pack  # the folder (module) name the server loaded the pack from
        self.shots = shots  # where screenshot() writes
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.served: dict[str, int] = {}  # the pack's files and route: URL -> HTTP status
        page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"console: {m.text} @ {m.location.get('url', '')}"))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}\n{e.stack}"))
        page.on("response", self._response)

        def route(r):
            if r.request.url.startswith(server_url):
                r.continue_()
            else:
                self.blocked.append(r.request.url)
                r.abort()

        page.route("**/*", route)

    def _response(self, r) -> None:
        if r.status >= 400:
            self.errors.append(f"HTTP {r.status}: {r.url}")
        if f"/extensions/{self.pack}/" in r.url or "/ipa/" in r.url:
            self.served[r.url.split("?")[0]] = r.status

    def ours(self) -> list[str]:
        """Errors that involve this pack: its files, its route, its nodes. Not counted: the frontend's first try
        for a help page, docs/<NodeId>/<locale>.md (the pack ships docs/<NodeId>.md, the frontend's fallback)."""
        marks = (f"/extensions/{self.pack}/", "/ipa/", "IPA_", "ipa.js")
        localized = re.compile(rf"/extensions/{self.pack}/docs/[^/\s]+/[\w-]+\.md")
        return [e for e in self.errors if any(m in e for m in marks) and not localized.search(e)]


def screenshot(ui: Page, name: str, *, readme: bool = False, **kw) -> str:
    """Screenshot into the tmp dir; the README's ones (``readme``) also into IPA_SCREENSHOT_DIR when that is set,
    reduced to 128 colours (small PNGs)."""
    path = os.path.join(ui.shots, name)
    ui.page.screenshot(path=path, **kw)
    keep = os.environ.get("IPA_SCREENSHOT_DIR")
    if keep and readme:
        from PIL import Image

        os.makedirs(keep, exist_ok=True)
        Image.open(path).convert("RGB").quantize(128).save(os.path.join(keep, name), optimize=True)
    return path


def pack_nodes(server, pack: str) -> dict[str, dict]:
    """The server's /object_info entries of the nodes loaded from the folder ``pack``."""
    info = server.object_info()
    return {k: v for k, v in info.items() if v.get("python_module", "").split(".")[-1] == pack}


def ui_standins(workflow: dict) -> dict:
    """The UI-format twin of workflow_convert.use_standins: stand-in file names, the helper CLIP vision loader,
    64 px latents, at most 3 steps; the loaders' download links dropped (no missing-model dialog)."""
    wf = copy.deepcopy(workflow)
    for node in wf["nodes"]:
        values, kind = node.get("widgets_values"), node["type"]
        node.get("properties", {}).pop("models", None)
        if kind == "CheckpointLoaderSimple":
            values[0] = standins.CHECKPOINT
        elif kind == "CLIPVisionLoader":
            node["type"] = "IPATest_CLIPVisionLoaderJSON"
            values[0] = standins.CLIP_VISION
        elif kind == "IPA_ModelLoader":
            values[0] = (faceid_standins.adapter_for(values[0]) if "faceid" in values[0].lower()
                         else standins.ADAPTER_PLUS if "plus" in values[0] else standins.ADAPTER)
        elif kind == "IPA_FaceModelLoader":
            values[0] = faceid_standins.FACE_MODELS
        elif kind == "EmptyLatentImage":
            values[0] = values[1] = 64
        elif kind == "KSampler":
            values[2] = min(values[2], 3)
    return wf


def load_graph(ui: Page, workflow: dict) -> None:
    ui.page.evaluate("async wf => { await app.loadGraphData(wf, true, true, 'ipa-browser-test'); }", workflow)
    ui.page.wait_for_function("n => app.graph.nodes.length === n", arg=len(workflow["nodes"]))


# The node library and its help pages differ between frontend generations; the test finds out in the page which one
# it has (never by version numbers):
# - the tree of comfyui-frontend-package 1.2x (input.search-box-input, PrimeVue li.p-tree-node-leaf leaves): each
#   leaf has a help button that opens the help page in the sidebar, left with its back arrow;
# - the redesigned library of 1.3x+ (Comfy.NodeLibrary.NewDesign, default there: a combobox search, role=treeitem
#   leaves with only a bookmark button): the help page is the Info tab of the right side panel for a node on the
#   canvas. The node is put there from its leaf (click the leaf, click the canvas), selected, and the selection
#   toolbox's Node Info button opens the tab; deleting the node and closing the panel put the page back.
LIBRARY = ".side-bar-panel"
HELP_BOLD = ".node-help-content .markdown-content strong"
PROPERTIES = "[data-testid=properties-panel]"  # the redesign's right side panel


def library_search(page):
    """The node library's search input, whichever frontend: waits for the sidebar to show one."""
    kind = page.wait_for_function(f"""() => {{
        const panel = document.querySelector('{LIBRARY}');
        if (!panel) return null;
        if (panel.querySelector('input.search-box-input')) return 'input.search-box-input';
        if (panel.querySelector('input[role=combobox]')) return 'input[role=combobox]';
        return null;
    }}""", timeout=30_000).json_value()
    return page.locator(f"{LIBRARY} {kind}").first


def library_leaf(page, name: str):
    return page.locator(LIBRARY).locator(
        f'li.p-tree-node-leaf[aria-label="{name}"], [role=treeitem]:not([aria-expanded]):has(> span:text-is("{name}"))'
    ).first


def open_help_from_canvas(page, leaf, node_id: str) -> None:
    """New library: the leaf places its node on the canvas (click, then click the canvas); Node Info on the
    selection toolbox opens the right side panel's Info tab. Clicks only; the caller expects the help fetch."""
    before = page.evaluate("app.graph.nodes.map(n => String(n.id))")
    leaf.click()
    panel = page.locator(LIBRARY).bounding_box()
    x, y = panel["x"] + panel["width"] + 250, 320
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    added = page.wait_for_function(
        """before => {
            const nodes = app.graph.nodes.filter(n => !before.includes(String(n.id)));
            return nodes.length ? nodes.map(n => n.type) : null;
        }""", arg=before, timeout=30_000).json_value()
    assert added == [node_id], f"the library leaf for {node_id} put {added} on the canvas"
    page.locator(".selection-toolbox [data-testid=info-button]").click()


def close_help_from_canvas(page, node_id: str) -> None:
    """Delete the node (the Info tab goes with it) and close the right side panel with its own toggle button, so the
    canvas is as wide as before for the next node and the next tests."""
    page.evaluate("type => app.graph.nodes.filter(n => n.type === type).forEach(n => app.graph.remove(n))", node_id)
    page.evaluate("app.canvas.setDirty(true, true)")
    page.locator(".node-help-content").wait_for(state="detached", timeout=30_000)
    page.locator(f'{PROPERTIES} button[aria-pressed="true"]:has(i[class*="panel-right"])').click(timeout=30_000)
    page.locator(PROPERTIES).wait_for(state="detached", timeout=30_000)


PREVIEW = "id => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipa_preview')"


def node_clip(ui: Page, node_id: int) -> dict:
    """The node's box on the screen (title included), for a clipped screenshot."""
    return ui.page.evaluate("""id => {
        const node = app.graph.getNodeById(id), ds = app.canvas.ds;
        const rect = app.canvas.canvas.getBoundingClientRect();
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        const [x, y] = ds.convertOffsetToCanvas([node.pos[0] - 6, node.pos[1] - title - 6]);
        return {x: rect.left + x, y: rect.top + y, width: (node.size[0] + 12) * ds.scale,
                height: (node.size[1] + title + 12) * ds.scale};
    }""", node_id)


def frame_graph(ui: Page, scale: float, margin: int = 16, top: int = 44) -> dict:
    """Zoom to ``scale``, put the graph's top-left corner at the canvas' top-left, move the pointer away (no
    hover popups) and return the screen box of the whole graph; ``top`` px are left for the workflow tabs, which
    lie over the canvas."""
    ui.page.mouse.move(5, 890)
    box = ui.page.evaluate("""([scale, margin, top]) => {
        const title = LiteGraph.NODE_TITLE_HEIGHT, ds = app.canvas.ds, nodes = app.graph.nodes;
        const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
        const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
        const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
        ds.scale = scale;
        ds.offset = [margin / scale - x0, (top + margin) / scale - y0];
        app.canvas.setDirty(true, true);
        const rect = app.canvas.canvas.getBoundingClientRect();
        return {x: rect.left, y: rect.top + top, width: Math.min(rect.width, (x1 - x0) * scale + 2 * margin),
                height: Math.min(rect.height - top, (y1 - y0) * scale + 2 * margin)};
    }""", [scale, margin, top])
    ui.page.wait_for_timeout(500)
    return box
