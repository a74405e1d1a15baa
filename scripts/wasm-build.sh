#!/usr/bin/env bash
# Build workspace crates for wasm32-unknown-unknown.
#
#   scripts/wasm-build.sh [--release] [--check] [crate...]  (default: e2llm-core e2llm-model e2llm-kernels)
#
#   --check  `cargo check` instead of `cargo build`: proves the crates and their whole dependency
#            tree compile for wasm32 without generating code (much faster: burn's dependencies
#            are otherwise built at opt-level 2 even in the dev profile).
#
# Toolchain, picked at run time (E2LLM_WASM_TOOLCHAIN=auto|rustup|debian, default auto):
#   rustup  the active rustup toolchain, if it has lib/rustlib/wasm32-unknown-unknown (one
#           `rustup target add wasm32-unknown-unknown` is tried if not);
#   debian  Debian's rustc-web + cargo-web + rust-web-src + lld-19 (bookworm-security), with
#           RUSTC_BOOTSTRAP=1 -Zbuild-std=std,panic_abort and wasm-ld-19 as the linker.
#           `scripts/setup.sh --wasm` installs it when rustup cannot add the target.
#
# Output goes to ${CARGO_TARGET_DIR:-target}/wasm (rustup) or .../wasm-debian, so the native
# cache is never invalidated. Jobs: CARGO_BUILD_JOBS if set, else 1 when the machine's load
# average is at least its core count, else all cores. Extra cargo args: E2LLM_WASM_CARGO_ARGS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile_args=()
subcmd=build
crates=()
for arg in "$@"; do
    case "$arg" in
        --release) profile_args=(--release) ;;
        --check) subcmd=check ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "wasm-build.sh: unknown option '$arg'" >&2
            exit 2
            ;;
        *) crates+=("$arg") ;;
    esac
done
[ "${#crates[@]}" -gt 0 ] || crates=(e2llm-core e2llm-model e2llm-kernels)

log() { printf '[wasm-build] %s\n' "$*"; }
die() {
    printf '[wasm-build] ERROR: %s\n' "$*" >&2
    exit 1
}

if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

TARGET=wasm32-unknown-unknown
route="${E2LLM_WASM_TOOLCHAIN:-auto}"

have_rustup_wasm() {
    command -v rustup >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 &&
        [ -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" ]
}
have_debian_wasm() {
    [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && command -v wasm-ld-19 >/dev/null 2>&1 &&
        [ -d /usr/lib/rustlib/src/rust/library ]
}

case "$route" in
    auto | rustup)
        if ! have_rustup_wasm && command -v rustup >/dev/null 2>&1; then
            log "rustup toolchain lacks $TARGET: trying 'rustup target add $TARGET' once"
            rustup target add "$TARGET" || log "rustup target add failed"
        fi
        if have_rustup_wasm; then
            route=rustup
        elif [ "$route" = rustup ]; then
            die "rustup toolchain has no $TARGET"
        elif have_debian_wasm; then
            route=debian
        else
            die "no wasm32 toolchain: run scripts/setup.sh --wasm (it installs Debian's rustc-web route)"
        fi
        ;;
    debian) have_debian_wasm || die "Debian wasm toolchain missing: run E2LLM_WASM_TOOLCHAIN=debian scripts/setup.sh --wasm" ;;
    *) die "E2LLM_WASM_TOOLCHAIN must be auto, rustup or debian (got '$route')" ;;
esac

# getrandom 0.3 on wasm32-unknown-unknown needs this cfg as well as its `wasm_js` feature
# (the crates' wasm32 target blocks enable the feature). web_sys_unstable_apis exposes
# web-sys's WebGPU types; harmless otherwise. With an explicit --target, RUSTFLAGS only reach
# target artifacts, not build scripts or proc macros.
export RUSTFLAGS="--cfg getrandom_backend=\"wasm_js\" --cfg=web_sys_unstable_apis${E2LLM_WASM_RUSTFLAGS:+ $E2LLM_WASM_RUSTFLAGS}"
unset CARGO_ENCODED_RUSTFLAGS

base_target_dir="${CARGO_TARGET_DIR:-target}"

if [ -z "${CARGO_BUILD_JOBS:-}" ]; then
    ncpu="$(nproc)"
    load="$(cut -d' ' -f1 /proc/loadavg)"
    if awk -v l="$load" -v n="$ncpu" 'BEGIN { exit !(l >= n) }'; then
        export CARGO_BUILD_JOBS=1
        log "load average $load on $ncpu cores: building with -j 1"
    fi
fi

pkg_args=()
for c in "${crates[@]}"; do pkg_args+=(-p "$c"); done
# shellcheck disable=SC2206  # word splitting wanted
extra_args=(${E2LLM_WASM_CARGO_ARGS:-})

if [ "$route" = rustup ]; then
    export CARGO_TARGET_DIR="$base_target_dir/wasm"
    cmd=(cargo "$subcmd" --target "$TARGET" "${profile_args[@]}" "${pkg_args[@]}" "${extra_args[@]}")
    log "toolchain: rustup $(rustc -V)"
else
    export CARGO_TARGET_DIR="$base_target_dir/wasm-debian"
    export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19
    # Keep rustup's proxies out of the way: cargo calls rustc/rustdoc through PATH too.
    unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER
    cmd=(/usr/bin/cargo "$subcmd" --target "$TARGET" "-Zbuild-std=std,panic_abort"
        "${profile_args[@]}" "${pkg_args[@]}" "${extra_args[@]}")
    log "toolchain: Debian $(/usr/bin/rustc -V) (build-std), linker wasm-ld-19"
fi

log "RUSTFLAGS=$RUSTFLAGS"
log "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
log "+ ${cmd[*]}"
start=$(date +%s)
"${cmd[@]}"
log "${subcmd} ok: ${crates[*]} for $TARGET (${profile_args[*]:-debug}) in $(($(date +%s) - start)) s"
