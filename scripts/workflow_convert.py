"""python3 scripts/workflow_convert.py WORKFLOW.json --object-info FILE | --server URL [--standins] [--body] [-o FILE]:
a UI-format workflow in the API format (testkit/workflow_convert.py)."""
import _bootstrap
from testkit.workflow_convert import main

if __name__ == "__main__":
    _bootstrap.run(main)
