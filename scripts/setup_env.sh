#!/usr/bin/env bash
# Install what the demo (and, with --test, the tests) need into the current python3, but only what is missing:
#   torch==2.14.1 torchvision==0.29.1     only if torch cannot be imported: the CPU build where no GPU is seen
#   ComfyUI's requirements.txt            minus torch/torchvision/torchaudio (if a ComfyUI is found)
#   torchaudio                            only if that ComfyUI lists it and it is missing: the newest release,
#                                         --no-deps (its torch pin would replace torch), kept only if it imports
#   requirements.txt                      this pack's own (onnxruntime: FaceID's face models)
#   requests                              the demo's HTTP client
#   --test: pytest, diffusers, onnx       the test suite (diffusers is the reference implementation; onnx builds
#                                         the face-model stand-ins)
#   --test: chromium (apt, as root), playwright   the browser tests; optional, failure only skips those tests
# Idempotent: when everything is present it only checks (a second or two) and installs nothing.
# Env: PYTHON (default python3), COMFYUI_PATH (see testkit/comfyui_env.py).
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

# torch: kept when importable. Otherwise the CPU build where no GPU is seen (PyTorch's CPU wheel index; the
# default PyPI wheels are CUDA builds of several GB), the default build where one is; IPA_TORCH_BUILD=cpu|cuda
# overrides the choice. Where the CPU index cannot be reached, the default build is installed (it runs on the CPU
# too) and the script says so.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
CPU_INDEX="${IPA_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
have_gpu() {
  { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } || [ -e /proc/driver/nvidia/version ] \
    || [ -e /dev/kfd ]
}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  BUILD="${IPA_TORCH_BUILD:-}"
  if [ -z "$BUILD" ]; then
    if have_gpu; then BUILD=cuda; else BUILD=cpu; fi
  fi
  if [ "$BUILD" = cpu ]; then
    echo "setup_env: no GPU seen: installing the CPU build of torch from $CPU_INDEX"
    if ! PIP_DEFAULT_TIMEOUT=20 "$PY" -m pip install --quiet --retries 1 --index-url "$CPU_INDEX" "${TORCH_PINS[@]}"; then
      echo "setup_env: no CPU build of ${TORCH_PINS[*]} could be had from $CPU_INDEX (unreachable, or no matching wheel);" \
           "installing PyPI's default torch build instead" \
           "(a CUDA build of several GB that also runs on the CPU)"
      pip_install "${TORCH_PINS[@]}"
    fi
  else
    echo "setup_env: GPU seen (or IPA_TORCH_BUILD=cuda): installing PyPI's default (CUDA) torch build"
    pip_install "${TORCH_PINS[@]}"
  fi
fi
"$PY" -c "import torch; c = torch.version.cuda; print(f'setup_env: torch {torch.__version__}, ' + (f'CUDA {c} build' if c else 'CPU build') + (', GPU available' if torch.cuda.is_available() else ', running on the CPU'))"

COMFY="$(PYTHONPATH="$REPO" "$PY" -c "from testkit.comfyui_env import find_comfyui; print(find_comfyui()[0] or '')")"
REQS=()
if [ -n "$COMFY" ] && [ -f "$COMFY/requirements.txt" ]; then
  while IFS= read -r line; do REQS+=("$line"); done < <(grep -vE '^\s*(#|$)' "$COMFY/requirements.txt" | grep -viE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;[]|$)')
else
  echo "setup_env: no ComfyUI found, so its requirements are not checked (testkit/comfyui_env.py says where it looks)"
fi
# this pack's own requirements (what ComfyUI-Manager installs from requirements.txt: onnxruntime, for FaceID)
while IFS= read -r line; do REQS+=("$line"); done < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$REPO/requirements.txt" | grep -v '^\s*$')
REQS+=("requests")
if [ "$WANT_TEST" = 1 ]; then REQS+=("pytest" "diffusers" "onnx"); fi

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

# torchaudio: ComfyUI's audio nodes need it (0.33 imports it at start-up; 0.3.64 logs "torchaudio missing" and an
# IMPORT FAILED line for its audio nodes without it); SD1.5 / SDXL and this pack never use it. Each torchaudio release
# pins one torch, so it is installed without dependencies and kept only when it imports beside the torch we have.
if [ -n "$COMFY" ] && grep -qiE '^\s*torchaudio\b' "$COMFY/requirements.txt" 2>/dev/null \
   && ! "$PY" -c "import torchaudio" >/dev/null 2>&1; then
  echo "setup_env: pip install --no-deps torchaudio (ComfyUI's audio nodes; not used by this pack)"
  if ! { "$PY" -m pip install --quiet --no-deps torchaudio && "$PY" -c "import torchaudio" >/dev/null 2>&1; }; then
    "$PY" -m pip uninstall --quiet -y torchaudio >/dev/null 2>&1 || true
    echo "setup_env: no torchaudio imports beside this torch; ComfyUI's audio nodes will be missing (its log says" \
         "'torchaudio missing'), which SD1.5 / SDXL and this pack do not need"
  fi
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
