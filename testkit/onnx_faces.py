"""Face model files for tests, benchmarks and stand-ins: ONNX graphs with the real buffalo_l I/O signatures, built with
``onnx.helper`` (the ``onnx`` package is needed here, never by the pack). Small (< 5 MB each) and quick (< 2 s for a
whole folder). Nothing is downloaded; the genuine weights are not redistributable (shared/reference/faceid.md §3).

- ``random_detector(path, seed=0, keypoints=True, batch_dim=False, levels=3)``: SCRFD-shaped detector. Input
  ``input.1`` [1, 3, ?, ?]; outputs scores [?, 1] x levels, boxes [?, 4] x levels, keypoints [?, 10] x levels
  (9 outputs; 6 without keypoints; 15 / 10 with ``levels=5``), or with a leading batch dim [1, ?, k]. Each head is
  a stride-s convolution, transpose and reshape; scores go through a sigmoid (zero-mean filters and a negative bias:
  the black letterbox padding never fires), box distances through a softplus, keypoints are offsets around a
  face-like layout. Random weights: hundreds of "faces" on a photo, for comparing two implementations.
- ``random_recognizer(path, seed=0, size=112, features=1568)``: ArcFace-shaped recogniser ['None', 3, S, S] ->
  ['None', 512] (conv 16x16 stride 16, relu, flatten, gemm from about ``features`` values: 3.2 MB at the default;
  the benchmark makes a bigger one to measure memory). Node names never start with Sub / Mul, so insightface's
  heuristic picks mean and std 127.5 / 127.5, as for w600k_r50.
- ``planted_detector(path, batch_dim=False)``: a detector with a known answer. The stride-8 score is
  sigmoid(12 * mean(normalised 9x9 patch centred on the anchor) - 6), other strides are off; boxes are 64 px
  squares centred on the anchor, keypoints the ArcFace template scaled to that box. A bright disc on a dark image
  (``blob_image``) whose centre maps onto the stride-8 grid of the letterbox canvas becomes exactly one face there;
  a disc of radius r canvas px fires for r >= ~5 and not for r <= ~3.
- ``landmark_model(path)`` (192x192 input, like 2d106det) and ``genderage_model(path)`` (96x96): routed and ignored.
- ``buffalo_folder(root, detector="random"|"planted", seed=0, name="buffalo_l")``: writes det_10g.onnx,
  w600k_r50.onnx, 2d106det.onnx and genderage.onnx into ``root/models/<name>/`` (insightface's layout) and returns
  that folder.
- ``blob_image(h, w, centres, radius, values=255)``: (h, w, 3) uint8 RGB, black, with grey discs.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


class _Graph:
    def __init__(self):
        self.nodes, self.inits = [], []
        self.n = 0

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, output=None, **attrs):
        output = output or f"t{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op.lower()}_{self.n}", **attrs))
        self.n += 1
        return output


def _save(g: _Graph, inputs, outputs, path: str, name: str) -> str:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ipa-testkit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(model, path)
    return path


def _head(g, x, weight, bias, stride, pads, width, post, out_name, batch_dim):
    """conv (stride s) -> post -> [1, H, W, A*width] -> [-1, width] (or [1, -1, width]): rows (cell, anchor)."""
    k = weight.shape[-1]
    y = g.node("Conv", [x, g.const(f"{out_name}_w", weight.astype(np.float32)),
                        g.const(f"{out_name}_b", bias.astype(np.float32))],
               kernel_shape=[k, k], strides=[stride, stride], pads=list(pads))
    for op in post:
        y = g.node(op, [y])
    y = g.node("Transpose", [y], perm=[0, 2, 3, 1])
    shape = [1, -1, width] if batch_dim else [-1, width]
    return g.node("Reshape", [y, g.const(f"{out_name}_shape", np.array(shape, dtype=np.int64))], output=out_name)


def _layout(levels: int):
    if levels == 3:
        return (8, 16, 32), 2
    if levels == 5:
        return (8, 16, 32, 64, 128), 1
    raise ValueError("levels must be 3 (strides 8-32, 2 anchors) or 5 (strides 8-128, 1 anchor)")


def _detector(path, heads, *, keypoints, batch_dim, strides):
    """heads[(kind, stride)] = (weight, bias, pads, post) for kind in score/bbox/kps."""
    g = _Graph()
    x = "input.1"
    outs = []
    kinds = [("score", 1), ("bbox", 4)] + ([("kps", 10)] if keypoints else [])
    for kind, width in kinds:
        for s in strides:
            w, b, pads, post = heads[(kind, s)]
            name = f"{kind}_{s}"
            _head(g, x, w, b, s, pads, width, post, name, batch_dim)
            dims = [1, "?", width] if batch_dim else ["?", width]
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    inp = helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "?", "?"])
    return _save(g, [inp], outs, path, "scrfd")


def _kps_offsets(box: float, stride: int) -> np.ndarray:
    """The ArcFace template scaled to a ``box``-px square centred on the anchor, in stride units, (10,)."""
    return ((TEMPLATE_112 - 56.0) * (box / 112.0) / stride).reshape(-1)


def random_detector(path: str, seed: int = 0, keypoints: bool = True, batch_dim: bool = False,
                    levels: int = 3) -> str:
    rng = np.random.default_rng(seed)
    strides, anchors = _layout(levels)
    heads = {}
    for s in strides:
        k = min(s, 32)
        fan = 3 * k * k
        ws = rng.normal(0, 2.0 / np.sqrt(fan), (anchors, 3, k, k))
        ws -= ws.mean(axis=(1, 2, 3), keepdims=True)  # a constant (black) input gives exactly the bias
        heads[("score", s)] = (ws, np.full(anchors, -1.0), (0, 0, 0, 0), ("Sigmoid",))
        heads[("bbox", s)] = (rng.normal(0, 1.0 / np.sqrt(fan), (4 * anchors, 3, k, k)),
                              np.full(4 * anchors, 2.0), (0, 0, 0, 0), ("Softplus",))
        heads[("kps", s)] = (rng.normal(0, 0.3 / np.sqrt(fan), (10 * anchors, 3, k, k)),
                             np.tile(_kps_offsets(8.0 * s, s), anchors), (0, 0, 0, 0), ())
    return _detector(path, heads, keypoints=keypoints, batch_dim=batch_dim, strides=strides)


def planted_detector(path: str, batch_dim: bool = False) -> str:
    strides, anchors = _layout(3)
    heads = {}
    for s in strides:
        if s == 8:
            score = (np.full((anchors, 3, 9, 9), 12.0 / (3 * 81)), np.full(anchors, -6.0), (4, 4, 4, 4))
        else:
            score = (np.zeros((anchors, 3, 1, 1)), np.full(anchors, -20.0), (0, 0, 0, 0))
        heads[("score", s)] = score + (("Sigmoid",),)
        heads[("bbox", s)] = (np.zeros((4 * anchors, 3, 1, 1)), np.full(4 * anchors, 32.0 / s), (0, 0, 0, 0), ())
        heads[("kps", s)] = (np.zeros((10 * anchors, 3, 1, 1)), np.tile(_kps_offsets(64.0, s), anchors),
                             (0, 0, 0, 0), ())
    return _detector(path, heads, keypoints=True, batch_dim=batch_dim, strides=strides)


def random_recognizer(path: str, seed: int = 0, size: int = 112, features: int = 1568) -> str:
    if size < 112 or size % 16:
        raise ValueError("an ArcFace-routed recogniser has a square input >= 112 divisible by 16")
    rng = np.random.default_rng(seed)
    grid = size // 16
    ch = max(1, round(features / (grid * grid)))  # 32 channels at 112: a 1568 x 512 fc, 3.2 MB
    g = _Graph()
    conv_w = rng.normal(0, 1 / np.sqrt(768), (ch, 3, 16, 16)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, ch).astype(np.float32)
    y = g.node("Conv", ["input.1", g.const("conv_w", conv_w), g.const("conv_b", conv_b)],
               kernel_shape=[16, 16], strides=[16, 16])
    y = g.node("Relu", [y])
    y = g.node("Flatten", [y], axis=1)
    fan = ch * grid * grid
    g.node("Gemm", [y, g.const("fc_w", rng.normal(0, 1 / np.sqrt(fan), (512, fan)).astype(np.float32)),
                    g.const("fc_b", rng.normal(0, 0.1, 512).astype(np.float32))], output="683", transB=1)
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, size, size])
    out = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])
    return _save(g, [inp], [out], path, "arcface")


def _pooled(path: str, size: int, width: int, name: str) -> str:
    g = _Graph()
    y = g.node("GlobalAveragePool", ["data"])
    y = g.node("Flatten", [y], axis=1)
    g.node("Gemm", [y, g.const("fc_w", np.full((width, 3), 0.01, np.float32)),
                    g.const("fc_b", np.zeros(width, np.float32))], output="fc1", transB=1)
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, width])
    return _save(g, [inp], [out], path, name)


def landmark_model(path: str) -> str:
    return _pooled(path, 192, 212, "landmark")


def genderage_model(path: str) -> str:
    return _pooled(path, 96, 3, "genderage")


def buffalo_folder(root: str, *, detector: str = "random", seed: int = 0, name: str = "buffalo_l") -> str:
    if detector not in ("random", "planted"):
        raise ValueError("detector must be 'random' or 'planted'")
    folder = os.path.join(root, "models", name)
    os.makedirs(folder, exist_ok=True)
    if detector == "random":
        random_detector(os.path.join(folder, "det_10g.onnx"), seed=seed)
    else:
        planted_detector(os.path.join(folder, "det_10g.onnx"))
    random_recognizer(os.path.join(folder, "w600k_r50.onnx"), seed=seed)
    landmark_model(os.path.join(folder, "2d106det.onnx"))
    genderage_model(os.path.join(folder, "genderage.onnx"))
    return folder


def blob_image(h: int, w: int, centres, radius: float, values=255) -> np.ndarray:
    """(h, w, 3) uint8 RGB: black, with a grey disc of ``radius`` px around each (x, y) centre (pixel centres at
    integer coordinates; a disc holds the pixels within ``radius`` of its centre). ``values``: one grey level or one
    per disc."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    vals = np.broadcast_to(np.asarray(values), (len(centres),))
    for (cx, cy), v in zip(centres, vals):
        x0, x1 = max(0, int(np.floor(cx - radius))), min(w, int(np.ceil(cx + radius)) + 1)
        y0, y1 = max(0, int(np.floor(cy - radius))), min(h, int(np.ceil(cy + radius)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2
        img[y0:y1, x0:x1][inside] = int(v)
    return img
