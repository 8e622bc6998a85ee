#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes (the targets in fuzz/fuzz_targets/) with cargo-fuzz
# on the stable toolchain (no sanitizer: `-s none`; debug assertions and overflow checks on).
#
#   scripts/fuzz.sh smoke                    # CI: build, then every target for 10 s
#   scripts/fuzz.sh full [seconds-per-target] # the long campaign (default 300 s per target)
#   scripts/fuzz.sh run TARGET [seconds]     # one target
#
# Each target starts from fuzz/seeds/<target>/ (committed) and fuzz/corpus/<target>/
# (libFuzzer's working corpus, ignored by git). One libFuzzer process runs at a time. A
# crash, a panic, an input that takes longer than the timeout or allocates more than the
# RSS limit fails the run; the input is left in fuzz/artifacts/<target>/. At the end the
# executions of each target and their total are printed.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-smoke}"
case "$mode" in
    smoke) seconds="${2:-10}" ;;
    full) seconds="${2:-300}" ;;
    run) seconds="${3:-60}" ;;
    *)
        echo "usage: $0 smoke | full [seconds-per-target] | run TARGET [seconds]" >&2
        exit 2
        ;;
esac

# Bounds on one execution: hostile sizes that allocate too much or hang count as crashes.
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
TIMEOUT_S="${FUZZ_TIMEOUT_S:-10}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

if [ "$mode" = run ]; then
    targets=("${2:?usage: $0 run TARGET [seconds]}")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

echo "== building the fuzz targets (cargo fuzz build -s none)"
build_start=$SECONDS
(cd fuzz && cargo fuzz build -s none)
echo "build: $((SECONDS - build_start)) s"
# The targets are run from this build (what `cargo fuzz run` would run), so that sources
# edited while a campaign runs do not rebuild it half-way.
host="$(rustc -vV | sed -n 's/^host: //p')"
bin="fuzz/target/$host/release"

logs="fuzz/target/logs"
mkdir -p "$logs"
declare -A runs
total=0
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    echo "== fuzzing $t for ${seconds} s"
    log="$logs/$t.log"
    status=0
    # Corpus directories after the first are read only (new inputs go to the first).
    "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$seconds" \
        -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$TIMEOUT_S" -print_final_stats=1 \
        "fuzz/corpus/$t" "fuzz/seeds/$t" >"$log" 2>&1 || status=$?
    # libFuzzer's last progress line: "Done N runs in S second(s)", or "#N DONE ...".
    n=$(grep -Eo '(Done [0-9]+ runs|#[0-9]+[[:space:]]+DONE)' "$log" | tail -n 1 | grep -Eo '[0-9]+' | head -n 1 || true)
    if [ -z "$n" ]; then
        n=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -n 1 || true)
    fi
    n="${n:-0}"
    runs[$t]=$n
    total=$((total + n))
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "!! $t failed (exit $status); the log ends:"
        tail -n 40 "$log"
    else
        echo "$t: $n executions"
    fi
done

echo "== executions per target"
for t in "${targets[@]}"; do
    printf '%-20s %12s\n' "$t" "${runs[$t]}"
done
printf '%-20s %12s\n' total "$total"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "crashes, timeouts or out-of-memory in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
