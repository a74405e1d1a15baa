#!/usr/bin/env bash
# The project's test command: `cargo test --workspace` (extra args are passed to cargo test).
# Prints the Vulkan adapter first, so the log shows which device wgpu's tests ran on
# (on a machine without a GPU: Mesa lavapipe, "llvmpipe"; see scripts/setup.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

echo "[test] Vulkan devices:"
if command -v vulkaninfo >/dev/null 2>&1; then
    vulkaninfo --summary 2>/dev/null | grep -iE 'deviceName|driverName|deviceType' | sed 's/^/[test]   /' ||
        echo "[test]   (vulkaninfo found no device)"
else
    echo "[test]   (vulkaninfo not installed: scripts/setup.sh installs vulkan-tools)"
fi

set -x
cargo test --workspace "$@"
