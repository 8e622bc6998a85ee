#!/usr/bin/env bash
# Issue 22: BFV speed side by side, in one run on this machine: hecnn
# (crates/bfv/examples/bfv_ops.rs), SEAL (TenSEAL's raw SEAL bindings,
# seal_bfv.py), fhe.rs (the `fhe` crate, fhers-bfv/, with and without its
# tfhe-ntt feature) and OpenFHE BFVRNS (openfhe_bfv.py, where its Python 3.10
# wheel installs), at hecnn's presets N13_QP216_T65537 and N14_QP432_T65537
# (same N, log Q and t = 65537 everywhere; see README.md "BFV side by side").
#
# Order: lscpu's model name, then for threads in $THREADS, for log N in
# $LOG_NS: hecnn, then each peer, back to back; then Markdown tables of the
# medians and hecnn / fastest peer per operation.
#
# Output: ${OUT:-bench/peers/out}/bfv-<UTC timestamp>.jsonl and .md
#
# Environment (all optional):
#   THREADS   thread counts (default "1 2")
#   LOG_NS    ring degrees (default "13 14")
#   REPS_13, REPS_14   timed repetitions per op (default 100 and 40)
#   PEERS     peers to run (default "seal fhers fhers-tfhe-ntt openfhe")
#   HECNN_PEERS_DIR    venv location (see setup.sh)
#   SKIP_BUILD=1       do not run setup.sh / cargo build first
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
peers_dir="${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}"
out_dir="${OUT:-$here/out}"
THREADS="${THREADS:-1 2}"
LOG_NS="${LOG_NS:-13 14}"
REPS_13="${REPS_13:-100}"
REPS_14="${REPS_14:-40}"
PEERS="${PEERS:-seal fhers fhers-tfhe-ntt openfhe}"
fhers_dir="$here/fhers-bfv"
hecnn_bin="$repo_root/target/release/examples/bfv_ops"

log() { printf '[bfv] %s\n' "$*" >&2; }

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building and installing (not timed)"
    (cd "$repo_root" && cargo build --release -p hecnn-bfv --example bfv_ops) >&2
    for peer in $PEERS; do
        case "$peer" in
        seal) bash "$here/setup.sh" tenseal >/dev/null || log "seal: setup failed (will be skipped)" ;;
        openfhe) bash "$here/setup.sh" openfhe >/dev/null || log "openfhe: not installable here (will be skipped)" ;;
        fhers) cargo build --release --manifest-path "$fhers_dir/Cargo.toml" \
            --target-dir "$fhers_dir/target/default" >&2 ;;
        fhers-tfhe-ntt) cargo build --release --manifest-path "$fhers_dir/Cargo.toml" \
            --target-dir "$fhers_dir/target/tfhe-ntt" --features tfhe-ntt >&2 ;;
        esac
    done
fi

mkdir -p "$out_dir"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
jsonl="$out_dir/bfv-$stamp.jsonl"
md="${jsonl%.jsonl}.md"
: >"$jsonl"

{
    echo "# BFV side by side (issue 22), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- $(lscpu | grep 'Model name' | sed 's/  */ /g')"
    echo "- CPUs: $(nproc); build $(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "- command: THREADS=\"$THREADS\" LOG_NS=\"$LOG_NS\" REPS_13=$REPS_13 REPS_14=$REPS_14 PEERS=\"$PEERS\" bash bench/peers/bfv_side_by_side.sh"
} | tee "$md"

run_peer() { # run_peer NAME LOG_N THREADS REPS
    local peer="$1" ln="$2" th="$3" reps="$4" py
    case "$peer" in
    seal) py="$peers_dir/tenseal/bin/python"
        [[ -x "$py" ]] || { log "seal: no tenseal venv, skipped"; return 0; }
        "$py" "$here/seal_bfv.py" --log-n "$ln" --threads "$th" --reps "$reps" ;;
    openfhe) py="$peers_dir/openfhe/bin/python"
        [[ -x "$py" ]] || { log "openfhe: no openfhe venv (needs Python 3.10), skipped"; return 0; }
        "$py" "$here/openfhe_bfv.py" --log-n "$ln" --threads "$th" --reps "$reps" ;;
    fhers) "$fhers_dir/target/default/release/fhers-bfv-peer" --log-n "$ln" --threads "$th" --reps "$reps" ;;
    fhers-tfhe-ntt) "$fhers_dir/target/tfhe-ntt/release/fhers-bfv-peer" --log-n "$ln" --threads "$th" --reps "$reps" ;;
    *) log "unknown peer '$peer' (known: seal fhers fhers-tfhe-ntt openfhe), skipped" ;;
    esac
}

for th in $THREADS; do
    for ln in $LOG_NS; do
        case "$ln" in
        13) reps="$REPS_13" ;;
        14) reps="$REPS_14" ;;
        *) log "log N $ln: only 13 and 14 (hecnn's presets), skipped"; continue ;;
        esac
        log "hecnn: log N $ln, $th thread(s), $reps reps"
        "$hecnn_bin" --log-n "$ln" --threads "$th" --reps "$reps" --json >>"$jsonl" \
            || log "hecnn failed for log N $ln, threads $th (continuing)"
        for peer in $PEERS; do
            log "$peer: log N $ln, $th thread(s), $reps reps"
            run_peer "$peer" "$ln" "$th" "$reps" >>"$jsonl" \
                || log "$peer failed for log N $ln, threads $th (continuing)"
        done
    done
done

log "$(wc -l <"$jsonl") records in $jsonl"
python3 "$here/bfv_compare.py" "$jsonl" | tee -a "$md"
log "table in $md"
