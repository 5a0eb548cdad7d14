#!/usr/bin/env bash
# What tests/test_browser.py needs beyond `pip install -e .`: Debian's chromium (never a browser that
# playwright downloads) and the labextension's npm packages (playwright-core, the builder) from the lock file.
# Safe to run twice. Usage: .ci/setup-browser.sh   (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Ubuntu ships chromium only as a snap stub; fail loudly rather than install that
  # capture first: `apt-cache … | grep -q` under pipefail fails when grep exits early (SIGPIPE)
  policy="$(apt-cache policy chromium)"
  if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
    echo "setup-browser: no 'chromium' .deb in the apt sources (Debian bookworm has one)." >&2
    echo "$policy" >&2
    exit 1
  fi
  $SUDO apt-get install -y -qq chromium
fi
/usr/bin/chromium --version

command -v node >/dev/null || { echo "setup-browser: node (>= 20) is required" >&2; exit 1; }
# npm ci: exactly package-lock.json; playwright-core has no post-install browser download
(cd labextension && npm ci --no-audit --no-fund)

# pip install -e . builds the extension; build here too when that step was skipped (SKIP_JUPYTER_BUILDER=1)
if [ ! -f distill_nb/labextension/package.json ]; then
  (cd labextension && npm run build)
fi
