#!/usr/bin/env bash
# The first command of the README: run the main example workflow through a real, headless ComfyUI server.
#
#   bash scripts/demo.sh [extra run_workflow.py options, e.g. --set IPA_ApplySimple.weight=0.5]
#
# 1. installs what is missing (scripts/setup_env.sh);
# 2. finds ComfyUI: COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds this pack, or ~/ComfyUI;
# 3. uses the real models if ComfyUI's models folders hold all three files the example names
#    (checkpoints/v1-5-pruned-emaonly.safetensors, clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors,
#    ipadapter/ip-adapter_sd15.safetensors), otherwise generates random-weight stand-ins and says so;
# 4. runs example_workflows/ipadapter_simple.json and writes out/demo.png, plus out/demo_weight0.png (the same
#    prompt with the adapter weight at 0), and prints the mean abs pixel difference between them.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$REPO"

bash scripts/setup_env.sh

COMFY="$(PYTHONPATH="$REPO" "$PY" -c "from testkit.comfyui_env import find_comfyui; p, why = find_comfyui(); print(p or 'NONE: ' + why)")"
if [[ "$COMFY" == NONE:* ]]; then
  echo "ERROR: ComfyUI not found (${COMFY#NONE: })." >&2
  echo "       Install ComfyUI (git clone https://github.com/comfyanonymous/ComfyUI ~/ComfyUI) or set COMFYUI_PATH." >&2
  exit 1
fi
echo "demo: ComfyUI at $COMFY"

"$PY" scripts/run_workflow.py example_workflows/ipadapter_simple.json --comfyui "$COMFY" \
  --out out/demo.png --weight0-out out/demo_weight0.png "$@"
