#!/usr/bin/env bash
# Idempotent installer for a fresh Debian (bookworm) machine: everything e2llm's build, tests and
# CI need. Run as root (sudo is used only when not root). Installs only what is missing and says
# what it installs; a second run does nothing but check.
#
#   scripts/setup.sh [--wasm] [--browser] [--desktop] [--all]
#
#   (base)     Rust (rustup stable + rustfmt + clippy), a C toolchain for linking, pkg-config,
#              Mesa lavapipe (mesa-vulkan-drivers) + vulkan-tools: wgpu tests run on the
#              Vulkan adapter "llvmpipe" without a GPU.
#   --wasm     the wasm32-unknown-unknown target: rustup's rust-std if rustup can add it,
#              otherwise Debian's rustc-web route (rustc-web cargo-web rust-web-src
#              libstd-rust-web-dev lld-19, bookworm-security) used with -Zbuild-std.
#              E2LLM_WASM_TOOLCHAIN=debian forces the Debian route (=rustup forbids it).
#   --browser  chromium chromium-driver fonts-liberation + python selenium (headless WebGPU
#              tests of the web demo, scripts/web-test.sh).
#   --desktop  xvfb imagemagick + the X11/Wayland/GL libraries eframe loads at run time.
set -euo pipefail

WANT_WASM=0 WANT_BROWSER=0 WANT_DESKTOP=0
for arg in "$@"; do
    case "$arg" in
        --wasm) WANT_WASM=1 ;;
        --browser) WANT_BROWSER=1 ;;
        --desktop) WANT_DESKTOP=1 ;;
        --all) WANT_WASM=1 WANT_BROWSER=1 WANT_DESKTOP=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

log() { printf '[setup] %s\n' "$*"; }
die() {
    printf '[setup] ERROR: %s\n' "$*" >&2
    exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo"
    SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

MSRV=1.95 # workspace rust-version (burn 0.22's MSRV)

# ---------------------------------------------------------------------------------------- apt --
APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" -eq 1 ] && return 0
    log "apt-get update"
    # A third-party source that cannot be reached must not stop us: Debian's own are what matter.
    if ! "${SUDO[@]}" apt-get update -qq; then
        log "warning: apt-get update reported errors (continuing with the lists it got)"
    fi
    APT_UPDATED=1
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

# apt_install PKG...: installs those not yet installed (apt-get update once, only if needed).
apt_install() {
    local missing=() p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "present: $*"
        return 0
    fi
    apt_update_once
    log "installing: ${missing[*]}"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# -------------------------------------------------------------------------------------- base --
base_pkgs=(ca-certificates curl pkg-config mesa-vulkan-drivers vulkan-tools)
# rustc links through `cc`; a fresh image may lack it.
command -v cc >/dev/null 2>&1 || base_pkgs+=(gcc libc6-dev)
# No crate in the tree uses OpenSSL (tokenizers is built without its `http` feature), so
# libssl-dev is not installed. Add it here if `cargo tree -i openssl-sys` ever shows it.
apt_install "${base_pkgs[@]}"

# ---------------------------------------------------------------------------------------- rust --
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v rustup >/dev/null 2>&1 && ! command -v cargo >/dev/null 2>&1; then
    log "installing rustup (stable, minimal profile)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --default-toolchain stable -c rustfmt -c clippy ||
        die "rustup install failed; install Rust >= $MSRV (with rustfmt and clippy) yourself"
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
rust_ver() { "$1" -V | awk '{print $2}' | sed 's/-.*//'; }

if command -v rustup >/dev/null 2>&1; then
    export RUSTUP_AUTO_INSTALL="${RUSTUP_AUTO_INSTALL:-1}"
    if ! version_ge "$(rust_ver rustc 2>/dev/null || echo 0)" "$MSRV"; then
        log "rustc older than $MSRV: rustup update stable"
        rustup update stable --no-self-update
    fi
    for comp in rustfmt clippy; do
        if rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
            log "present: rust component $comp"
        else
            log "installing: rust component $comp"
            rustup component add "$comp"
        fi
    done
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found"
version_ge "$(rust_ver rustc)" "$MSRV" || die "rustc $(rust_ver rustc) < $MSRV"
log "rust: $(rustc -V)"

# ---------------------------------------------------------------------------------------- wasm --
if [ "$WANT_WASM" -eq 1 ]; then
    route="${E2LLM_WASM_TOOLCHAIN:-auto}"
    have_rustup_wasm() {
        command -v rustup >/dev/null 2>&1 &&
            [ -d "$(rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown" ]
    }
    use_debian=0
    case "$route" in
        debian) use_debian=1 ;;
        rustup | auto)
            if have_rustup_wasm; then
                log "present: rustup target wasm32-unknown-unknown"
            elif command -v rustup >/dev/null 2>&1; then
                log "installing: rustup target wasm32-unknown-unknown"
                if ! rustup target add wasm32-unknown-unknown || ! have_rustup_wasm; then
                    [ "$route" = rustup ] && die "rustup cannot add wasm32-unknown-unknown"
                    log "rustup could not add the wasm32 target: using Debian's rustc-web instead"
                    use_debian=1
                fi
            else
                [ "$route" = rustup ] && die "no rustup"
                use_debian=1
            fi
            ;;
        *) die "E2LLM_WASM_TOOLCHAIN must be auto, rustup or debian (got '$route')" ;;
    esac
    if [ "$use_debian" -eq 1 ]; then
        # bookworm-security carries a current rustc-web (1.96 when checked); the point release
        # has an older one (1.85) that is below the MSRV, so refresh the lists first if needed.
        deb_pkgs=(rustc-web cargo-web rust-web-src libstd-rust-web-dev lld-19)
        apt_install "${deb_pkgs[@]}"
        if ! version_ge "$(rust_ver /usr/bin/rustc)" "$MSRV"; then
            apt_update_once
            log "upgrading Debian's rustc-web (found $(rust_ver /usr/bin/rustc), need >= $MSRV)"
            "${SUDO[@]}" apt-get install -y -qq --no-install-recommends --only-upgrade \
                "${deb_pkgs[@]}" >/dev/null
        fi
        version_ge "$(rust_ver /usr/bin/rustc)" "$MSRV" ||
            die "Debian rustc-web is $(rust_ver /usr/bin/rustc) (< $MSRV); is bookworm-security in the apt sources?"
        log "wasm route: Debian $(/usr/bin/rustc -V) + build-std, linker wasm-ld-19"
    else
        log "wasm route: rustup $(rustc -V)"
    fi
fi

# ------------------------------------------------------------------------------------ browser --
if [ "$WANT_BROWSER" -eq 1 ]; then
    apt_install chromium chromium-driver fonts-liberation
    # Python selenium drives the system chromium through chromedriver (web/tests/); it never
    # downloads a browser or driver itself when given their paths.
    if python3 -c 'import selenium' >/dev/null 2>&1; then
        log "present: python selenium"
    else
        command -v python3 >/dev/null 2>&1 || apt_install python3
        if ! python3 -m pip --version >/dev/null 2>&1; then apt_install python3-pip; fi
        log "installing: python selenium (pip)"
        # Debian's system Python refuses pip installs without this flag (PEP 668).
        python3 -m pip install -q selenium 2>/dev/null ||
            python3 -m pip install -q --break-system-packages selenium
    fi
fi

# ------------------------------------------------------------------------------------ desktop --
if [ "$WANT_DESKTOP" -eq 1 ]; then
    # Xvfb + screenshots, and what eframe/winit/wgpu dlopen at run time (X11, xkbcommon,
    # Wayland client, EGL/GL for the glow fallback). Vulkan comes from the base set (lavapipe).
    apt_install xvfb xauth imagemagick \
        libx11-6 libx11-xcb1 libxcursor1 libxrandr2 libxi6 libxext6 libxfixes3 libxrender1 \
        libxcb1 libxcb-render0 libxcb-shape0 libxcb-xfixes0 libxkbcommon0 libxkbcommon-x11-0 \
        libwayland-client0 libwayland-cursor0 libwayland-egl1 \
        libegl1 libgl1 libgles2 libgl1-mesa-dri
fi

log "done"
