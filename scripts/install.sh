#!/usr/bin/env bash
# Install this pack into a ComfyUI: clone this folder into <ComfyUI>/custom_nodes/comfyui-ipa (keeping this
# checkout's git remote, so `git pull` there updates it; a plain copy where this folder is no git checkout), then
# install what is missing (scripts/setup_env.sh).
#
#   bash scripts/install.sh [COMFYUI_FOLDER]      (default: COMFYUI_PATH, else ~/ComfyUI)
#
# Does nothing but say so when that custom_nodes/ already holds this pack (under any folder name), and never
# overwrites an existing folder.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
COMFY="${1:-${COMFYUI_PATH:-$HOME/ComfyUI}}"
COMFY="$(cd "$COMFY" 2>/dev/null && pwd || true)"
if [ -z "$COMFY" ] || [ ! -f "$COMFY/main.py" ] || [ ! -d "$COMFY/comfy" ]; then
  echo "install: ${1:-${COMFYUI_PATH:-$HOME/ComfyUI}} is not a ComfyUI folder (no main.py + comfy/)." >&2
  echo "         Get ComfyUI first: git clone https://github.com/Comfy-Org/ComfyUI ~/ComfyUI" >&2
  exit 1
fi
installed="$(PYTHONPATH="$REPO" "$PY" -c "import sys; from testkit.comfyui_env import installed_copies; print('\n'.join(installed_copies(sys.argv[1])))" "$COMFY")"
if [ -n "$installed" ]; then
  echo "install: $COMFY/custom_nodes already holds this pack:"
  echo "$installed" | sed 's/^/  /'
  echo "install: nothing copied (update it with 'git pull' in that folder)."
  DEST="$(echo "$installed" | head -n 1)"
else
  DEST="$COMFY/custom_nodes/comfyui-ipa"
  if [ -e "$DEST" ]; then
    echo "install: $DEST exists and is not this pack; move it away first." >&2
    exit 1
  fi
  mkdir -p "$COMFY/custom_nodes"
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git clone --quiet "$REPO" "$DEST"
    origin="$(git -C "$REPO" remote get-url origin 2>/dev/null || true)"
    if [ -n "$origin" ]; then git -C "$DEST" remote set-url origin "$origin"; fi
    echo "install: cloned $(git -C "$DEST" rev-parse --short HEAD) into $DEST${origin:+ (remote: $origin)}"
  else
    cp -a "$REPO" "$DEST"
    echo "install: copied $REPO to $DEST"
  fi
fi
COMFYUI_PATH="$COMFY" bash "$DEST/scripts/setup_env.sh"
echo "install: done. Restart ComfyUI to load the nodes; try it with: cd $DEST && bash scripts/demo.sh"
