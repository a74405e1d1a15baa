#!/usr/bin/env bash
# Build the browser demo and serve it on 127.0.0.1.
#
#   scripts/web.sh [--build-only] [--debug] [--port N] [--model DIR]
#
#   1. the wasm32 toolchain: scripts/wasm-build.sh picks rustup's wasm32 target or Debian's
#      rustc-web + build-std (run `scripts/setup.sh --wasm` first on a fresh machine);
#   2. wasm-bindgen-cli at exactly the `wasm-bindgen` version in Cargo.lock, installed once
#      into ${E2LLM_CACHE_DIR:-/var/cache/e2llm}/tools (outside the clone; reused afterwards);
#   3. `e2llm-web` for wasm32 (release unless --debug), then wasm-bindgen --target web into
#      web/pkg/;
#   4. unless --build-only: web/serve.py on http://127.0.0.1:PORT/ (default 8765) serving
#      web/static/, web/pkg/ and the model directory (default web/model/: config.json,
#      model.safetensors, tokenizer.json; if they are missing the page asks for them).
#
# Environment: CARGO_TARGET_DIR (default target/), CARGO_BUILD_JOBS, E2LLM_CACHE_DIR,
# E2LLM_WASM_TOOLCHAIN (see wasm-build.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_ONLY=0 PROFILE=release PORT=8765 MODEL_DIR=web/model
while [ $# -gt 0 ]; do
    case "$1" in
        --build-only) BUILD_ONLY=1 ;;
        --debug) PROFILE=debug ;;
        --port)
            PORT="$2"
            shift
            ;;
        --model)
            MODEL_DIR="$2"
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "web.sh: unknown argument '$1' (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done

log() { printf '[web] %s\n' "$*"; }
die() {
    printf '[web] ERROR: %s\n' "$*" >&2
    exit 1
}

if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: run scripts/setup.sh --wasm"
command -v python3 >/dev/null 2>&1 || die "python3 not found (it serves the page)"

# ------------------------------------------------------------------------ wasm-bindgen-cli --
WB_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
[ -n "$WB_VERSION" ] || die "no wasm-bindgen in Cargo.lock"
TOOLS="${E2LLM_CACHE_DIR:-/var/cache/e2llm}/tools"
WASM_BINDGEN="$TOOLS/bin/wasm-bindgen"
if [ -x "$WASM_BINDGEN" ] && [ "$("$WASM_BINDGEN" --version | awk '{print $2}')" = "$WB_VERSION" ]; then
    log "present: wasm-bindgen $WB_VERSION ($WASM_BINDGEN)"
else
    mkdir -p "$TOOLS" || die "cannot create $TOOLS (set E2LLM_CACHE_DIR to a writable directory)"
    log "installing wasm-bindgen-cli $WB_VERSION into $TOOLS (once; ~4 min on 2 cores)"
    # No --locked: the registry may lack a crate of the CLI's own lock file (TOOLCHAIN.md).
    CARGO_TARGET_DIR="$TOOLS/build" cargo install wasm-bindgen-cli --version "=$WB_VERSION" \
        --root "$TOOLS" --force
    rm -rf "$TOOLS/build"
fi

# ---------------------------------------------------------------------------------- build --
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
build_args=()
[ "$PROFILE" = release ] && build_args+=(--release)
scripts/wasm-build.sh "${build_args[@]}" e2llm-web

# wasm-build.sh writes to $TARGET_DIR/wasm (rustup) or $TARGET_DIR/wasm-debian: take the
# newer of the two.
wasm=""
for dir in wasm wasm-debian; do
    f="$TARGET_DIR/$dir/wasm32-unknown-unknown/$PROFILE/e2llm_web.wasm"
    if [ -f "$f" ] && { [ -z "$wasm" ] || [ "$f" -nt "$wasm" ]; }; then wasm="$f"; fi
done
[ -n "$wasm" ] || die "e2llm_web.wasm not found under $TARGET_DIR/wasm*/"
bindgen_args=(--target web --no-typescript)
# Release: drop the function-name section (33 → 28 MB); panic messages come from our hook and
# do not need it. --debug keeps names for readable stack traces.
[ "$PROFILE" = release ] && bindgen_args+=(--remove-name-section --remove-producers-section)
rm -rf web/pkg
"$WASM_BINDGEN" "${bindgen_args[@]}" --out-dir web/pkg "$wasm"
log "web/pkg: $(du -h web/pkg/e2llm_web_bg.wasm | cut -f1) wasm from $wasm"

[ "$BUILD_ONLY" -eq 1 ] && exit 0

# ---------------------------------------------------------------------------------- serve --
missing=()
for f in config.json model.safetensors tokenizer.json; do
    [ -f "$MODEL_DIR/$f" ] || missing+=("$f")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "no demo model in $MODEL_DIR (missing ${missing[*]}): the page will ask for the three files"
fi
log "open http://127.0.0.1:$PORT/ in Chrome (Ctrl-C stops the server)"
exec python3 web/serve.py --static web/static --pkg web/pkg --model "$MODEL_DIR" --port "$PORT"
