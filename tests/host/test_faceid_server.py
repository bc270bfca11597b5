"""Bad FaceID input through the real server (issue #12): each is a clear error naming the node and what was wrong,
and the server stays healthy (the next good prompt runs): no face in the image, a plus adapter without clip_vision,
a FaceID adapter on the plain CLIP vision path, face models that are not there."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("onnx", reason="the FaceID stand-ins are built with the onnx package")

from testkit import workflow_convert as wc  # noqa: E402
from testkit.comfyui_env import REPO  # noqa: E402

EXAMPLES = os.path.join(REPO, "example_workflows")
PROMPT_TIMEOUT = 600.0
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(standin_server):
    return standin_server


def _graph(server, name: str) -> dict:
    with open(os.path.join(EXAMPLES, name)) as f:
        return wc.use_standins(server.convert(json.load(f)))


def _node(graph: dict, class_type: str) -> tuple[str, dict]:
    (found,) = [(k, n) for k, n in graph.items() if n["class_type"] == class_type]
    return found


def _fails(server, graph: dict, *words: str) -> None:
    run = server.queue(graph, timeout=PROMPT_TIMEOUT)
    assert run.status == "error", f"expected an error, got {run.status}"
    missing = [w for w in words if w not in run.error]
    assert not missing, f"the error does not say {missing}: {run.error}"
    assert "Traceback" not in run.error.splitlines()[0]


def test_bad_faceid_inputs_are_clear_errors_and_the_server_keeps_working(server):
    good = _graph(server, "ipadapter_faceid.json")

    no_face = json.loads(json.dumps(good))
    key, _ = _node(no_face, "LoadImage")
    no_face[key] = {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 0}}
    _fails(server, no_face, "IPA Apply FaceID", "no face found in image 1 of 1", "no_face")

    plus = _graph(server, "ipadapter_faceid_plusv2.json")
    key, node = _node(plus, "IPA_EncodeFace")
    del node["inputs"]["clip_vision"]
    _fails(server, plus, "IPA Encode Face", "clip_vision", "FaceID Plus")

    on_clip = _graph(server, "ipadapter_faceid_plusv2.json")
    _, apply = _node(on_clip, "IPA_Apply")
    _, encode = _node(on_clip, "IPA_EncodeFace")
    apply["inputs"].pop("embeds")
    apply["inputs"].update(image=encode["inputs"]["image"], clip_vision=encode["inputs"]["clip_vision"])
    _fails(server, on_clip, "IPA Apply", "FaceID", "IPA Load Face Models")

    missing = json.loads(json.dumps(good))
    _, loader = _node(missing, "IPA_FaceModelLoader")
    loader["inputs"]["model_name"] = "antelopev2"
    _fails(server, missing, "IPA Load Face Models", "antelopev2", "insightface")

    run = server.queue(good, timeout=PROMPT_TIMEOUT)
    assert run.status == "success", run.error
