"""python3 scripts/run_workflow.py WORKFLOW.json --out FILE [...]: a workflow through a headless ComfyUI server
(testkit/run_workflow.py; bash scripts/demo.sh runs it)."""
import _bootstrap
from testkit.run_workflow import main

if __name__ == "__main__":
    _bootstrap.run(main)
