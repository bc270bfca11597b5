"""Host tests: a real ComfyUI, this pack loaded by ComfyUI's own custom-node loader, tiny models built in-process
(their fixtures: testkit/tiny_models.py; the reliability battery's server: testkit/reliability.py).

ComfyUI is found with ``testkit.comfyui_env.find_comfyui()`` (COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds
this pack, or ~/ComfyUI). If none is found, every test under tests/host is skipped with the reason, and the reason is
printed in the report header (tests/conftest.py: only a conftest pytest loads before collecting can add to the
header) and the terminal summary: the host tests never disappear silently.

When ComfyUI is found, this module (at import, before any test module is collected):
- puts the ComfyUI folder at sys.path[0] (``testkit.comfyui_env.import_comfyui``), so the top-level name ``nodes`` is
  ComfyUI's nodes.py and never this repository's own ``nodes/`` package;
- forces CPU (``comfy.cli_args.args.cpu = True`` before ``comfy.model_management`` is imported);
- sets ``torch.set_num_threads(1)`` (override with IPA_HOST_TEST_THREADS): the models are tiny, and on a shared
  2-core machine two intra-op threads made each sampling call 5-50x slower.
After loading the pack, the session fixture runs ``gc.collect(); gc.freeze()``: ComfyUI runs a full gc.collect()
whenever a sampled ModelPatcher clone has died (cleanup_models_gc), which otherwise walks every object of the
ComfyUI / torch imports each time (~0.3 s per sampling call).

Note: importing ComfyUI puts ``<ComfyUI>/comfy`` at sys.path[0] later on, so the top-level name ``utils`` is then
comfy/utils.py; load ComfyUI's own ``utils/`` modules by file path if a test needs them.

Test modules should not import ``comfy`` / ``nodes`` at module level (they would fail to collect where ComfyUI is
missing instead of being skipped); import inside tests or take the modules from fixtures.

Fixtures (names and signatures are stable; other host test modules use them)
---------------------------------------------------------------------------
Session scope:

``comfyui_path``
    str, the ComfyUI folder in use.
``comfy_nodes``
    ComfyUI's top-level ``nodes`` module, with this pack loaded (``NODE_CLASS_MAPPINGS`` holds the ``IPA_*`` ids).
``pack``
    This pack's package module exactly as ComfyUI loaded it: ``nodes.load_custom_node(<tmp>/comfyui_ip_adapter)``
    on a symlink to the repository root; its sys.modules name is that path with "." replaced by "_x_".
``pack_module(sub)``
    ``sys.modules[pack.__name__ + "." + sub]``, e.g. ``pack_module("nodes.patch.host")``,
    ``pack_module("ip_adapter_core.errors")`` (imported on demand). Use these, never a top-level ``nodes`` /
    ``ip_adapter_core`` import: the pack's classes (IPAttn2Patch, IPAdapterError, ...) live under the pack's name.
``run_node(node_id, **inputs)``
    Runs ``comfy_nodes.NODE_CLASS_MAPPINGS[node_id]`` as ComfyUI's executor does: a new instance, then its FUNCTION
    with keyword inputs. Every input name must be declared in INPUT_TYPES (else AssertionError). Returns what the
    node returns (a tuple, or a ``{"ui", "result"}`` dict).
``ipadapter_dir``
    A tmp folder registered for "ipadapter" with ``folder_paths.add_model_folder_path`` (after the pack registered
    the folder), so files written there are listed by IPA_ModelLoader.
``host``
    The pack's ``nodes.patch.host`` module (LoadedAdapter, load_adapter, model_sites, ...).
``standins_dir``
    The folder of the example workflows' random stand-in models (testkit/standins.py), generated once.

Module scope: ``standin_server``, a real ComfyUI server (testkit.comfy_server.ComfyServer, --cpu) with this pack, the
test helper nodes and the stand-ins.
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import os
import sys

import pytest
import torch

from testkit import standins
from testkit.comfyui_env import REPO, find_comfyui, host_skip_reason, import_comfyui

HOST_DIR = os.path.dirname(os.path.abspath(__file__))
COMFYUI_PATH, COMFYUI_HOW = find_comfyui()
SKIP_REASON = None if COMFYUI_PATH else host_skip_reason(COMFYUI_HOW)
PACK_LINK_NAME = "comfyui_ip_adapter"

if COMFYUI_PATH:
    import_comfyui(COMFYUI_PATH, cpu=True)
    torch.set_num_threads(int(os.environ.get("IPA_HOST_TEST_THREADS", "1")))


# --------------------------------------------------------------------------------------------- loud skipping

def pytest_collection_modifyitems(config, items):
    if not SKIP_REASON:
        return
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if os.path.abspath(str(item.path)).startswith(HOST_DIR + os.sep):
            item.add_marker(marker)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if SKIP_REASON:
        terminalreporter.write_sep("!", SKIP_REASON, red=True, bold=True)


# --------------------------------------------------------------------------------------------- ComfyUI + the pack

@pytest.fixture(scope="session")
def comfyui_path() -> str:
    if not COMFYUI_PATH:
        pytest.skip(SKIP_REASON)
    return COMFYUI_PATH


@pytest.fixture(scope="session")
def _loaded(comfyui_path, tmp_path_factory):
    import nodes as comfy_nodes

    assert os.path.abspath(comfy_nodes.__file__).startswith(comfyui_path), comfy_nodes.__file__
    link = str(tmp_path_factory.mktemp("custom_nodes") / PACK_LINK_NAME)
    os.symlink(REPO, link)
    load = comfy_nodes.load_custom_node
    ok = asyncio.run(load(link)) if inspect.iscoroutinefunction(load) else load(link)
    assert ok, f"ComfyUI's load_custom_node({link}) failed; see the log above (IMPORT FAILED)"
    name = link.replace(".", "_x_")
    assert name in sys.modules, f"ComfyUI did not register the pack as {name}"
    for node_id in ("IPA_ModelLoader", "IPA_Encode", "IPA_Apply", "IPA_ApplySimple"):
        assert node_id in comfy_nodes.NODE_CLASS_MAPPINGS, f"{node_id} missing after loading the pack"
    gc.collect()
    gc.freeze()
    return comfy_nodes, sys.modules[name]


@pytest.fixture(scope="session")
def comfy_nodes(_loaded):
    return _loaded[0]


@pytest.fixture(scope="session")
def pack(_loaded):
    return _loaded[1]


@pytest.fixture(scope="session")
def pack_module(pack):
    import importlib

    def get(sub: str):
        name = f"{pack.__name__}.{sub}"
        return sys.modules[name] if name in sys.modules else importlib.import_module(name)

    return get


@pytest.fixture(scope="session")
def run_node(comfy_nodes):
    def run(node_id: str, **inputs):
        cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
        spec = cls.INPUT_TYPES()
        declared = {k for section in ("required", "optional", "hidden") for k in spec.get(section, {})}
        unknown = set(inputs) - declared
        assert not unknown, f"{node_id} has no inputs {sorted(unknown)} (declared: {sorted(declared)})"
        return getattr(cls(), cls.FUNCTION)(**inputs)

    return run


@pytest.fixture(scope="session")
def ipadapter_dir(pack, tmp_path_factory):
    import folder_paths

    assert "ipadapter" in folder_paths.folder_names_and_paths, "the pack did not register the ipadapter folder"
    d = tmp_path_factory.mktemp("ipadapter")
    folder_paths.add_model_folder_path("ipadapter", str(d))
    return d


@pytest.fixture(scope="session")
def host(pack_module):
    """The pack's nodes.patch.host module (LoadedAdapter, load_adapter, model_sites, ...)."""
    return pack_module("nodes.patch.host")


def _pointed_at_temp(kind: str, tmp_path_factory):
    """ComfyUI's ``kind`` ("output" / "input") directory pointed at a temporary folder while the generator runs."""
    import folder_paths

    get, put = getattr(folder_paths, f"get_{kind}_directory"), getattr(folder_paths, f"set_{kind}_directory")
    before = get()
    put(str(tmp_path_factory.mktemp(kind)))
    yield get()
    put(before)


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    """ComfyUI's output directory, a temporary folder for this module (restored afterwards)."""
    yield from _pointed_at_temp("output", tmp_path_factory)


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    """ComfyUI's input directory, a temporary folder for this module (restored afterwards)."""
    yield from _pointed_at_temp("input", tmp_path_factory)


@pytest.fixture(scope="module")
def old_plus(ipadapter_dir, run_node, make_adapter_file, sd15, cv):
    """The old loader's IPADAPTER (an OldAdapter, nodes/old_api) for a tiny plus adapter, and this pack's loader's
    adapter for the same file."""
    sub = ipadapter_dir / "old_api"
    sub.mkdir(exist_ok=True)
    make_adapter_file(sub, "plus", sd15, cv, name="tiny_plus.safetensors", seed=3)
    name = "old_api/tiny_plus.safetensors"
    return run_node("IPAdapterModelLoader", ipadapter_file=name)["result"][0], run_node(
        "IPA_ModelLoader", ipadapter_file=name)["result"][0]


# --------------------------------------------------------------------------------------------- real servers

REFERENCE_IMAGE = os.path.join(REPO, "example_workflows", "ipadapter_reference.png")
FACE_REFERENCE_IMAGE = os.path.join(REPO, "example_workflows", "ipadapter_face_reference.jpg")  # the FaceID examples'


@pytest.fixture(scope="session")
def standins_dir(comfyui_path) -> str:
    """The random stand-in models of the example workflows (testkit/standins.py), generated in a child process
    (keeps comfy's model code out of this interpreter) and cached in <repo>/.standins/; returns that folder."""
    import subprocess

    if not standins.is_fresh():
        subprocess.run([sys.executable, os.path.join(REPO, "scripts", "standins.py"), "--comfyui", comfyui_path],
                       check=True, timeout=900)
    return standins.DEFAULT_MODELS_DIR


@pytest.fixture(scope="module")
def standin_server(comfyui_path, standins_dir):
    """A real ComfyUI server (testkit.comfy_server.ComfyServer, --cpu) for the module, with this pack, the test helper
    nodes and the stand-ins as its model folders; the examples' reference images are in its input folder."""
    from testkit.comfy_server import ComfyServer

    with ComfyServer(comfyui_path, models_dir=standins_dir, helper_nodes=True, cpu=True, quiet=True) as srv:
        srv.copy_input(REFERENCE_IMAGE)
        srv.copy_input(FACE_REFERENCE_IMAGE)
        yield srv


@pytest.fixture(scope="module")
def buffalo_server(comfyui_path, standins_dir, tmp_path_factory):
    """standin_server, but with the stand-in face model set named buffalo_l, as on a user's disk (the old pack's
    FaceID unified loader always loads buffalo_l)."""
    from testkit import faceid_standins
    from testkit.comfy_server import ComfyServer

    base = faceid_standins.buffalo_models(standins_dir, str(tmp_path_factory.mktemp("buffalo_models")))
    with ComfyServer(comfyui_path, models_dir=base, helper_nodes=True, cpu=True, quiet=True) as srv:
        srv.copy_input(REFERENCE_IMAGE)
        srv.copy_input(FACE_REFERENCE_IMAGE)
        yield srv
