#!/usr/bin/env bash
# Debian packages the tests need: prometheus (+ promtool) for
# tests/test_prometheus_integration.py, docker-compose for `docker-compose config` in
# tests/test_deploy.py, and chromium + chromium-driver for tests/test_playground_browser.py.
# Idempotent and quiet: tools already on PATH are left alone; apt's output is shown only when
# it fails.
set -euo pipefail

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-install-recommends: prometheus recommends its node exporter and chromium its sandbox
# helper (the test runs it with --no-sandbox), neither needed here.
if ! { $SUDO apt-get update -qq \
       && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo ".ci/deps.sh: installing ${need[*]} failed" >&2
    exit 1
fi
