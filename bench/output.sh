#!/usr/bin/env bash
# A chatty command through `serve` against the same command piped to `cat >/dev/null` (issue
# 25, SPEC §4: draining never waits on logging, a command printing fast runs at the speed of
# its pipe; target <= 2x). Three outputs:
#
#   lines      300 MB of short lines   (yes 'hello world line' | head -c 300000000)
#   nonewline  300 MB without a newline (head -c 300000000 /dev/zero | tr '\0' x)
#   ansi       10 MB of ANSI-coloured lines
#
# `serve` runs with the defaults that matter here (SQLite journal, log_output = 1000,
# keep_output = 64 KiB), its log to a file; the push is timed by curl, from request to answer.
# The pipe is timed as `sh -c CMD | cat >/dev/null`. Prints, per round and output, both times
# and their ratio, then the median ratio per output. Traffic to 127.0.0.1 only.
#
# Usage: bench/output.sh [rounds]          CMQHOOK=path/to/cmqhook to skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-3}
command -v curl >/dev/null || { echo "needs curl (apt-get install curl)" >&2; exit 1; }
if [ -z "${CMQHOOK:-}" ]; then
    cargo build --release --locked -q --bin cmqhook
    CMQHOOK=$PWD/target/release/cmqhook
fi
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

declare -A commands=(
    [lines]="yes 'hello world line' | head -c 300000000"
    [nonewline]="head -c 300000000 /dev/zero | tr '\\0' x"
    [ansi]="yes '\033[1;32mok\033[0m step \033[33m42\033[0m of the build: \033[4mdone\033[0m' | head -c 10000000"
)
names=(lines nonewline ansi)

{
    printf '[server]\nlisten = "127.0.0.1:0"\nrespond_within = "300s"\njournal = "%s/journal.db"\n' "$work"
    for name in "${names[@]}"; do
        # A TOML literal string: the command as the shell gets it.
        printf "\n[hooks.%s]\npath = \"/%s\"\ncommand = '''%s'''\ntimeout = \"10m\"\n" \
            "$name" "$name" "${commands[$name]}"
    done
} > "$work/hooks.toml"

"$CMQHOOK" serve -c "$work/hooks.toml" >/dev/null 2>"$work/log" &
echo $! > "$work/pid"
addr=$(listening_addr "$work/log")

seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

declare -A ratios
for round in $(seq "$rounds"); do
    for name in "${names[@]}"; do
        start=$(date +%s.%N)
        sh -c "${commands[$name]}" | cat >/dev/null
        pipe=$(seconds "$start" "$(date +%s.%N)")
        read -r status serve < <(curl -s -o "$work/answer" -w '%{http_code} %{time_total}\n' \
            -X POST -H "x-cmq-message-id: $name-$round" --data x "http://$addr/$name")
        [ "$status" = 200 ] || { echo "$name: answered $status: $(cat "$work/answer")" >&2; exit 1; }
        ratio=$(awk -v s="$serve" -v p="$pipe" 'BEGIN { printf "%.2f", s / p }')
        ratios[$name]="${ratios[$name]:-} $ratio"
        printf 'round %d %-9s pipe %6.3f s  serve %6.3f s  ratio %sx\n' "$round" "$name" "$pipe" "$serve" "$ratio"
    done
done
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    median=$(printf '%s\n' ${ratios[$name]} | sort -n | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')
    printf '%-9s median serve/pipe %sx over %d rounds (target <= 2x)\n' "$name" "$median" "$rounds"
done
