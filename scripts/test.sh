#!/usr/bin/env bash
# The second command of the README: install the test dependencies if missing, then run the whole suite.
#
#   bash scripts/test.sh [pytest arguments, e.g. -k server -x]
#
# tests/core needs no ComfyUI; tests/host runs against a real ComfyUI (COMFYUI_PATH, the enclosing ComfyUI, or
# ~/ComfyUI) and is skipped, with the reason printed, when there is none. The last lines say how many host tests
# ran or why they were skipped. Exit status: pytest's; "no tests collected" (5) is reported and fails.
#
# More ComfyUI trees: COMFYUI_PATHS="/path/a:/path/b" runs the host tests (or the given pytest arguments) again on
# each, with that tree's own .venv/bin/python where it has one (ComfyUI releases differ in their requirements),
# after installing what that tree needs into it. The last lines list every tree, its version and its counts.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$REPO"

bash scripts/setup_env.sh --test || { echo "test.sh: installing the test dependencies failed" >&2; exit 1; }

TMP="$(mktemp -d -t ipa_pytest_XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
SUMMARIES=()

# summarise REPORT RC LABEL: host-test counts of one pytest run (and its skip reasons)
summarise() {
"$PY" - "$1" "$2" "$3" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

report, rc, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
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
print(f"host tests ({label}): {len(host)} collected, {ran} ran "
      f"({counts.get('passed', 0)} passed, {counts.get('failure', 0)} failed, {counts.get('error', 0)} errors, "
      f"{counts.get('xfailed', 0)} xfailed as known bugs), "
      f"{counts.get('skipped', 0)} skipped")
for msg, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
    print(f"  skipped x{n}: {msg}")
if rc == 5:
    print("ERROR: pytest collected NO tests (exit 5) - nothing was checked; this is a failure, not a pass.")
print("=" * 100)
PYEOF
}

label() {  # label TREE: "ComfyUI <version> at <path>" or the reason none is used
  PYTHONPATH="$REPO" "$PY" -c "import sys; from testkit.comfyui_env import comfyui_version, find_comfyui
p, how = (sys.argv[1], 'COMFYUI_PATHS') if sys.argv[1] else find_comfyui()
print(f'ComfyUI {comfyui_version(p)} at {p}' if p else f'no ComfyUI: {how}')" "${1:-}"
}

"$PY" -m pytest --junitxml="$TMP/main.xml" "$@"
rc=$?
MAIN_LABEL="$(label "")"
summarise "$TMP/main.xml" "$rc" "$MAIN_LABEL"
SUMMARIES+=("$MAIN_LABEL: pytest exit $rc")

PRIMARY="$(PYTHONPATH="$REPO" "$PY" -c "import os; from testkit.comfyui_env import find_comfyui; p = find_comfyui()[0]; print(os.path.realpath(p) if p else '')")"
IFS=':' read -r -a TREES <<<"${COMFYUI_PATHS:-}"
i=0
for tree in "${TREES[@]}"; do
  [ -n "$tree" ] || continue
  tree="$(cd "$tree" 2>/dev/null && pwd -P || echo "$tree")"
  if [ "$tree" = "$PRIMARY" ]; then continue; fi
  i=$((i + 1))
  if [ ! -f "$tree/main.py" ] || [ ! -d "$tree/comfy" ]; then
    echo "test.sh: COMFYUI_PATHS entry $tree is not a ComfyUI folder" >&2
    SUMMARIES+=("$tree: not a ComfyUI folder"); rc=1; continue
  fi
  TPY="$PY"; [ -x "$tree/.venv/bin/python" ] && TPY="$tree/.venv/bin/python"
  TLABEL="$(label "$tree")"
  echo "test.sh: host tests again on $TLABEL (python: $TPY)"
  if ! PYTHON="$TPY" COMFYUI_PATH="$tree" bash scripts/setup_env.sh --test; then
    SUMMARIES+=("$TLABEL: installing its requirements failed"); rc=1; continue
  fi
  if [ "$#" -gt 0 ]; then ARGS=("$@"); else ARGS=(tests/host); fi
  COMFYUI_PATH="$tree" "$TPY" -m pytest --junitxml="$TMP/tree$i.xml" "${ARGS[@]}"
  trc=$?
  summarise "$TMP/tree$i.xml" "$trc" "$TLABEL"
  SUMMARIES+=("$TLABEL: pytest exit $trc")
  if [ "$trc" -ne 0 ]; then rc=$trc; fi
done
if [ "${#SUMMARIES[@]}" -gt 1 ]; then
  echo "test.sh: ComfyUI trees tested:"
  printf '  %s\n' "${SUMMARIES[@]}"
fi
exit $rc
