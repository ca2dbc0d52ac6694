#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, one after the other.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      # default 60
#
# Installs cargo-fuzz if it is missing, builds all targets once, then runs each target listed
# by `cargo fuzz list` for SECONDS_PER_TARGET seconds (libFuzzer's -max_total_time), so a new
# target in fuzz/Cargo.toml needs no change here. Each run reads fuzz/seeds/<target>/ (the
# committed seeds) and grows fuzz/corpus/<target>/ (kept between runs, git-ignored), with the
# dictionary fuzz/dict/<target>.dict if there is one, else fuzz/dict/protocol.dict.
#
# Prints per target the inputs executed, the corpus size and the result; exits 1 if any
# target found a crash, a timeout or an out-of-memory input, after printing the saved input
# and the command that reproduces it.
#
# cargo fuzz passes nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. FUZZ_SANITIZER=none skips AddressSanitizer (default: address).
set -euo pipefail

SECONDS_PER_TARGET=${1:-60}
[[ $SECONDS_PER_TARGET =~ ^[0-9]+$ && $SECONDS_PER_TARGET -ge 1 ]] \
    || { echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET >= 1]" >&2; exit 2; }
SANITIZER=${FUZZ_SANITIZER:-address}
# One input taking this long is reported as a hang: every target here runs in microseconds.
INPUT_TIMEOUT_SECONDS=10
# Room over -max_total_time for start-up, loading the corpus and a last slow input, after
# which the run is killed: the script is bounded even if libFuzzer is not.
GRACE_SECONDS=60

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

LOGS=$(mktemp -d -t fuzz.XXXXXX)
RUNNING=''  # the pid of the `timeout` around the fuzzer running now, if any
cleanup() {
    if [[ -n $RUNNING ]]; then
        kill "$RUNNING" 2>/dev/null || true   # timeout passes it on to the fuzzer
        wait "$RUNNING" 2>/dev/null || true
    fi
    rm -rf "$LOGS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

FUZZ_FLAGS=(--sanitizer "$SANITIZER" --debug-assertions)

echo "== building fuzz targets (sanitizer: $SANITIZER)"
START=$SECONDS
cargo fuzz build "${FUZZ_FLAGS[@]}"
echo "built in $((SECONDS - START))s"

mapfile -t TARGETS < <(cargo fuzz list)
[[ ${#TARGETS[@]} -gt 0 ]] || { echo "cargo fuzz list found no targets" >&2; exit 1; }

# The value of libFuzzer's `stat::NAME:` line in a log, or "?".
final_stat() { awk -v key="stat::$2:" '$1 == key {print $2}' "$1" | tail -n 1 | grep . || echo "?"; }

FAILED=()
SUMMARY=()
for target in "${TARGETS[@]}"; do
    corpus=$ROOT/fuzz/corpus/$target
    seeds=$ROOT/fuzz/seeds/$target
    dict=$ROOT/fuzz/dict/$target.dict
    [[ -f $dict ]] || dict=$ROOT/fuzz/dict/protocol.dict
    mkdir -p "$corpus"
    corpus_dirs=("$corpus")
    [[ -d $seeds ]] && corpus_dirs+=("$seeds")
    libfuzzer_args=(
        -max_total_time="$SECONDS_PER_TARGET"
        -timeout="$INPUT_TIMEOUT_SECONDS"
        -print_final_stats=1
    )
    [[ -f $dict ]] && libfuzzer_args+=(-dict="$dict")
    log=$LOGS/$target.log

    echo "== $target: ${SECONDS_PER_TARGET}s, corpus fuzz/corpus/$target, dictionary ${dict##*/}"
    # In the background and waited for, so that an interrupt reaches cleanup at once.
    timeout --kill-after=10 "$((SECONDS_PER_TARGET + GRACE_SECONDS))" \
        cargo fuzz run "${FUZZ_FLAGS[@]}" "$target" "${corpus_dirs[@]}" -- "${libfuzzer_args[@]}" \
        >"$log" 2>&1 &
    RUNNING=$!
    rc=0
    wait "$RUNNING" || rc=$?
    RUNNING=

    execs=$(final_stat "$log" number_of_executed_units)
    rate=$(final_stat "$log" average_exec_per_sec)
    rss=$(final_stat "$log" peak_rss_mb)
    files=$(find "$corpus" -type f | wc -l)
    bytes=$(find "$corpus" -type f -printf '%s\n' | awk '{n += $1} END {print n + 0}')
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [[ $rc -eq 0 ]]; then
        result=ok
    elif [[ -n $artifact ]]; then
        result="FOUND $(basename "$artifact" | cut -d- -f1)"
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
        result="KILLED after $((SECONDS_PER_TARGET + GRACE_SECONDS))s"
    else
        result="FAILED (exit $rc)"
    fi
    line=$(printf '%-16s %6ss %12s execs %8s/s  corpus %6s files %9s bytes  rss %5s MiB  %s' \
        "$target" "$SECONDS_PER_TARGET" "$execs" "$rate" "$files" "$bytes" "$rss" "$result")
    echo "$line"
    SUMMARY+=("$line")
    if [[ $rc -ne 0 ]]; then
        FAILED+=("$target")
        echo "--- $target: what libFuzzer reported"
        # The panic message or sanitizer report, else the end of the log.
        report=$LOGS/$target.report
        grep -v '^#[0-9]' "$log" >"$report" || true
        pattern='panicked at|ALARM:|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)'
        if grep -q -E "$pattern" "$report"; then
            grep -m 1 -A 12 -E "$pattern" "$report"
        else
            tail -n 30 "$report"
        fi | sed 's/^/    /'
        if [[ -n $artifact ]]; then
            echo "--- saved input: $artifact"
            echo "    reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${FUZZ_FLAGS[*]} $target $artifact"
            echo "    minimise:  RUSTC_BOOTSTRAP=1 cargo fuzz tmin ${FUZZ_FLAGS[*]} $target $artifact"
        fi
    fi
done

echo "== summary (target, seconds, inputs executed, rate, corpus, peak rss, result)"
printf '%s\n' "${SUMMARY[@]}"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "FUZZ FAIL: ${FAILED[*]}"
    exit 1
fi
echo "FUZZ PASS"
