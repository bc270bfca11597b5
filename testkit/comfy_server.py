"""A real, headless ComfyUI server with this pack loaded: start, queue, wait, fetch images, stop.

    from testkit.comfy_server import ComfyServer
    with ComfyServer(models_dir=".standins/models", helper_nodes=True) as server:
        status, images = server.queue(api_graph)          # "success", [numpy uint8 (H, W, 3), ...]

The server is started as ``python main.py --cpu --listen 127.0.0.1 --port <free port> --extra-model-paths-config
<yaml> --input-directory <d> --output-directory <d> --disable-metadata`` (plus user/temp folders and an in-memory
database in a scratch folder, so nothing is written into the ComfyUI tree). The yaml adds the models folder
(``base_path``: checkpoints, clip_vision, ipadapter, insightface, and the Flux stand-ins' diffusion_models,
text_encoders, vae) and a custom_nodes folder holding a symlink
``comfyui_ip_adapter`` -> this repository (none when the ComfyUI's own custom_nodes already holds this checkout;
with the stand-ins, also the test-only helper_nodes pack). The server is always stopped by its PID at the end.
testkit/run_workflow.py is the command line around it (python3 scripts/run_workflow.py).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import requests

from . import workflow_convert as wc
from .comfyui_env import REPO, find_comfyui, installed_copies

PACK_LINK = "comfyui_ip_adapter"
HELPER_NODES = os.path.join(REPO, "tests", "host", "helper_nodes")
HELPER_LINK = "ipa_test_helper_nodes"
CHECK_NODE = "IPA_ApplySimple"
REFERENCE_IMAGE = os.path.join(REPO, "example_workflows", "ipadapter_reference.png")


class ServerError(RuntimeError):
    pass


@dataclass
class Run:
    """The outcome of one prompt. Unpacks as ``status, images = run``."""

    status: str                      # "success", "error" (execution failed) or "invalid" (rejected by validation)
    images: list[np.ndarray]         # uint8 (H, W, 3), in output-node order: the saved images (SaveImage)
    prompt_id: str = ""
    error: str = ""                  # readable error (validation or execution), "" on success
    cached_nodes: list[str] = field(default_factory=list)
    history: dict = field(default_factory=dict)
    seconds: float = 0.0
    previews: list[np.ndarray] = field(default_factory=list)  # PreviewImage's (temporary) images

    def __iter__(self) -> Iterator[Any]:
        return iter((self.status, self.images))


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the process that started it dies without stopping it (a CI timeout's
    SIGKILL, say), so no server outlives its harness."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server process with this pack loaded; a context manager that always stops it."""

    def __init__(self, comfyui: str | None = None, *, models_dir: str | None = None, helper_nodes: bool = False,
                 cpu: bool = True, port: int | None = None, workdir: str | None = None,
                 startup_timeout: float = 300.0, extra_args: tuple[str, ...] = (), quiet: bool = False,
                 require_checkout: bool = True):
        if comfyui is None:
            comfyui, why = find_comfyui()
            if comfyui is None:
                raise ServerError(why)
        self.comfyui = comfyui
        self.models_dir = os.path.abspath(models_dir) if models_dir else None
        self.helper_nodes = helper_nodes
        self.cpu = cpu
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_workdir = workdir is None
        self.workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="ipa_comfy_"))
        self.input_dir = os.path.join(self.workdir, "input")
        self.output_dir = os.path.join(self.workdir, "output")
        self.log_path = os.path.join(self.workdir, "server.log")
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.quiet = quiet
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()
        self.keep_workdir = False
        # The pack as ComfyUI's own custom_nodes/ holds it: that copy is loaded, and no second link is added (a
        # second import would be skipped anyway). require_checkout: fail unless the server runs this checkout.
        self.installed = installed_copies(self.comfyui)
        self.require_checkout = require_checkout
        self.pack_dir = ""  # the folder the server's IPA nodes come from, once started

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "ComfyServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def write_config(self) -> str:
        """Scratch folders, the custom_nodes folder with its symlinks, and the extra_model_paths yaml."""
        nodes_dir = os.path.join(self.workdir, "custom_nodes")
        for d in (self.input_dir, self.output_dir, nodes_dir, os.path.join(self.workdir, "user")):
            os.makedirs(d, exist_ok=True)
        here = os.path.realpath(REPO)
        links = {} if any(os.path.realpath(p) == here for p in self.installed) else {PACK_LINK: REPO}
        if self.helper_nodes:
            links[HELPER_LINK] = HELPER_NODES
        for name, target in links.items():
            link = os.path.join(nodes_dir, name)
            if not os.path.islink(link):
                os.symlink(target, link)
        lines = ["ipa_harness:"]
        if self.models_dir:
            lines += [f"    base_path: {json.dumps(self.models_dir)}", "    checkpoints: checkpoints",
                      "    clip_vision: clip_vision", "    ipadapter: ipadapter", "    insightface: insightface",
                      "    diffusion_models: diffusion_models", "    text_encoders: text_encoders", "    vae: vae"]
        lines.append(f"    custom_nodes: {json.dumps(nodes_dir)}")
        yaml_path = os.path.join(self.workdir, "extra_model_paths.yaml")
        with open(yaml_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return yaml_path

    def command(self, yaml_path: str) -> list[str]:
        cmd = [sys.executable, "main.py"] + (["--cpu"] if self.cpu else [])
        cmd += ["--listen", "127.0.0.1", "--port", str(self.port), "--extra-model-paths-config", yaml_path,
                "--input-directory", self.input_dir, "--output-directory", self.output_dir, "--disable-metadata",
                "--user-directory", os.path.join(self.workdir, "user"), "--temp-directory", self.workdir,
                "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
        return cmd + list(self.extra_args)

    def start(self) -> None:
        yaml_path = self.write_config()
        cmd = self.command(yaml_path)
        self._say(f"starting ComfyUI ({self.comfyui}) on {self.url}; log: {self.log_path}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        t0 = time.time()
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} during start-up.\n"
                                  f"--- server log tail ---\n{self.log_tail()}")
            try:
                if self.session.get(self.url + "/system_stats", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.time() - t0 > self.startup_timeout:
                raise ServerError(f"ComfyUI did not answer /system_stats within {self.startup_timeout:.0f} s.\n"
                                  f"--- server log tail ---\n{self.log_tail()}")
            time.sleep(0.5)
        self.startup_seconds = time.time() - t0
        info = self.object_info(CHECK_NODE)
        if CHECK_NODE not in info:
            raise ServerError(f"the pack did not load: /object_info/{CHECK_NODE} is empty, so its import failed.\n"
                              f"--- server log tail ---\n{self.log_tail()}")
        self.pack_dir = self._pack_folder(info[CHECK_NODE].get("python_module", ""))
        if self.require_checkout and os.path.realpath(self.pack_dir) != os.path.realpath(REPO):
            raise ServerError(f"the server runs the copy of this pack at {self.pack_dir}, not this checkout ({REPO}): "
                              f"ComfyUI loads its own custom_nodes/ first. Remove or update that copy, or point "
                              f"COMFYUI_PATH at a ComfyUI without it.")
        self._say(f"ComfyUI ready in {self.startup_seconds:.1f} s (pid {self.proc.pid})")

    def _pack_folder(self, python_module: str) -> str:
        """The folder behind object_info's python_module "custom_nodes.<folder>" (ComfyUI's own custom_nodes or the
        harness's)."""
        name = python_module.partition(".")[2]
        for root in (os.path.join(self.comfyui, "custom_nodes"), os.path.join(self.workdir, "custom_nodes")):
            if name and os.path.isdir(os.path.join(root, name)):
                return os.path.join(root, name)
        return name

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL after 15 s); remove the scratch folder."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        self.session.close()
        if self._own_workdir and not self.keep_workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ queries

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def object_info(self, node_class: str | None = None) -> dict:
        path = "/object_info" + (f"/{node_class}" if node_class else "")
        r = self.session.get(self.url + path, timeout=120)
        r.raise_for_status()
        return r.json()

    def copy_input(self, path: str, name: str | None = None) -> str:
        """Copy a file into the server's input folder; returns the name LoadImage uses."""
        name = name or os.path.basename(path)
        shutil.copyfile(path, os.path.join(self.input_dir, name))
        return name

    def free(self, settle: float = 2.0) -> None:
        """POST /free: unload models and drop the execution cache (the worker applies it when idle)."""
        self.session.post(self.url + "/free", json={"unload_models": True, "free_memory": True}, timeout=30)
        time.sleep(settle)

    def convert(self, workflow: dict) -> dict:
        """UI-format (or API-format) workflow -> API graph, using this server's /object_info."""
        return wc.to_api(workflow, self.object_info())

    def queue_ok(self, graph: dict, *, timeout: float = 900.0) -> Run:
        """queue(), and AssertionError (with the run's error and the server log's tail) unless it succeeded."""
        run = self.queue(graph, timeout=timeout)
        assert run.status == "success", f"status {run.status}: {run.error}\n--- server log tail ---\n{self.log_tail()}"
        return run

    def queue(self, graph: dict, *, timeout: float = 900.0, client_id: str | None = None) -> Run:
        """POST the API graph, wait for it (polling /history), and fetch its images via /view. A prompt still
        running after ``timeout`` is interrupted before TimeoutError is raised."""
        t0 = time.time()
        prompt_id, error = self.submit(graph, client_id=client_id)
        if not prompt_id:
            return Run("invalid", [], "", error=error, seconds=time.time() - t0)
        try:
            return self.wait(prompt_id, timeout=timeout)
        except TimeoutError:
            self.session.post(self.url + "/interrupt", timeout=10)
            raise

    # ------------------------------------------------------------------ added for the reliability tests
    # (generic helpers; queue() above is unchanged)

    @property
    def pid(self) -> int | None:
        """PID of the running server process (None when stopped)."""
        return self.proc.pid if self.proc is not None else None

    def submit(self, graph: dict, *, client_id: str | None = None) -> tuple[str, str]:
        """POST the API graph without waiting. Returns (prompt_id, "") when queued, or ("", readable validation
        error) when the server rejected it."""
        body = {"prompt": graph, "client_id": client_id or uuid.uuid4().hex, "prompt_id": str(uuid.uuid4())}
        r = self.session.post(self.url + "/prompt", json=body, timeout=60)
        if r.status_code != 200:
            return "", _validation_message(r)
        return r.json()["prompt_id"], ""

    def wait(self, prompt_id: str, *, timeout: float = 900.0, fetch_images: bool = True) -> Run:
        """Wait for a prompt queued with submit() (polling /history) and fetch its images, like queue()."""
        t0 = time.time()
        while True:
            entry = self.session.get(f"{self.url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
            state = (entry or {}).get("status", {})
            if state.get("completed") or state.get("status_str") == "error":
                break
            if self.proc is None or self.proc.poll() is not None:
                raise ServerError(f"ComfyUI died while running prompt {prompt_id}.\n{self.log_tail()}")
            if time.time() - t0 > timeout:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.\n{self.log_tail()}")
            time.sleep(0.1)
        messages = state.get("messages", [])
        cached = [n for kind, data in messages if kind == "execution_cached" for n in data.get("nodes", [])]
        found = [img for out in entry.get("outputs", {}).values() for img in out.get("images", [])]
        images = [self.view(img) for img in found if img.get("type") != "temp"] if fetch_images else []
        previews = [self.view(img) for img in found if img.get("type") == "temp"] if fetch_images else []
        return Run(state.get("status_str", "unknown"), images, prompt_id, error=_execution_message(messages),
                   cached_nodes=cached, history=entry, seconds=time.time() - t0, previews=previews)

    def queue_state(self) -> dict:
        """GET /queue: {"queue_running": [...], "queue_pending": [...]}."""
        r = self.session.get(self.url + "/queue", timeout=30)
        r.raise_for_status()
        return r.json()

    def interrupt(self) -> None:
        """POST /interrupt: stop the prompt that is running now (the queue goes on)."""
        self.session.post(self.url + "/interrupt", timeout=30).raise_for_status()

    def view(self, ref: dict) -> np.ndarray:
        from PIL import Image

        params = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
        r = self.session.get(self.url + "/view", params=params, timeout=60)
        r.raise_for_status()
        return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def _validation_message(r: requests.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:2000]}"
    err = data.get("error") or {}
    parts = [f"HTTP {r.status_code}: {err.get('message', '')} {err.get('details', '')}"]
    for node_id, info in (data.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            parts.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(parts)


def _execution_message(messages: list) -> str:
    for kind, data in messages:
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                    f"{data.get('exception_message')}\n{''.join(data.get('traceback') or [])}")
    return ""
