#!/bin/sh
# Install what boxer, its lab and its examples need on a fresh Debian 12, as root. Idempotent:
# running it again installs nothing new and leaves the same state.
#
#   sudo scripts/install-deps.sh
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (it uses apt-get)" >&2
    exit 1
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
services="redis-server nginx memcached postgresql ssh"
# buildah and debootstrap build the Lambda image (lambda_image/build.py: a Debian base, no
# daemon); libseccomp2 lets the local Lambda sandbox refuse system calls (tests of fallbacks).
# libpython3.11-testsuite: CPython's own socket tests, run plain and under boxer
# (tests/test_foreign_suites.py). tmux: `boxer top` is tested in a real terminal (tests/test_cli_context.py).
packages="iproute2 iptables nftables conntrack redis-server redis-tools iperf3 nginx-light curl
memcached libmemcached-tools python3-dev python3-venv gcc libc6-dev dnsutils shellcheck
buildah debootstrap libseccomp2 libpython3.11-testsuite postgresql openssh-server openssh-client tmux"

# Debian starts a daemon as soon as its package is installed. redis, nginx and memcached would
# then hold ports 6379, 80 and 11211 in the machine's own namespace, where nothing of ours should
# run: the examples start these programs themselves, inside lab hosts. A policy-rc.d that answers
# 101 ("action not allowed") stops invoke-rc.d from starting anything while we install; it is
# removed again on any exit, and only if we put it there.
policy=/usr/sbin/policy-rc.d
own_policy=no
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=yes
fi
cleanup() {
    if [ "$own_policy" = yes ]; then rm -f "$policy"; fi
}
trap cleanup EXIT INT TERM

export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086  # word splitting of the package list is intended
apt-get install -y --no-install-recommends $packages

# Packages installed before this script ran (or while another policy allowed it) may have
# started their daemons; stop them and keep them from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for service in $services; do
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    done
else
    for service in $services; do
        if [ -x "/etc/init.d/$service" ]; then
            "/etc/init.d/$service" stop >/dev/null 2>&1 || true
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    done
fi

# boxer goes into its own virtual environment (.venv in the repository): Debian's python3 refuses
# pip installs into the system (PEP 668), and a venv keeps our versions apart from the machine's.
# The editable install compiles the C interposer into boxer/libboxer_preload.so.
cd "$repo"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -c 'import boxer.agent.child as c; c.interposer_path()' || {
    echo "install-deps.sh: the interposer was not built (is gcc installed?)" >&2
    exit 1
}
# checkov (static checks of terraform/) lives in a venv of its own: it pins older boto3 and
# packaging than boxer's tests use. tests/test_terraform.py finds it at /opt/checkov-venv.
if [ ! -x /opt/checkov-venv/bin/checkov ]; then
    python3 -m venv /opt/checkov-venv
    /opt/checkov-venv/bin/python -m pip install --quiet checkov
fi
echo "install-deps.sh: done; put $repo/.venv/bin on PATH, then try: boxer lab up --hosts 2"
