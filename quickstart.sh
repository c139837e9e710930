#!/usr/bin/env bash
# EdgeKit quick start. On a fresh Debian 12 machine this installs what EdgeKit needs (Debian
# packages, then a virtualenv .venv with the pinned Python tools) and runs one job:
#
#   ./quickstart.sh demo   build EdgeKit and run the main job (see README.md)
#   ./quickstart.sh test   build EdgeKit and run the whole test suite (what CI runs)
#
# Any other words are passed to invoke inside the virtualenv: ./quickstart.sh bench
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Debian packages: compilers for the host and for aarch64 (the runtime must build warning-free
# with both), g++ for the C++ cases of the glibc check's tests, venv support; the emulated board
# (mmdebstrap makes its arm64 rootfs, proot + qemu-user run it); e2fsprogs for the ext4 image;
# file for checking binaries; openssh-server for the tests' throwaway sshd "boards"; XNNPACK (with
# pthreadpool) for the host build's XNNPACK kernel provider (boards get theirs from their rootfs);
# libsodium23 for paired remote_server sessions (libedgekit loads it when a key is used); clang with
# its sanitizer and libFuzzer runtimes (libclang-rt-14-dev) for the fuzz targets and the TSan build.
APT_PACKAGES=(gcc g++ make libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross python3-venv
    mmdebstrap proot qemu-user e2fsprogs file openssh-server libxnnpack-dev libpthreadpool-dev libsodium23
    clang libclang-rt-14-dev)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "Installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    say "Creating the virtualenv .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
# Re-install the pinned tools only when the list changed.
stamp=.venv/.requirements-dev.sha256
if ! sha256sum --check --status "$stamp" 2>/dev/null; then
    say "Installing the Python tools of requirements-dev.txt into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    sha256sum requirements-dev.txt > "$stamp"
fi

say "invoke $*"
exec .venv/bin/invoke "$@"
