#!/usr/bin/env bash
# Runs the peer CKKS primitive benchmarks (SEAL via TenSEAL, Lattigo via
# orion-fhe) for two parameter sets and threads 1 and 2, optionally runs
# hecnn's own benchmark command, and prints Markdown comparison tables.
#
# Output: ${OUT:-bench/peers/out}/peers-<UTC timestamp>.jsonl (+ .md table)
#
# Environment (all optional):
#   HECNN_PEERS_DIR  venv location (see setup.sh)
#   OUT              output folder (default: bench/peers/out, git-ignored)
#   HECNN_CMD        command printing hecnn JSON lines; run from the repo root
#                    once per (log_n, threads), with {log_n}, {threads},
#                    {log_q}, {log_p} (Lattigo-style P list) and {reps}
#                    substituted. Only lines starting with '{' are kept.
#                    e.g. 'cargo run --release -p hecnn -- bench primitives
#                          --log-n {log_n} --threads {threads} --format jsonl'
#   HECNN_JSONL      an existing file of hecnn JSON lines to compare too
#   THREADS          thread counts (default "1 2")
#   SETS             parameter sets to run (default "14 16")
#   PEERS            peers to run (default "tenseal orion")
#   REPS_14, REPS_16 timed repetitions per op (default 20 and 5)
#   OPS              comma list of ops (default: all)
#   Q14, P14_SEAL, P14_LATTIGO, Q16, P16_SEAL, P16_LATTIGO
#                    prime bit sizes, see the defaults below and README.md
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
peers_dir="${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}"
out_dir="${OUT:-$here/out}"

repeat() { # repeat VALUE COUNT -> VALUE,VALUE,...
    local out="" i
    for ((i = 0; i < $2; i++)); do out+="${out:+,}$1"; done
    printf '%s' "$out"
}

# Set "14": logN = 14, log QP = 438 bits: Q = 58 + 8 x 40 (9 primes, 8
# levels at scale 2^40), one 60-bit P prime for both peers (so dnum = 9).
Q14="${Q14:-58,$(repeat 40 8)}"
P14_SEAL="${P14_SEAL:-60}"
P14_LATTIGO="${P14_LATTIGO:-60}"
# Set "16": logN = 16, 24 Q primes (23 levels at scale 2^40): Q = 60 + 23 x 40.
# SEAL: one 60-bit P prime (dnum = 24, log QP = 1040).
# Lattigo: four 60-bit P primes (dnum = 6, log QP = 1220).
Q16="${Q16:-60,$(repeat 40 23)}"
P16_SEAL="${P16_SEAL:-60}"
P16_LATTIGO="${P16_LATTIGO:-60,60,60,60}"

THREADS="${THREADS:-1 2}"
SETS="${SETS:-14 16}"
PEERS="${PEERS:-tenseal orion}"
REPS_14="${REPS_14:-20}"
REPS_16="${REPS_16:-5}"
OPS="${OPS:-}"

log() { printf '[run] %s\n' "$*" >&2; }

bash "$here/setup.sh" tenseal orion >/dev/null  # the peers of the primitive benchmark

mkdir -p "$out_dir"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
jsonl="$out_dir/peers-$stamp.jsonl"
: >"$jsonl"
log "writing $jsonl"

ops_args=()
[[ -n "$OPS" ]] && ops_args=(--ops "$OPS")

for set in $SETS; do
    case "$set" in
    14) log_n=14 q="$Q14" p_seal="$P14_SEAL" p_lat="$P14_LATTIGO" reps="$REPS_14" ;;
    16) log_n=16 q="$Q16" p_seal="$P16_SEAL" p_lat="$P16_LATTIGO" reps="$REPS_16" ;;
    *)
        log "unknown parameter set '$set' (known: 14 16), skipped"
        continue
        ;;
    esac
    for threads in $THREADS; do
        for peer in $PEERS; do
            case "$peer" in
            tenseal) script=tenseal_ops.py p="$p_seal" ;;
            orion) script=orion_ops.py p="$p_lat" ;;
            *)
                log "unknown peer '$peer' (known: tenseal orion), skipped"
                continue
                ;;
            esac
            log "$peer: logN=$log_n threads=$threads Q=$q P=$p reps=$reps"
            if ! "$peers_dir/$peer/bin/python" "$here/$script" \
                --log-n "$log_n" --log-q "$q" --log-p "$p" \
                --threads "$threads" --reps "$reps" "${ops_args[@]}" >>"$jsonl"; then
                log "$peer failed for logN=$log_n threads=$threads (continuing)"
            fi
        done
        if [[ -n "${HECNN_CMD:-}" ]]; then
            cmd="$HECNN_CMD"
            cmd="${cmd//\{log_n\}/$log_n}"
            cmd="${cmd//\{threads\}/$threads}"
            cmd="${cmd//\{log_q\}/$q}"
            cmd="${cmd//\{log_p\}/$p_lat}"
            cmd="${cmd//\{reps\}/$reps}"
            log "hecnn: $cmd"
            if ! (cd "$repo_root" && bash -c "$cmd") | { grep '^{' || true; } >>"$jsonl"; then
                log "hecnn command failed for logN=$log_n threads=$threads (continuing)"
            fi
        fi
    done
done

inputs=("$jsonl")
if [[ -n "${HECNN_JSONL:-}" ]]; then
    if [[ -f "$HECNN_JSONL" ]]; then
        inputs+=("$HECNN_JSONL")
    else
        log "HECNN_JSONL=$HECNN_JSONL does not exist, ignored"
    fi
fi

log "$(wc -l <"$jsonl") records in $jsonl"
python3 "$here/compare.py" "${inputs[@]}" | tee "${jsonl%.jsonl}.md"
