#!/usr/bin/env bash
# Build the docs site (docs/, mkdocs.yml; the leaderboard under leaderboard/, by tools/docs_leaderboard_hook.py)
# into SITE_DIR. --strict turns every warning into a failure: a link or anchor that does not resolve, a
# page missing from the nav.
#
#   tools/build_docs.sh SITE_DIR      (needs pip install -e '.[docs]')
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: tools/build_docs.sh SITE_DIR" >&2; exit 2; }
site="$(mkdir -p "$1" && cd "$1" && pwd)"
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1  # mkdocs-material's banner about its successor, not about this site
python -m mkdocs build --strict --clean --config-file mkdocs.yml --site-dir "$site"
