#!/usr/bin/env bash
# Install what the demo (and, with --test, the tests) need into the current python3, but only what is missing:
#   torch==2.14.1 torchvision==0.29.1     only if torch cannot be imported
#   ComfyUI's requirements.txt            minus torch/torchvision/torchaudio (if a ComfyUI is found)
#   requests                              the demo's HTTP client
#   --test: pytest, diffusers             the test suite (diffusers is the reference implementation)
#   --test: chromium (apt, as root), playwright   the browser tests; optional, failure only skips those tests
# Idempotent: when everything is present it only checks (a second or two) and installs nothing.
# Env: PYTHON (default python3), COMFYUI_PATH (see scripts/comfyui_env.py).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WANT_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WANT_TEST=1 ;;
    *) echo "setup_env.sh: unknown argument $arg (use --test)" >&2; exit 2 ;;
  esac
done
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1

pip_install() {
  echo "setup_env: pip install $*"
  "$PY" -m pip install --quiet "$@"
}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  pip_install torch==2.14.1 torchvision==0.29.1
fi

COMFY="$("$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from comfyui_env import find_comfyui; print(find_comfyui()[0] or '')" "$REPO/scripts")"
REQS=()
if [ -n "$COMFY" ] && [ -f "$COMFY/requirements.txt" ]; then
  while IFS= read -r line; do REQS+=("$line"); done < <(grep -vE '^\s*(#|$)' "$COMFY/requirements.txt" | grep -viE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;[]|$)')
else
  echo "setup_env: no ComfyUI found, so its requirements are not checked (scripts/comfyui_env.py says where it looks)"
fi
REQS+=("requests")
if [ "$WANT_TEST" = 1 ]; then REQS+=("pytest" "diffusers"); fi

# Which requirements are not satisfied by what is installed (name + version specifier, markers honoured)?
MISSING="$("$PY" - "${REQS[@]}" <<'PYEOF'
import sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for line in sys.argv[1:]:
    req = Requirement(line.split("#")[0].strip())
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        print(line)
        continue
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        print(line)
PYEOF
)"
if [ -n "$MISSING" ]; then
  mapfile -t TODO <<<"$MISSING"
  pip_install "${TODO[@]}"
else
  echo "setup_env: all requirements present for $PY"
fi

# --test: the browser tests (tests/host/test_browser.py) drive the system Chromium with Playwright (no browser
# download). Optional: where either cannot be installed, those tests are skipped with the reason.
if [ "$WANT_TEST" = 1 ]; then
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "setup_env: apt-get install chromium (browser tests)"
      export DEBIAN_FRONTEND=noninteractive
      if ! { apt-get install -y -q chromium >/dev/null 2>&1 \
             || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; then
        echo "setup_env: could not install chromium; the browser tests will be skipped"
      fi
    else
      echo "setup_env: no chromium (and not root with apt-get to install it); the browser tests will be skipped"
    fi
  fi
  if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
    pip_install playwright || echo "setup_env: could not install playwright; the browser tests will be skipped"
  fi
fi
