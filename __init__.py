"""IP-Adapter for ComfyUI: image prompts on SD1.5 / SDXL models. See README.md."""
import importlib.util

WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy") is None:
    # Imported outside ComfyUI (pytest imports a package's __init__ when collecting the tests below it): no nodes.
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_folder
    from .nodes.web_api import register as register_routes

    register_folder()
    register_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
