"""The test kit: what the tests, the benchmarks and the commands in scripts/ build, run and measure with (not part of
the pack's runtime; ComfyUI never imports it). Importable from the repo root (pytest.ini's ``pythonpath = .``; the
commands' scripts/_bootstrap.py); its modules import each other relatively.

adapters: random IP-Adapter weights in the published key layouts and shapes, and files of them.
aten: AtenLog, the aten ops run inside a block.
comfyui_env: finding ComfyUI (and this pack's copies in it); import_comfyui, the one place ComfyUI goes on sys.path.
comfy_server: a real, headless ComfyUI server with this pack loaded (start, queue, wait, images, stop).
workflow_convert: UI-format workflows to the API format; the stand-in model names (scripts/workflow_convert.py).
standins: the random-weight stand-in models of the example workflows (scripts/standins.py).
run_workflow: a workflow through a headless server, the demo's command (scripts/run_workflow.py).
fresh_layout: the README's two commands from a hyphenated clone in a throwaway ComfyUI (scripts/fresh_layout.py).
tiny_models, reliability: pytest fixture plugins of the host tests (registered in tests/conftest.py).
browser: driving ComfyUI's frontend in headless Chromium (tests/host/test_browser.py).
old_workflows: ComfyUI_IPAdapter_plus workflows built by hand, for the migration tests.
"""
