#!/usr/bin/env bash
# Browser tests of the web demo: build the wasm (scripts/web.sh --build-only) and the native
# CLI, then drive the page in headless Chromium (web/tests/browser_test.py): a passkey prompt
# answered on WebGPU (SwiftShader without a GPU) and on the CPU fallback, both equal to the
# native `e2llm logits` within 1e-3; bad model files show a readable error; console errors
# fail. Exits non-zero on any failure.
#
#   scripts/web-test.sh [--length N]      (prompt length in tokens, default 300)
#
# Screenshots, console logs and summary.json go to $E2LLM_WEB_TEST_OUT
# (default ${CARGO_TARGET_DIR:-target}/web-test); the path is printed.
# E2LLM_SKIP_WEB_TEST=1 skips (prints why, exits 0).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${E2LLM_SKIP_WEB_TEST:-0}" = 1 ]; then
    echo "[web-test] skipped: E2LLM_SKIP_WEB_TEST=1"
    exit 0
fi

if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# Chromium, chromedriver, fonts, selenium, the wasm toolchain: installed if missing.
scripts/setup.sh --wasm --browser

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
OUT="${E2LLM_WEB_TEST_OUT:-$TARGET_DIR/web-test}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

scripts/web.sh --build-only
# --workspace (not -p e2llm-cli): the same feature set as `cargo test --workspace`, so the
# binary `scripts/test.sh` already built is reused instead of rebuilding burn for another set.
echo "[web-test] + cargo build --workspace --bins"
cargo build --workspace --bins
CLI="$TARGET_DIR/debug/e2llm"
[ -x "$CLI" ] || { echo "[web-test] ERROR: $CLI not built" >&2; exit 1; }

echo "[web-test] screenshots and logs: $OUT"
python3 web/tests/browser_test.py --cli "$(cd "$(dirname "$CLI")" && pwd)/e2llm" --out "$OUT" "$@"
