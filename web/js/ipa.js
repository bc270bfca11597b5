/*
 * IP-Adapter (IPA) graph editor extension. Plain JavaScript on the ComfyUI frontend's extension API, no dependencies.
 *
 * 1. What was loaded: any IPA_ node whose execution returns {"ui": {"text": [...]}} (IPA Load Adapter: "Plus, SDXL,
 *    16 tokens, needs CLIP ViT-H") shows that text on the node, below its widgets, after it runs.
 *
 * 2. Weight preview on IPA Apply (advanced): one bar per cross-attention site, grouped input | middle | output
 *    blocks, for the node's weight, weight_type, weight_composition, precise_boost and layer_weights (orange bars: sites where a
 *    "precise" type pushes away from the image), and, when weight_schedule is not "constant", the per-step factor
 *    over start_at..end_at as a small curve. The numbers come from the pack's route GET /ipa/site_weights, which
 *    runs the same core functions as the node: nothing is computed here. It is re-fetched (debounced) whenever one
 *    of those widgets changes; a value the node would refuse (bad layer_weights, say) shows the node's error text
 *    instead of bars. The model family is not known before the graph runs: it is taken from the connected loader's
 *    text once that has run ("auto"), otherwise from the SD1.5 / SDXL switch on the preview (click it).
 *
 * Both displays are canvas widgets that are never serialized: saved workflows and prompts are unchanged.
 */
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PREFIX = "IPA_";
const PREVIEW_NODES = new Set(["IPA_ApplyAdvanced"]);
const PREVIEW_INPUTS = ["weight", "weight_type", "weight_composition", "layer_weights", "weight_schedule",
  "schedule_values", "precise_boost"];
const ROUTE = "/ipa/site_weights";
const DEBOUNCE_MS = 250;
const FAMILIES = [["sd15", "SD1.5"], ["sdxl", "SDXL"]];
const BLOCKS = ["input", "middle", "output"];
const LINE = 14;
const PREVIEW_HEIGHT = 112;
const COLOR = { bar: "#5b9bd5", swapped: "#e08a3c", zero: "#555", text: "#bbb", dim: "#777", error: "#ff6b6b",
  axis: "#444", curve: "#8fd18f" };

function widgetValue(node, name) {
  const widget = node.widgets?.find((w) => w.name === name);
  return widget === undefined ? undefined : widget.value;
}

/** Lines of `text` that fit `width` px in the current font (words kept whole where possible). */
function wrap(ctx, text, width) {
  const out = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(" ")) {
      const next = line ? `${line} ${word}` : word;
      if (line && ctx.measureText(next).width > width) {
        out.push(line);
        line = word;
      } else {
        line = next;
      }
    }
    out.push(line);
  }
  return out;
}

function grow(node) {
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  node.setDirtyCanvas(true, true);
}

/* ------------------------------------------------------------------------------------------------ loader text */

function infoWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "ipa_info");
  if (widget) return widget;
  widget = {
    type: "ipa_info", name: "ipa_info", value: "", serialize: false, options: { serialize: false }, lines: [],
    computeSize(width) {
      return [width, Math.max(1, this.lines.length) * LINE + 6];
    },
    draw(ctx, _node, width, y) {
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = COLOR.text;
      ctx.textBaseline = "top";
      this.lines = wrap(ctx, this.value, width - 20);
      this.lines.forEach((line, i) => ctx.fillText(line, 10, y + 3 + i * LINE));
      ctx.restore();
    },
  };
  node.addCustomWidget(widget);
  return widget;
}

function showInfo(node, text) {
  const widget = infoWidget(node);
  widget.value = text;
  widget.lines = String(text).split("\n");
  node.ipaInfo = text;
  grow(node);
}

/* ------------------------------------------------------------------------------------------------ weight preview */

/** "sd15" / "sdxl" from the text of the node connected to the `ipadapter` input, or null if it has not run. */
function inferredFamily(node) {
  const slot = node.inputs?.findIndex((input) => input.name === "ipadapter");
  if (slot === undefined || slot < 0) return null;
  const source = node.getInputNode?.(slot);
  const text = source?.ipaInfo;
  if (!text) return null;
  if (/SDXL/i.test(text)) return "sdxl";
  if (/SD ?1\.5|SD15/i.test(text)) return "sd15";
  return null;
}

function previewQuery(node) {
  const auto = inferredFamily(node);
  const family = auto ?? node.properties?.ipa_family ?? "sd15";
  const params = new URLSearchParams({ family, points: "41" });
  for (const name of PREVIEW_INPUTS) {
    const value = widgetValue(node, name);
    if (value !== undefined && value !== null) params.set(name, String(value));
  }
  return { family, auto: auto !== null, query: params.toString() };
}

async function fetchPreview(node, widget, query) {
  try {
    const response = await api.fetchApi(`${ROUTE}?${query}`);
    const data = await response.json().catch(() => ({}));
    if (widget.requested !== query) return;
    const error = response.ok ? data.error : data.error ?? `HTTP ${response.status}`;
    widget.data = error ? null : data;
    widget.error = error ?? null;
  } catch (error) {
    if (widget.requested !== query) return;
    widget.data = null;
    widget.error = `weight preview unavailable: ${error.message ?? error}`;
  }
  node.setDirtyCanvas(true, false);
}

/** Re-fetch (debounced) when the widgets' values or the family changed since the last request. */
function refreshIfChanged(node, widget) {
  const { family, auto, query } = previewQuery(node);
  widget.family = family;
  widget.auto = auto;
  if (query === widget.requested) return;
  widget.requested = query;
  clearTimeout(widget.timer);
  widget.timer = setTimeout(() => fetchPreview(node, widget, query), DEBOUNCE_MS);
}

function drawBars(ctx, data, x0, y0, width, height) {
  const sites = data.sites;
  const groups = BLOCKS.map((block) => sites.filter((s) => s.block === block));
  const gap = 8;
  const step = (width - gap * (groups.length - 1)) / sites.length;
  const weights = sites.map((s) => s.weight);
  const top = Math.max(1, ...weights);
  const bottom = Math.min(0, ...weights);
  const scale = height / (top - bottom);
  const zeroY = y0 + top * scale;
  ctx.strokeStyle = COLOR.axis;
  ctx.beginPath();
  ctx.moveTo(x0, zeroY + 0.5);
  ctx.lineTo(x0 + width, zeroY + 0.5);
  ctx.stroke();
  let x = x0;
  const labels = [];
  groups.forEach((group, g) => {
    labels.push([BLOCKS[g], x, group.length * step]);
    for (const site of group) {
      const h = site.weight * scale;
      ctx.fillStyle = site.weight === 0 ? COLOR.zero : site.swapped ? COLOR.swapped : COLOR.bar;
      const barWidth = Math.max(1, step - (step > 3 ? 1 : 0));
      if (site.weight === 0) ctx.fillRect(x, zeroY - 1, barWidth, 2);
      else ctx.fillRect(x, Math.min(zeroY, zeroY - h), barWidth, Math.abs(h));
      x += step;
    }
    x += gap;
  });
  ctx.fillStyle = COLOR.dim;
  ctx.font = "10px sans-serif";
  ctx.textAlign = "center";
  for (const [label, lx, lw] of labels) ctx.fillText(label, lx + lw / 2, y0 + height + 3);
  ctx.textAlign = "left";
  ctx.fillText(`max ${top.toFixed(2)}`, x0, y0 - 11);
}

function drawCurve(ctx, values, x0, y0, width, height) {
  const top = Math.max(1, ...values);
  const bottom = Math.min(0, ...values);
  const scale = height / (top - bottom);
  ctx.strokeStyle = COLOR.axis;
  ctx.strokeRect(x0 + 0.5, y0 + 0.5, width, height);
  ctx.strokeStyle = COLOR.curve;
  ctx.beginPath();
  values.forEach((v, i) => {
    const px = x0 + (i / (values.length - 1)) * width;
    const py = y0 + (top - v) * scale;
    if (i === 0) ctx.moveTo(px, py);
    else ctx.lineTo(px, py);
  });
  ctx.stroke();
}

function familySwitchBoxes(ctx, width) {
  ctx.font = "11px sans-serif";
  let x = width - 10;
  const boxes = [];
  for (const [family, label] of [...FAMILIES].reverse()) {
    const w = ctx.measureText(label).width + 10;
    x -= w;
    boxes.unshift({ family, label, x, w });
    x -= 4;
  }
  return boxes;
}

function previewWidget(node) {
  const widget = {
    type: "ipa_preview", name: "ipa_preview", value: "", serialize: false, options: { serialize: false },
    data: null, error: null, requested: null, family: "sd15", auto: false, boxes: [], y: 0,
    computeSize(width) {
      return [width, PREVIEW_HEIGHT];
    },
    draw(ctx, node_, width, y) {
      refreshIfChanged(node_, this);
      this.last_y = y;
      ctx.save();
      ctx.textBaseline = "top";
      ctx.font = "11px sans-serif";
      ctx.fillStyle = COLOR.text;
      ctx.fillText(this.auto ? "weight per site (family from the loader)" : "weight per site", 10, y + 2);
      this.boxes = familySwitchBoxes(ctx, width);
      for (const box of this.boxes) {
        const active = box.family === this.family;
        ctx.fillStyle = active ? "#3a5f8a" : "#2a2a2a";
        ctx.fillRect(box.x, y, box.w, 15);
        ctx.fillStyle = active ? "#fff" : COLOR.dim;
        ctx.fillText(box.label, box.x + 5, y + 2);
      }
      if (this.error) {
        ctx.fillStyle = COLOR.error;
        wrap(ctx, this.error, width - 20).slice(0, 6).forEach((line, i) => ctx.fillText(line, 10, y + 22 + i * LINE));
      } else if (this.data) {
        drawBars(ctx, this.data, 10, y + 32, width - 20, 40);
        const schedule = this.data.schedule;
        if (schedule.some((v) => v !== 1)) {
          ctx.fillStyle = COLOR.dim;
          ctx.fillText("per step, start_at → end_at", 10, y + 92);
          drawCurve(ctx, schedule, width * 0.5, y + 88, width * 0.5 - 10, 20);
        }
      } else {
        ctx.fillStyle = COLOR.dim;
        ctx.fillText("…", 10, y + 30);
      }
      ctx.restore();
    },
    mouse(event, pos, node_) {
      if (event.type !== "pointerdown" && event.type !== "mousedown") return false;
      const [x, yy] = pos;
      if (yy < this.last_y || yy > this.last_y + 15) return false;
      const box = this.boxes.find((b) => x >= b.x && x <= b.x + b.w);
      if (!box) return false;
      node_.properties ??= {};
      node_.properties.ipa_family = box.family;
      node_.setDirtyCanvas(true, false);
      return true;
    },
  };
  node.addCustomWidget(widget);
  return widget;
}

/** Refresh on edits even when the canvas does not redraw (typing in the layer_weights text box, say). */
function watchInputs(node, preview) {
  for (const widget of node.widgets ?? []) {
    if (!PREVIEW_INPUTS.includes(widget.name)) continue;
    widget.element?.addEventListener("input", () => refreshIfChanged(node, preview));
    const callback = widget.callback;
    widget.callback = function () {
      const result = callback?.apply(this, arguments);
      refreshIfChanged(node, preview);
      return result;
    };
  }
}

/* ------------------------------------------------------------------------------------------------ registration */

app.registerExtension({
  name: "ipa.graphEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith(PREFIX)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (Array.isArray(text) && text.length) showInfo(this, text.join("\n"));
    };
    if (!PREVIEW_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      watchInputs(this, previewWidget(this));
      grow(this);
      return result;
    };
  },
});
