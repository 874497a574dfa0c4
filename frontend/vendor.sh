#!/usr/bin/env bash
# Refresh the dashboard's vendored browser assets from the npm registry (dev-only; needs npm).
#
#   frontend/vendor.sh            download the pinned versions, copy them, rewrite vendor.lock
#   frontend/vendor.sh --check    verify the vendored files against vendor.lock (no network)
#
# To upgrade, change the version below, run the script, review the diff, commit the files.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/server/dashboard/static/vendor"
LOCK="$ROOT/frontend/vendor.lock"

# package@version  file-in-package:vendored-name ...
PACKAGES=(
  "uplot@1.6.32 dist/uPlot.iife.min.js:uPlot.iife.min.js dist/uPlot.min.css:uPlot.min.css LICENSE:LICENSE-uPlot.txt"
)

if [[ "${1:-}" == "--check" ]]; then
  cd "$DEST"
  grep -v '^#' "$LOCK" | awk 'NF == 4 { print $4 "  " $3 }' | sha256sum --check --strict
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$DEST"
{
  echo "# Vendored dashboard assets: package version file sha256 (written by frontend/vendor.sh)"
  for entry in "${PACKAGES[@]}"; do
    read -r spec files <<<"$entry"
    name=${spec%@*}
    version=${spec##*@}
    (cd "$work" && npm pack --silent "$spec" >/dev/null)
    mkdir -p "$work/$name"
    tar -xzf "$work/$name-$version.tgz" -C "$work/$name"
    for pair in $files; do
      src=${pair%%:*}
      dst=${pair##*:}
      cp "$work/$name/package/$src" "$DEST/$dst"
      echo "$name $version $dst $(sha256sum "$DEST/$dst" | cut -d' ' -f1)"
    done
  done
} >"$LOCK"
echo "vendored into $DEST; lock written to $LOCK"
