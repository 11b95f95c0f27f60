#!/usr/bin/env bash
# Prepare this machine to build and run the Stratus image with podman (run as root; idempotent).
#
#  1. apt-get install podman, runc and debootstrap (skipped when they are already there).
#  2. Write /etc/containers/containers.conf with the settings these machines need
#     (see shared/DESIGN.md, "Containers").
#  3. Make a local Debian bookworm base image with python3.11 + venv (public image registries are
#     unreachable here) and tag it $STRATUS_BASE_IMAGE. Skipped when podman already has it; the
#     debootstrap root file system is cached as a tarball in $STRATUS_CACHE_DIR.
#
# Environment: STRATUS_BASE_IMAGE (default localhost/stratus-base:bookworm),
#              STRATUS_CACHE_DIR (default /var/cache/stratus), DEBIAN_MIRROR (default: apt's).
set -euo pipefail

BASE_IMAGE="${STRATUS_BASE_IMAGE:-localhost/stratus-base:bookworm}"
CACHE_DIR="${STRATUS_CACHE_DIR:-/var/cache/stratus}"
SUITE=bookworm
# python3 is 3.11 on bookworm; python3-venv brings ensurepip, so every venv gets its own pip.
PACKAGES=python3,python3-venv,ca-certificates

log() { printf '[container setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (podman builds and runs the image as root here)"
    exit 1
fi

# --- 1. packages ------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # With recommends: netavark/aardvark-dns (networking), slirp4netns, catatonit, buildah.
    apt-get install -y -q podman runc debootstrap
fi

# --- 2. podman configuration -----------------------------------------------------------------
hard_nofile="$(ulimit -Hn)"
[ "$hard_nofile" = unlimited ] && hard_nofile=1048576
hard_nproc="$(ulimit -Hu)"
[ "$hard_nproc" = unlimited ] && hard_nproc=4194304
# runc here also refuses an nproc limit above kernel.pid_max (EPERM, "rlimit type 6").
pid_max="$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)"
[ "$hard_nproc" -gt "$pid_max" ] && hard_nproc="$pid_max"
conf="# Written by stratus tests/container/setup.sh (safe to delete; it is rewritten when needed).
[containers]
# At or below this machine's hard limits: podman's defaults (1048576) exceed them, and without
# CAP_SYS_RESOURCE runc then fails (error setting rlimits: operation not permitted).
default_ulimits = [\"nofile=${hard_nofile}:${hard_nofile}\", \"nproc=${hard_nproc}:${hard_nproc}\"]

[engine]
# crun rejects the hybrid cgroup layout of these machines; runc copes with it.
runtime = \"runc\"
# No systemd/journald here.
events_logger = \"file\"
cgroup_manager = \"cgroupfs\"
"
mkdir -p /etc/containers
if [ ! -f /etc/containers/containers.conf ] || [ "$(cat /etc/containers/containers.conf)" != "${conf%$'\n'}" ]; then
    log "writing /etc/containers/containers.conf"
    printf '%s' "$conf" >/etc/containers/containers.conf
fi

# --- 3. local base image ---------------------------------------------------------------------
# The key names the suite and package set: changing either rebuilds the cached base.
key="$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)"
if [ "$(podman image inspect --format '{{index .Config.Labels "stratus.base-key"}}' \
        "$BASE_IMAGE" 2>/dev/null || true)" = "$key" ]; then
    log "base image $BASE_IMAGE already present"
    exit 0
fi

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    # The mirror apt already uses on this machine (deb822 or one-line format).
    mirror="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)"
fi
if [ -z "$mirror" ]; then
    mirror="$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\/debian\)[[:space:]]\+.*/\2/p' \
        /etc/apt/sources.list 2>/dev/null | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

tarball="$CACHE_DIR/rootfs-$SUITE-$key.tar"
mkdir -p "$CACHE_DIR"

if [ ! -s "$tarball" ]; then
    root="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap 'rm -rf "$root" "$tarball.partial"' EXIT
    log "debootstrap $SUITE ($PACKAGES) from $mirror"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" \
        >"$CACHE_DIR/debootstrap.log" 2>&1 || {
        tail -n 30 "$CACHE_DIR/debootstrap.log" >&2
        exit 1
    }
    # Trim what an image never needs (the official slim images do the same).
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/var/log/* "$root"/debootstrap 2>/dev/null || true
    find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + \
        2>/dev/null || true
    tar --numeric-owner -C "$root" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$root"
    trap - EXIT
fi

log "importing $tarball as $BASE_IMAGE"
podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL stratus.base-key=$key" \
    --message "Debian $SUITE minbase + $PACKAGES (stratus tests/container/setup.sh)" \
    "$tarball" "$BASE_IMAGE" >/dev/null
podman run --rm "$BASE_IMAGE" python3 -c 'import ensurepip, sqlite3, ssl, venv' || {
    log "the base image does not run; check /etc/containers/containers.conf"
    exit 1
}
log "base image $BASE_IMAGE ready"
