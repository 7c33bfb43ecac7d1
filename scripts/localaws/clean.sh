#!/usr/bin/env bash
# Remove the local AWS's work directory: its containers and images first (podman's own storage
# there may hold overlay mounts that a plain rm cannot remove), then the directory.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${COSMICAI_LOCALAWS_DIR:-$HERE/../../.localaws}"
[[ -d "$WORK" ]] || exit 0
if [[ -f "$WORK/storage.conf" ]] && command -v podman >/dev/null; then
    CONTAINERS_CONF="$WORK/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/storage.conf" \
        podman system reset --force >/dev/null 2>&1 || true
fi
rm -rf "$WORK"
