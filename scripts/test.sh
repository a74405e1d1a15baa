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

# Install what is missing (lavapipe, vulkan-tools, Rust, Xvfb for the desktop app's window
# test); quick when all is present.
scripts/setup.sh --desktop
# Mesa's WSI looks for a runtime dir even headless; give it one so the log stays clean.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="/tmp/xdg-runtime-$(id -u)"
    mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
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
scripts/web-test.sh  # the browser demo in headless Chromium (E2LLM_SKIP_WEB_TEST=1 skips)
