"""Shared test set-up: make ip_adapter_core and the test kit importable; say at the top of the run which ComfyUI
the host tests use, or why they are skipped (pytest reads report headers only from the conftests it loads before
collecting, which tests/host/conftest.py is not when the run starts at tests/)."""
import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for p in (TESTS, ROOT):
    if p not in sys.path:
        sys.path.append(p)


def pytest_report_header(config):
    from scripts.comfyui_env import comfyui_version, find_comfyui, host_skip_reason

    path, how = find_comfyui()
    if path is None:
        return [f"!!! {host_skip_reason(how)}"]
    return [f"ComfyUI host tests: {path} ({how}), ComfyUI {comfyui_version(path)}, forced to CPU"]
