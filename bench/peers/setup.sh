#!/usr/bin/env bash
# Creates one virtual environment per peer FHE library, outside the git tree:
#   ${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}/tenseal   (tenseal, pinned)
#   ${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}/orion     (orion-fhe, pinned)
#   ${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}/desilo    (desilofhe, pinned)
#   ${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}/openfhe   (openfhe, pinned; BFV
#                     peer; needs a Python 3.10 interpreter, see PYTHON_OPENFHE)
# Idempotent: a venv whose stamp matches its requirements file and whose
# import check passes is left alone. Uses PyPI through pip only.
#
# Usage: setup.sh [PEER...]   (PEER in tenseal, orion, desilo, openfhe;
#                              default tenseal orion desilo)
#
# Environment:
#   HECNN_PEERS_DIR   where the venvs live (default ~/.cache/hecnn/peers)
#   PYTHON            interpreter used to create the venvs (default python3;
#                     tenseal 0.3.18 needs >= 3.11, orion-fhe needs < 3.13)
#   ORION_FULL_DEPS=1 also install orion-fhe's declared dependencies (torch,
#                     torchvision, ...; several GB). Not needed by orion_ops.py.
#   PYTHON_OPENFHE    interpreter for the openfhe venv (default python3.10: the
#                     pinned openfhe wheel ships a CPython 3.10 extension only).
#                     If unset and python3.10 does not run, a pyenv 3.10.x
#                     is used when there is one. Without one, `setup.sh openfhe`
#                     says so and exits 3.
#   FORCE=1           rebuild the venvs even if they look up to date.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
peers_dir="${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}"
python="${PYTHON:-python3}"
mkdir -p "$peers_dir"

log() { printf '[setup] %s\n' "$*" >&2; }

# stamp_of NAME FILES... -> a hash of the requirement files and options.
stamp_of() {
    local name="$1"
    shift
    {
        echo "$name"
        echo "full_deps=${ORION_FULL_DEPS:-0}"
        "$python" -c 'import sys; print(sys.version_info[:2])'
        cat "$@"
    } | sha256sum | cut -d' ' -f1
}

# ensure_venv NAME CHECK_PY INSTALL_FN REQ_FILES...
ensure_venv() {
    local name="$1" check="$2" install_fn="$3"
    shift 3
    local venv="$peers_dir/$name"
    local stamp
    stamp="$(stamp_of "$name" "$@")"
    if [[ "${FORCE:-0}" != 1 && -f "$venv/.hecnn-stamp" ]] \
        && [[ "$(cat "$venv/.hecnn-stamp")" == "$stamp" ]] \
        && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        log "$name: already installed in $venv (skipped)"
        return 0
    fi
    if [[ -d "$venv" ]]; then
        log "$name: venv out of date or broken, recreating $venv"
        rm -rf "$venv"
    else
        log "$name: creating venv $venv"
    fi
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$install_fn" "$venv"
    "$venv/bin/python" -c "$check" >&2
    echo "$stamp" >"$venv/.hecnn-stamp"
    log "$name: installed: $("$venv/bin/python" -m pip freeze --disable-pip-version-check | tr '\n' ' ')"
}

install_tenseal() {
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements-tenseal.txt"
}

install_openfhe() {
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements-openfhe.txt"
}

install_desilo() {
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements-desilo.txt"
}

install_orion() {
    if [[ "${ORION_FULL_DEPS:-0}" == 1 ]]; then
        "$1/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$here/requirements-orion.txt"
    else
        # numpy first, then orion-fhe without its (torch, ...) dependencies.
        "$1/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$here/requirements-orion-deps.txt"
        # pip warns about the deliberately missing dependencies: hide only that.
        local pip_log rc=0
        pip_log="$(mktemp)"
        "$1/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-deps -r "$here/requirements-orion.txt" >"$pip_log" 2>&1 || rc=$?
        grep -v -e 'dependency resolver' -e 'requires .*, which is not installed' \
            "$pip_log" >&2 || true
        rm -f "$pip_log"
        return "$rc"
    fi
}

tenseal_check='import tenseal, tenseal.sealapi; print(tenseal.__version__)'
# Do not `import orion` (its __init__ pulls in torch); check the Go library.
orion_check='import importlib.util, os, ctypes, numpy
spec = importlib.util.find_spec("orion")
root = os.path.dirname(spec.origin)
ctypes.CDLL(os.path.join(root, "backend", "lattigo", "lattigo-linux.so"))'
desilo_check='import importlib.metadata, desilofhe, numpy
print(importlib.metadata.version("desilofhe"))'

openfhe_check='import importlib.metadata, openfhe
print(importlib.metadata.version("openfhe"))'

peers=("$@")
[[ ${#peers[@]} -gt 0 ]] || peers=(tenseal orion desilo)
for peer in "${peers[@]}"; do
    case "$peer" in
    tenseal) ensure_venv tenseal "$tenseal_check" install_tenseal "$here/requirements-tenseal.txt" ;;
    orion) ensure_venv orion "$orion_check" install_orion \
        "$here/requirements-orion.txt" "$here/requirements-orion-deps.txt" ;;
    desilo) ensure_venv desilo "$desilo_check" install_desilo "$here/requirements-desilo.txt" ;;
    openfhe)
        # The only current openfhe wheel on PyPI carries a CPython 3.10 extension.
        py310="${PYTHON_OPENFHE:-python3.10}"
        if [[ -z "${PYTHON_OPENFHE:-}" ]] && ! python3.10 -V >/dev/null 2>&1 \
            && command -v pyenv >/dev/null 2>&1; then
            # pyenv installs (e.g. 3.10.13) that are not the active version
            for cand in "$(pyenv root)"/versions/3.10*/bin/python3.10; do
                [[ -x "$cand" ]] && py310="$cand"
            done
        fi
        if ! command -v "$py310" >/dev/null 2>&1 \
            || [[ "$("$py310" -c 'import sys; print(sys.version_info[:2])')" != "(3, 10)" ]]; then
            log "openfhe: skipped: openfhe==1.6.1.0.22.4 needs Python 3.10 and '$py310' is not one" \
                "(set PYTHON_OPENFHE to a python3.10)"
            exit 3
        fi
        python="$py310" ensure_venv openfhe "$openfhe_check" install_openfhe "$here/requirements-openfhe.txt"
        ;;
    *) log "unknown peer '$peer' (known: tenseal orion desilo openfhe)"; exit 2 ;;
    esac
done

log "done: venvs in $peers_dir"
printf 'TENSEAL_PY=%s\nORION_PY=%s\nDESILO_PY=%s\nOPENFHE_PY=%s\n' "$peers_dir/tenseal/bin/python" \
    "$peers_dir/orion/bin/python" "$peers_dir/desilo/bin/python" "$peers_dir/openfhe/bin/python"
