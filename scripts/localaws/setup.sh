#!/usr/bin/env bash
# Bring up everything the local AWS needs, once; every step is skipped when its result exists.
#
#   scripts/localaws/setup.sh            # prints the environment file to source at the end
#
# What it makes, all under $COSMICAI_LOCALAWS_DIR (default: .localaws/ in the repository):
#   - podman (Debian packages, installed with apt when missing), with its own configuration
#     and storage there (nothing under /etc is written);
#   - a Debian bookworm base image built offline with debootstrap (no image registry needed);
#   - a Lambda-like python3.12 image (the base + a python 3.12 from pyenv + awslambdaric),
#     tagged with the name SAM CLI looks for, and a stand-in for python:3.12-slim (the
#     rendezvous Dockerfile's base) made the same way;
#   - LocalStack (localstack-core, pinned) in its own virtual environment;
#   - env.sh: the variables the launcher, podman and the tests use.
#
# Exit status 3 means "this machine cannot do it" (not root, no apt, no python 3.12 ...), with
# the reason on the last line of stderr; the tests turn that into a skip.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${COSMICAI_LOCALAWS_DIR:-$REPO/.localaws}"
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
LOCALSTACK_SPEC="localstack-core[runtime]==2026.3.0"
# LocalStack's own dependencies are unpinned and later releases break it (cbor2 6, pyOpenSSL 26).
LOCALSTACK_CUTOFF="2026-03-31"
# The Lambda runtime interface client and its dependencies, pinned (pip download has no cutoff).
RIC_SPECS=(awslambdaric==3.1.1 simplejson==4.3.0 snapshot-restore-py==1.0.0)
BASE_IMAGE="localhost/cosmicai-localaws/bookworm:latest"
LAMBDA_IMAGE="localhost/cosmicai-localaws/lambda-python:3.12"
# The names SAM CLI (sam local invoke) and the rendezvous Dockerfile look for.
SAM_IMAGE="public.ecr.aws/lambda/python:3.12-x86_64"
SLIM_IMAGE="docker.io/library/python:3.12-slim"
# Shared libraries pyenv's python links to that a minbase rootfs lacks.
BASE_PACKAGES="ca-certificates,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,libreadline8,libncursesw6,libtinfo6,zlib1g,libexpat1,libuuid1,libgdbm6,libgdbm-compat4,tzdata,procps"

cannot() {
    echo "local AWS unavailable: $*" >&2
    exit 3
}
step() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[[ "$(uname -m)" == x86_64 ]] || cannot "x86_64 only (this machine is $(uname -m))"
[[ "$(id -u)" == 0 ]] || cannot "needs root (podman with its own storage, debootstrap)"
mkdir -p "$WORK"
exec 9>"$WORK/.setup.lock"
flock 9

# -- podman and debootstrap ----------------------------------------------------------------
missing=()
for tool in podman runc slirp4netns fuse-overlayfs debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
    step "apt: installing podman runc slirp4netns fuse-overlayfs uidmap debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || cannot "apt-get update failed"
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq podman runc slirp4netns fuse-overlayfs \
        uidmap debootstrap >&2 || cannot "apt-get install podman ... failed"
fi

# -- podman configuration of our own ---------------------------------------------------------
# The default nofile limit is above this kind of machine's hard limit, and crun refuses its
# hybrid cgroup layout; Lambda containers reach the host's loopback as 10.0.2.2 (slirp4netns).
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
network_cmd_options = ["allow_host_loopback=true"]
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
cat >"$WORK/registries.conf" <<EOF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
export CONTAINERS_STORAGE_CONF="$WORK/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf"
podman info >/dev/null 2>"$WORK/podman-info.err" ||
    cannot "podman does not work here: $(tail -1 "$WORK/podman-info.err")"

# -- the base image: Debian bookworm from the configured mirror, no registry -----------------
if ! podman image exists "$BASE_IMAGE"; then
    # The Debian archive apt is configured with (not the security archive, not third parties).
    mirror="$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
        /etc/apt/sources.list.d/ 2>/dev/null | awk '{print $2}' | head -1 || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    step "debootstrap bookworm from $mirror (about a minute)"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$WORK/rootfs" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || cannot "debootstrap failed: $(tail -1 "$WORK/debootstrap.log")"
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
fi

# -- python 3.12 (pyenv's build runs inside bookworm when copied to the same path) ------------
py312="$(ls -d "$PYENV_ROOT"/versions/3.12* 2>/dev/null | sort -V | tail -1 || true)"
[[ -n "$py312" && -x "$py312/bin/python3.12" ]] || cannot "no python 3.12 under $PYENV_ROOT/versions"

stage_python() { # $1: build context; copies the interpreter without tests or installed packages
    rm -rf "$1/python" && mkdir -p "$1/python"
    tar -C "$py312" --exclude=./lib/python3.12/test --exclude='*/__pycache__' \
        --exclude=./lib/python3.12/site-packages --exclude='./lib/libpython3.12.a' \
        --exclude='./lib/python3.12/config-3.12-x86_64-linux-gnu/*.a' -c . | tar -C "$1/python" -x
    # Only pip from the host's site-packages: nothing machine-specific leaks into the image.
    mkdir -p "$1/python/lib/python3.12/site-packages"
    cp -R "$py312"/lib/python3.12/site-packages/pip "$py312"/lib/python3.12/site-packages/pip-*.dist-info \
        "$1/python/lib/python3.12/site-packages/"
}

# An image is rebuilt when its recipe (the files and pins it is made from) changes.
recipe() { cat "$@" | { sha256sum; echo "$py312 ${RIC_SPECS[*]}"; } | sha256sum | cut -c1-16; }
current() { # $1 image, $2 recipe: whether the image exists and was built from that recipe
    [[ "$(podman image inspect --format '{{index .Labels "cosmicai.recipe"}}' "$1" 2>/dev/null)" == "$2" ]]
}

# -- the Lambda-like image ---------------------------------------------------------------------
lambda_recipe="$(recipe "$HERE/lambda-python.Containerfile" "$HERE/bootstrap")"
if ! current "$LAMBDA_IMAGE" "$lambda_recipe"; then
    step "building the Lambda-like python3.12 image"
    ctx="$WORK/build/lambda"
    rm -rf "$ctx" && mkdir -p "$ctx/wheels"
    stage_python "$ctx"
    python3 -m pip download -q --only-binary :all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --implementation cp -d "$ctx/wheels" "${RIC_SPECS[@]}" \
        2>"$WORK/pip-download.err" || cannot "pip download awslambdaric failed: $(tail -1 "$WORK/pip-download.err")"
    cp "$HERE/lambda-python.Containerfile" "$ctx/Containerfile"
    cp "$HERE/bootstrap" "$ctx/bootstrap"
    podman build -q --network host --build-arg BASE="$BASE_IMAGE" --label cosmicai.recipe="$lambda_recipe" \
        --build-arg PYDIR="$py312" -t "$LAMBDA_IMAGE" "$ctx" >/dev/null 2>"$WORK/lambda-build.err" ||
        cannot "Lambda image build failed: $(tail -1 "$WORK/lambda-build.err")"
    rm -rf "$ctx"
    podman tag "$LAMBDA_IMAGE" "$SAM_IMAGE"
    # SAM CLI's images are built on the runtime image: make it build them again.
    podman images --format '{{.Repository}}:{{.Tag}}' | grep '^docker.io/samcli/' |
        xargs -r podman rmi -f >/dev/null 2>&1 || true
fi
current "$SAM_IMAGE" "$lambda_recipe" || podman tag "$LAMBDA_IMAGE" "$SAM_IMAGE"

# -- a stand-in for python:3.12-slim (the rendezvous image's base) -----------------------------
slim_recipe="$(recipe "$HERE/python-slim.Containerfile" /etc/ssl/certs/ca-certificates.crt)"
if ! current "$SLIM_IMAGE" "$slim_recipe"; then
    step "building the python:3.12-slim stand-in"
    ctx="$WORK/build/slim"
    rm -rf "$ctx" && mkdir -p "$ctx"
    stage_python "$ctx"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
    cp "$HERE/python-slim.Containerfile" "$ctx/Containerfile"
    podman build -q --network host --build-arg BASE="$BASE_IMAGE" --label cosmicai.recipe="$slim_recipe" \
        -t "$SLIM_IMAGE" "$ctx" \
        >/dev/null 2>"$WORK/slim-build.err" ||
        cannot "python:3.12-slim stand-in build failed: $(tail -1 "$WORK/slim-build.err")"
    rm -rf "$ctx"
fi

# -- LocalStack in its own environment (it needs Python >= 3.12; SAM CLI pins an older click) ---
if [[ ! -f "$WORK/localstack/.installed" ]]; then
    py313="$(ls -d "$PYENV_ROOT"/versions/3.13* 2>/dev/null | sort -V | tail -1 || true)"
    pyls="${py313:+$py313/bin/python3}"
    [[ -n "$pyls" ]] || pyls="$(command -v python3.13 || command -v python3.12 || true)"
    [[ -n "$pyls" ]] || cannot "LocalStack needs Python >= 3.12; none found (pyenv 3.13 or 3.12)"
    step "installing $LOCALSTACK_SPEC with $pyls"
    rm -rf "$WORK/localstack"
    "$pyls" -m venv "$WORK/localstack"
    "$WORK/localstack/bin/python" -m pip install -q uv >&2 || cannot "pip install uv failed"
    "$WORK/localstack/bin/uv" pip install -q --python "$WORK/localstack/bin/python" \
        --exclude-newer "$LOCALSTACK_CUTOFF" "$LOCALSTACK_SPEC" >&2 ||
        cannot "installing $LOCALSTACK_SPEC failed"
    touch "$WORK/localstack/.installed"
fi

podman image prune -f >/dev/null 2>&1 || true

# -- the environment the launcher, podman and the tests share ----------------------------------
cat >"$WORK/env.sh" <<EOF
export COSMICAI_LOCALAWS_DIR="$WORK"
export CONTAINERS_CONF="$WORK/containers.conf"
export CONTAINERS_STORAGE_CONF="$WORK/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf"
export COSMICAI_LOCALAWS_LAMBDA_IMAGE="$LAMBDA_IMAGE"
export COSMICAI_LOCALAWS_SAM_IMAGE="$SAM_IMAGE"
export COSMICAI_LOCALAWS_PYTHON312="$py312/bin"
export COSMICAI_LOCALAWS_LOCALSTACK_PYTHON="$WORK/localstack/bin/python"
EOF
step "local AWS ready: source $WORK/env.sh"
echo "$WORK/env.sh"
