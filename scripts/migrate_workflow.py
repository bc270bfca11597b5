"""python3 scripts/migrate_workflow.py old.json -o new.json [--strict]: a ComfyUI_IPAdapter_plus workflow
converted to this pack's nodes (migration/migrate_workflow.py)."""
import _bootstrap
from migration.migrate_workflow import main

if __name__ == "__main__":
    _bootstrap.run(main)
