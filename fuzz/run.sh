#!/usr/bin/env bash
# Runs fuzz targets to the bar of issue 16: 10 million executions or 15 minutes each,
# whichever comes first, at the lowest CPU priority, one target at a time, and appends
# libFuzzer's final statistics to results.md. Then the grown corpus is minimised with
# `cargo fuzz cmin` and replaces corpus/<target>/ (review its size before committing).
# Usage: fuzz/run.sh [TARGET...]   (all targets when none is named)
# Env: FUZZ_RUNS (10000000), FUZZ_SECONDS (900), CARGO_TARGET_DIR (~/.cache/tgt-fuzz-nightly).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tgt-fuzz-nightly}
runs=${FUZZ_RUNS:-10000000}
seconds=${FUZZ_SECONDS:-900}
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
nice -n 19 cargo +nightly fuzz build
for target in "${targets[@]}"; do
    # A private copy of the corpus, so that what the fuzzer adds does not land in git
    # until `cargo fuzz cmin` has minimised it.
    work=$(mktemp -d)
    cp corpus/"$target"/* "$work"/
    flags=(-runs="$runs" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    command="cargo +nightly fuzz run $target CORPUS_COPY -- ${flags[*]}"
    log=$(mktemp)
    status=0
    nice -n 19 cargo +nightly fuzz run "$target" "$work" -- "${flags[@]}" >"$log" 2>&1 || status=$?
    crashes=$(find artifacts/"$target" -type f 2>/dev/null | wc -l)
    {
        echo
        echo "### $target ($(date -u '+%Y-%m-%d %H:%M UTC'), exit $status, $crashes artifacts)"
        echo
        echo '```'
        echo "nice -n 19 $command"
        grep -E '^(Done|stat::|==[0-9]+==ERROR|SUMMARY|thread .* panicked|artifact_prefix|Test unit written)' "$log" || true
        echo '```'
    } | tee -a results.md
    if ((status == 0)); then
        nice -n 19 cargo +nightly fuzz cmin "$target" "$work" >>"$log" 2>&1
        # The named seeds stay as they are; cmin's copy of each (named by its SHA-1) goes.
        find corpus/"$target" -type f ! -name 'seed-*' -delete
        cp "$work"/* corpus/"$target"/
        for seed in corpus/"$target"/seed-*; do
            rm -f corpus/"$target"/"$(sha1sum "$seed" | cut -d' ' -f1)"
        done
        rm -rf "$work"
        echo "$target: corpus minimised to $(ls corpus/"$target" | wc -l) inputs, $(du -sh corpus/"$target" | cut -f1) (log $log)"
    else
        echo "$target: FAILED (exit $status); corpus left in $work, log $log, artifacts in fuzz/artifacts/$target"
    fi
done
