#!/usr/bin/env bash
# Install what idmux's demo, tests and benchmarks need when it is missing: OpenSSH client and
# server, rsync, openssl, curl, systemd-analyze, libfaketime, passwd and mount (for the
# reliability tests), libacl1-dev and acl (the POSIX ACLs of `idmux init`), nginx and
# tinyproxy (the third-party load balancer and HTTP proxy of the "real deployments" tests,
# which start their own on loopback), stunnel4 and a C compiler (the TLS relay baseline and
# the small C helpers of scripts/bench.sh), strace (idmux-fdpass's system calls), valgrind
# (profiles), and for the tests qemu-user with a cross linker and Rust target (idmux-fdpass
# built for the other architecture) and Ansible (the multiplexer's end-to-end tests).
# Safe to run again: it installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

need=()
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rsync >/dev/null || need+=(rsync)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v sftp >/dev/null || need+=(openssh-sftp-server)
[ -x /usr/lib/openssh/sftp-server ] || need+=(openssh-sftp-server)
# systemd-analyze checks the units `idmux install systemd` writes (no running systemd needed).
command -v systemd-analyze >/dev/null || need+=(systemd)
# The reliability tests: libfaketime moves the bot's clock (tests/e2e/faults.rs), useradd makes
# the second user of tests/e2e/isolation.rs, mount/umount put the destination on a small tmpfs.
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)
command -v useradd >/dev/null || need+=(passwd)
command -v mount >/dev/null || need+=(mount)
# `idmux init --reader-user` sets POSIX ACLs through the exacl crate, which links libacl: the
# build needs its headers and libacl.so (libacl1-dev); getfacl/setfacl (acl) let a test or a
# person look at what init set.
[ -e /usr/include/sys/acl.h ] || need+=(libacl1-dev)
command -v getfacl >/dev/null || need+=(acl)
# strace lists idmux-fdpass's system calls (tests/e2e/fdpass.rs); valgrind's callgrind and
# massif are the profilers benches/README.md uses.
command -v strace >/dev/null || need+=(strace)
command -v valgrind >/dev/null || need+=(valgrind)
# The "real deployments" tests (idmux_testkit::thirdparty) run their own nginx (an L7 load
# balancer in front of the dev cluster) and tinyproxy (an HTTP CONNECT proxy) on loopback.
# Debian bookworm's `nginx` package holds /usr/sbin/nginx itself (nginx-core on older releases);
# `tinyproxy-bin` holds /usr/bin/tinyproxy without the system service.
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/bin/tinyproxy ] || need+=(tinyproxy-bin)
# scripts/bench.sh: stunnel4 is the plain C TLS relay idmux's daemon is compared with (its own
# stunnel server and client on loopback; the package's system service is never started), and cc
# builds the benchmark's LD_PRELOAD shim (benches/nodelay.c) and hop timer (benches/hop.c).
[ -x /usr/bin/stunnel4 ] || need+=(stunnel4)
# The tests' SOCKS5 forward proxy (microsocks, run on loopback by idmux_testkit::thirdparty);
# stunnel4 above also makes an https:// forward proxy of tinyproxy there.
[ -x /usr/bin/microsocks ] || need+=(microsocks)
command -v cc >/dev/null || need+=(gcc libc6-dev)
# idmux-fdpass makes its own system calls, in assembly for x86_64 and for aarch64
# (src/fdpass/sys.rs): with IDMUX_WITH_CROSS=1 (scripts/test.sh, .ci/run), qemu-user and
# Debian's cross gcc for the architecture this machine is not, so that tests/e2e/fdpass.rs
# runs the helper's build for it too (rustup adds that target's core library below).
if [ "${IDMUX_WITH_CROSS:-0}" = 1 ]; then
  target=$(bash "$(dirname "$0")/cross-target.sh" || true)
  cross=${target%%-*}
  cross_gcc=gcc-${cross//_/-}-linux-gnu
  command -v "qemu-$cross" >/dev/null || need+=(qemu-user)
  command -v "$cross-linux-gnu-gcc" >/dev/null || need+=("$cross_gcc")
fi
if [ "${IDMUX_WITH_ANSIBLE:-0}" = 1 ]; then
  command -v ansible >/dev/null || need+=(ansible-core)
fi

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null
  # Install without starting the system sshd: idmux runs its own sshd nodes on loopback.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The package's postinst enables (and, where policy-rc.d allows, starts) the system nginx on
  # port 80. The tests run their own on loopback: leave none running and none to start at boot.
  if [[ " ${need[*]} " == *" nginx "* ]]; then
    if command -v systemctl >/dev/null; then
      $sudo systemctl disable nginx >/dev/null 2>&1 || true
      [ -d /run/systemd/system ] && { $sudo systemctl stop nginx >/dev/null 2>&1 || true; }
    fi
    if [ -s /run/nginx.pid ] && $sudo kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
      echo "install-deps: stopping the system nginx the package started" >&2
      $sudo /usr/sbin/nginx -s stop 2>/dev/null || true
    fi
  fi
fi
for tool in /usr/sbin/nginx /usr/bin/tinyproxy /usr/bin/stunnel4 /usr/bin/microsocks; do
  [ -x "$tool" ] || { echo "install-deps: $tool is still missing" >&2; exit 1; }
done
if [ "${IDMUX_WITH_CROSS:-0}" = 1 ]; then
  for tool in "qemu-$cross" "$cross-linux-gnu-gcc"; do
    command -v "$tool" >/dev/null || { echo "install-deps: $tool is still missing" >&2; exit 1; }
  done
  # The target's core library comes from rustup's own server, not a package registry: where it
  # cannot be fetched, say so and go on; the tests of that build then say SKIP.
  if ! bash "$(dirname "$0")/cross-target.sh" >/dev/null; then
    echo "install-deps: adding the Rust target $target (rustup)" >&2
    rustup target add "$target" >/dev/null 2>&1 \
      || echo "install-deps: WARNING: cannot add the Rust target $target; idmux-fdpass's tests for $cross will be skipped" >&2
  fi
fi
# sshd refuses to start without its privilege separation directory.
[ -d /run/sshd ] || { [ "$(id -u)" = 0 ] && mkdir -p /run/sshd && chmod 0755 /run/sshd; } || true
