#!/usr/bin/env bash
# The two entry points of this repository on a fresh machine (README, top):
#   ./dev.sh demo   set everything up, then run `axon demo` (the full pipeline on the bundled model)
#   ./dev.sh test   set everything up, then run ruff, mypy --strict and the test suite (.ci/run calls this)
# Set-up = a virtual environment in .venv with the package (and its Cython extension) installed
# editable with the [test] extra; it is redone whenever pyproject.toml, setup.py or the .pyx change.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${AXON_VENV:-.venv}

pick_python() {
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$py"
            return
        fi
    done
    echo "error: Python 3.11 or newer is required (none found on PATH)." >&2
    exit 1
}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$(pick_python)" -m venv "$VENV"
    fi
    local stamp="$VENV/.axon-installed"
    if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py src/axon/store/_fastio.pyx src/axon/store/_fastio.pxd \
            -newer "$stamp" 2>/dev/null)" ] || ! "$VENV/bin/python" -c 'import axon.store._fastio' 2>/dev/null; then
        echo "→ installing axon and its dependencies into $VENV (first run takes a minute)" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".[test]"
        # KServe's storage initializer, for the KServe runtime's contract test. Without its
        # dependencies: its S3 download needs only boto3 and requests (already here), not the
        # Azure, GCS and ModelScope SDKs its other backends pull in.
        "$VENV/bin/python" -m pip install --quiet --no-deps "kserve-storage>=0.20"
        touch "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        setup
        exec "$VENV/bin/axon" demo "$@"
        ;;
    test)
        setup
        "$VENV/bin/ruff" check src tests benchmarks
        "$VENV/bin/mypy"  # --strict over src/ (pyproject.toml: [tool.mypy])
        set +e
        "$VENV/bin/python" -m pytest "$@"
        rc=$?
        set -e
        if [ "$rc" -eq 5 ]; then
            echo "error: pytest collected no tests" >&2
        fi
        exit "$rc"
        ;;
    *)
        echo "usage: ./dev.sh demo | ./dev.sh test [pytest args]" >&2
        exit 2
        ;;
esac
