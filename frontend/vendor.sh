#!/usr/bin/env bash
# Refresh the vendored browser assets (the dashboard's uPlot and uqr, the API reference's
# Swagger UI)
# from the npm registry (dev-only; needs npm).
#
#   frontend/vendor.sh            download the pinned versions, copy them, rewrite vendor.lock
#   frontend/vendor.sh --check    verify the vendored files against vendor.lock (no network)
#
# To upgrade, change the version below, run the script, review the diff, commit the files.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVER="$ROOT/server"
LOCK="$ROOT/frontend/vendor.lock"

# package@version  folder-under-server/  file-in-package:vendored-name ...
PACKAGES=(
  "uplot@1.6.32 dashboard/static/vendor dist/uPlot.iife.min.js:uPlot.iife.min.js dist/uPlot.min.css:uPlot.min.css LICENSE:LICENSE-uPlot.txt"
  "uqr@0.1.3 dashboard/static/vendor dist/index.mjs:uqr.mjs LICENSE:LICENSE-uqr.txt"
  "swagger-ui-dist@5.35.0 api/static/swagger-ui swagger-ui-bundle.js:swagger-ui-bundle.js swagger-ui.css:swagger-ui.css favicon-32x32.png:favicon-32x32.png LICENSE:LICENSE-swagger-ui.txt NOTICE:NOTICE-swagger-ui.txt"
)

if [[ "${1:-}" == "--check" ]]; then
  cd "$SERVER"
  grep -v '^#' "$LOCK" | awk 'NF == 4 { print $4 "  " $3 }' | sha256sum --check --strict
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo "# Vendored browser assets: package version file-under-server/ sha256 (written by frontend/vendor.sh)"
  for entry in "${PACKAGES[@]}"; do
    read -r spec dest files <<<"$entry"
    name=${spec%@*}
    version=${spec##*@}
    (cd "$work" && npm pack --silent "$spec" >/dev/null)
    mkdir -p "$work/$name"
    tar -xzf "$work/$name-$version.tgz" -C "$work/$name"
    for pair in $files; do
      src=${pair%%:*}
      dst=${pair##*:}
      mkdir -p "$SERVER/$dest"
      cp "$work/$name/package/$src" "$SERVER/$dest/$dst"
      echo "$name $version $dest/$dst $(sha256sum "$SERVER/$dest/$dst" | cut -d' ' -f1)"
    done
  done
} >"$LOCK"
echo "vendored under $SERVER; lock written to $LOCK"
