#!/usr/bin/env bash
# The second command of the README: install the test dependencies if missing, then run the whole suite.
#
#   bash scripts/test.sh [pytest arguments, e.g. -k server -x]
#
# tests/core needs no ComfyUI; tests/host runs against a real ComfyUI (COMFYUI_PATH, the enclosing ComfyUI, or
# ~/ComfyUI) and is skipped, with the reason printed, when there is none. The last lines say how many host tests
# ran or why they were skipped. Exit status: pytest's; "no tests collected" (5) is reported and fails.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$REPO"

bash scripts/setup_env.sh --test || { echo "test.sh: installing the test dependencies failed" >&2; exit 1; }

REPORT="$(mktemp -t ipa_pytest_XXXXXX.xml)"
trap 'rm -f "$REPORT"' EXIT
"$PY" -m pytest --junitxml="$REPORT" "$@"
rc=$?

"$PY" - "$REPORT" "$rc" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

report, rc = sys.argv[1], int(sys.argv[2])
try:
    cases = list(ET.parse(report).iter("testcase"))
except (OSError, ET.ParseError):
    cases = []
host = [c for c in cases if ".host." in "." + c.get("classname", "") + "." or "tests/host/" in c.get("file", "")]
def outcome(c):
    for tag in ("failure", "error", "skipped"):
        el = c.find(tag)
        if el is not None:
            return ("xfailed" if el.get("type") == "pytest.xfail" else tag), el.get("message", "")
    return "passed", ""
counts, reasons = {}, {}
for c in host:
    kind, msg = outcome(c)
    counts[kind] = counts.get(kind, 0) + 1
    if kind == "skipped":
        reasons[msg] = reasons.get(msg, 0) + 1
ran = len(host) - counts.get("skipped", 0)
print("=" * 100)
print(f"host tests (real ComfyUI): {len(host)} collected, {ran} ran "
      f"({counts.get('passed', 0)} passed, {counts.get('failure', 0)} failed, {counts.get('error', 0)} errors, "
      f"{counts.get('xfailed', 0)} xfailed as known bugs), "
      f"{counts.get('skipped', 0)} skipped")
for msg, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
    print(f"  skipped x{n}: {msg}")
if rc == 5:
    print("ERROR: pytest collected NO tests (exit 5) - nothing was checked; this is a failure, not a pass.")
print("=" * 100)
PYEOF
exit $rc
