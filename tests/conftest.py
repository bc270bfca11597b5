"""Shared test set-up. The repo root is on sys.path through pytest.ini (``pythonpath = .``): tests import
ip_adapter_core, testkit, bench and migration as packages. Registers the test kit's fixture plugins (a conftest below
tests/ may not), and says at the top of the run which ComfyUI the host tests use, or why they are skipped (pytest
reads report headers only from the conftests it loads before collecting, which tests/host/conftest.py is not when
the run starts at tests/)."""
from testkit.comfyui_env import comfyui_version, find_comfyui, host_skip_reason

pytest_plugins = ["testkit.tiny_models", "testkit.reliability"]


def pytest_report_header(config):
    path, how = find_comfyui()
    if path is None:
        return [f"!!! {host_skip_reason(how)}"]
    return [f"ComfyUI host tests: {path} ({how}), ComfyUI {comfyui_version(path)}, forced to CPU"]
