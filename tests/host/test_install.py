"""Install layouts on a real ComfyUI (issue #10): the pack under a hyphenated custom_nodes folder, the pack there
twice, and scripts/install.sh.

Each test works on a throwaway real copy of the ComfyUI tree in use (testkit.fresh_layout.copy_comfyui: no weights,
no other custom nodes), never on the tree itself.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts")

pytestmark = pytest.mark.slow
COPY_IGNORE = shutil.ignore_patterns(".git", ".standins", "out", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def comfy_copy(comfyui_path, tmp_path_factory):
    from testkit.fresh_layout import copy_comfyui

    return copy_comfyui(comfyui_path, str(tmp_path_factory.mktemp("fresh") / "ComfyUI"))


def pack_copy(dst: str) -> str:
    """This working tree (uncommitted changes included) copied to ``dst``."""
    shutil.copytree(REPO, dst, ignore=COPY_IGNORE, symlinks=True)
    return dst


def clean_env(home: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "COMFYUI_PATHS")}
    os.makedirs(home, exist_ok=True)
    env["HOME"] = home
    return env


def test_pytest_runs_inside_a_hyphenated_custom_nodes_folder(comfy_copy, tmp_path):
    """pytest imported a hyphenated folder's __init__.py as a module with no parent package and every test errored;
    from there the enclosing ComfyUI must be found and core and host tests must run."""
    pack = pack_copy(os.path.join(comfy_copy, "custom_nodes", "comfyui-ipa-test"))
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/core/test_spec.py",
                               "tests/host/test_docs.py"], cwd=pack, env=clean_env(str(tmp_path / "home")),
                              capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(pack, ignore_errors=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"ComfyUI host tests: {comfy_copy} (the ComfyUI whose custom_nodes/ holds this pack)" in out, out[:2000]
    assert " error" not in out.splitlines()[-1] and "skipped" not in out.splitlines()[-1], out.splitlines()[-1]


def test_pack_twice_in_custom_nodes_loads_once(comfy_copy, tmp_path):
    """A second clone and a symlink beside the harness's link: the server starts, one copy registers the pack's nodes
    (each once), the route and the web extension once, and the log names the active copy and each skipped one."""
    from testkit.comfy_server import PACK_LINK, ComfyServer

    nodes_dir = tmp_path / "work" / "custom_nodes"
    nodes_dir.mkdir(parents=True)
    os.symlink(REPO, nodes_dir / PACK_LINK)
    os.symlink(REPO, nodes_dir / "ipa-link-to-the-same")
    pack_copy(str(nodes_dir / "comfyui-ipa-second-clone"))
    with ComfyServer(comfy_copy, workdir=str(tmp_path / "work"), cpu=True, quiet=True,
                     require_checkout=False) as srv:
        info = srv.object_info()
        ours = sorted(k for k in info if k.startswith("IPA_"))
        from migration.schemas import available_nodes  # the IDs nodes/__init__.py registers, read as text

        assert ours == sorted(available_nodes()), ours
        if "search_aliases" in info["IPA_ApplyAdvanced"]:  # ComfyUI 0.33 serves the node's SEARCH_ALIASES
            assert "IPAdapterAdvanced" in info["IPA_ApplyAdvanced"]["search_aliases"]
        answer = srv.session.get(srv.url + "/ipa/site_weights", params={"family": "sd15"}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["sites"]) == 16
        extensions = srv.session.get(srv.url + "/extensions", timeout=30).json()
        assert len([e for e in extensions if e.endswith("/ipa.js")]) == 1, extensions
        log = srv.log_text()
    assert log.count("IPA: active copy") == 1, log
    assert log.count("IPA: this pack is already loaded from") == 2, log
    assert "the same folder (a link)" in log and "another copy" in log
    assert "Traceback" not in log and "IMPORT FAILED" not in log, log


def test_install_script_clones_into_custom_nodes_once(comfy_copy, tmp_path):
    dest = os.path.join(comfy_copy, "custom_nodes", "comfyui-ipa")
    env = dict(clean_env(str(tmp_path / "home")), PYTHON=sys.executable)
    cmd = ["bash", os.path.join(SCRIPTS, "install.sh"), comfy_copy]
    try:
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stdout + first.stderr
        from testkit.comfyui_env import installed_copies

        assert installed_copies(comfy_copy) == [dest]
        head = subprocess.run(["git", "-C", dest, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert head.strip() == subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                                              text=True).stdout.strip()
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "already holds this pack" in again.stdout, again.stdout + again.stderr
        assert installed_copies(comfy_copy) == [dest]
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_install_script_refuses_a_folder_that_is_no_comfyui(tmp_path):
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, "install.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "is not a ComfyUI folder" in proc.stderr


def readme_blocks(after: str, count: int) -> list[str]:
    """The ``count`` fenced code blocks of README.md that follow the line containing ``after``."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    rest = text[text.index(after):]
    return [part.split("\n", 1)[1] for part in rest.split("```")[1:2 * count:2]]


def test_readme_api_commands_queue_the_unified_loader_example(comfy_copy, tmp_path):
    """The README's 'Queue a workflow through the HTTP API' commands, as written (only the port is a free one), on a
    ComfyUI holding the pack, with no test-only node: /prompt takes the graph and an image is written."""
    import time

    import requests
    from testkit.comfy_server import free_port

    start, commands = readme_blocks("Start ComfyUI in one terminal", 2)
    assert start.strip().endswith("python3 main.py --cpu") and "--standins" in commands, (start, commands)
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(comfy_copy, home / "ComfyUI")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the README's "python3" is the one that runs this test: a wrapper, not a symlink (a symlinked venv python
    # outside its venv's bin/ does not find its pyvenv.cfg and loses the venv's packages)
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(clean_env(str(home)), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    pack = pack_copy(os.path.join(comfy_copy, "custom_nodes", "comfyui-ipa-api"))
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(["bash", "-c", f"{start.strip()} --port {port}"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.time()
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                if requests.get(url + "/system_stats", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            assert time.time() - t0 < 300, log_path.read_text()[-3000:]
            time.sleep(0.5)
        script = commands.replace("127.0.0.1:8188", f"127.0.0.1:{port}")
        proc = subprocess.run(["bash", "-ec", script], cwd=pack, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        import json

        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        prompt_id = answer["prompt_id"]
        while True:
            entry = requests.get(f"{url}/history/{prompt_id}", timeout=30).json().get(prompt_id) or {}
            status = entry.get("status", {})
            if status.get("completed") or status.get("status_str") == "error":
                break
            assert server.poll() is None and time.time() - t0 < 900, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert status.get("status_str") == "success", status
        images = [i["filename"] for out in entry["outputs"].values() for i in out.get("images", [])]
        assert images and all(os.path.isfile(os.path.join(comfy_copy, "output", f)) for f in images), images
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        shutil.rmtree(pack, ignore_errors=True)
