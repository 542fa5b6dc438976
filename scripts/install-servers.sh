#!/usr/bin/env bash
# Install the real servers the tests and the demo run (haproxy, nginx, prometheus, postgresql,
# openssh-server, the Docker Engine from docker.io with busybox-static for the test images and
# docker-compose (v1) for the compose tests and the benchmark), and
# the headless browser the HTML report's test renders with (chromium), from Debian's packages,
# when missing. Idempotent. Runs as root, or through sudo.
# Nothing is started as a system service: the tests start their own instances on loopback (and
# their own dockerd on a socket in a temporary directory).
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

have haproxy || have /usr/sbin/haproxy || need+=(haproxy)
have nginx || have /usr/sbin/nginx || need+=(nginx)
have prometheus || have /usr/bin/prometheus || need+=(prometheus)
pg="$(pg_bin)"
{ [ -n "$pg" ] && [ -x "$pg/postgres" ] && [ -x "$pg/initdb" ] && have pg_dump && have pg_restore && have psql; } || need+=(postgresql postgresql-client)
have /usr/sbin/sshd || need+=(openssh-server)
have ssh-keygen || need+=(openssh-client)
have tar || need+=(tar)
have gzip || need+=(gzip)
have openssl || need+=(openssl)
have chromium || have /usr/bin/chromium || need+=(chromium)
# The test fixture runs /usr/sbin/dockerd (DockerdFixture's DOCKERD) and /usr/bin/docker: a
# dockerd elsewhere on PATH is not enough.
{ have /usr/sbin/dockerd && have /usr/bin/docker; } || need+=(docker.io)
have docker-compose || have /usr/bin/docker-compose || need+=(docker-compose)
# The test images hold busybox alone (FROM scratch): it must be the static build.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-servers: haproxy, nginx, prometheus, postgresql, openssh-server, docker.io (/usr/sbin/dockerd), docker-compose, busybox-static, chromium are present"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -E); else
    echo "install-servers: need root or sudo to install: ${need[*]}" >&2; exit 1
  fi
fi

echo "install-servers: installing ${need[*]}"
# Keep Debian's maintainer scripts from starting the services (policy-rc.d exit 101 = "not
# allowed"); remove the file only if we created it.
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | ${SUDO[@]+"${SUDO[@]}"} tee /usr/sbin/policy-rc.d >/dev/null
  ${SUDO[@]+"${SUDO[@]}"} chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then ${SUDO[@]+"${SUDO[@]}"} rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
${SUDO[@]+"${SUDO[@]}"} apt-get update -qq
${SUDO[@]+"${SUDO[@]}"} apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install-servers: done"
