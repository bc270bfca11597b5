"""The migration from ComfyUI_IPAdapter_plus workflows: schemas (the two node sets and the value tables), plans (one
conversion plan per old node) and migrate_workflow (the graph rewrite, ``migrate(workflow)``, and the command
``python3 scripts/migrate_workflow.py old.json -o new.json``). Pure Python, no ComfyUI import."""
