"""The only place that knows ComfyUI internals (transformer_options, patches_replace, ModelPatcher, CLIP vision)."""
