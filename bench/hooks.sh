#!/usr/bin/env bash
# Idle RSS with many hooks: a config of N hooks (default 10,000), each with a path, so that
# routing, slots and the per-hook metric series (SPEC §7: at 0 from start) all exist; RSS is
# read once `serve` listens, and again after /metrics has been rendered once. Prints the figure for 1 hook
# beside it, so the cost per hook is a difference measured in one run.
#
# Usage: bench/hooks.sh [N]          CMQHOOK=path/to/cmqhook to skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
hooks=${1:-10000}
command -v curl >/dev/null || { echo "needs curl (apt-get install curl)" >&2; exit 1; }
if [ -z "${CMQHOOK:-}" ]; then
    cargo build --release --locked -q --bin cmqhook
    CMQHOOK=$PWD/target/release/cmqhook
fi
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

# Idle RSS (KiB) and /metrics size (bytes) of serve on a config of $1 hooks.
measure() {
    {
        printf '[server]\nlisten = "127.0.0.1:0"\njournal = "off"\n'
        for i in $(seq 1 "$1"); do
            printf '[hooks.h%d]\npath = "/h%d"\nargv = ["true"]\n' "$i" "$i"
        done
    } > "$work/hooks.toml"
    : > "$work/log"
    "$CMQHOOK" serve -c "$work/hooks.toml" >/dev/null 2>"$work/log" &
    echo $! > "$work/pid"
    local pid addr=
    pid=$(cat "$work/pid")
    for _ in $(seq 600); do
        addr=$(grep -ao 'listening on http://[0-9.:]*' "$work/log" | sed 's|.*http://||' || true)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "serve did not start:" >&2; cat "$work/log" >&2; exit 1; }
    local size idle
    idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    size=$(curl -s "http://$addr/metrics" | wc -c)
    echo "$idle $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") $size"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

read -r one one_scraped one_metrics < <(measure 1)
read -r many many_scraped many_metrics < <(measure "$hooks")
printf '%-8s %14s %22s %16s\n' hooks "idle RSS KiB" "after a scrape KiB" "/metrics bytes"
printf '%-8s %14s %22s %16s\n' 1 "$one" "$one_scraped" "$one_metrics"
printf '%-8s %14s %22s %16s\n' "$hooks" "$many" "$many_scraped" "$many_metrics"
awk -v a="$one" -v b="$many" -v c="$one_scraped" -v d="$many_scraped" -v n="$hooks" \
    'BEGIN { printf "per hook: %.2f KiB idle, %.2f KiB after a scrape\n", (b - a) / (n - 1), (d - c) / (n - 1) }'
