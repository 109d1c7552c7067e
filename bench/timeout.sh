#!/usr/bin/env bash
# Timing of a timeout and of a stop, over several rounds: how long past its `timeout` a
# timed-out push is answered (and what the journal says killed it and whether processes were
# left behind), and how long `serve` takes to exit after SIGTERM when idle.
#
#   term   `sleep 30`, timeout 1s, kill_grace 5s: the group dies of SIGTERM (answer ~ +0 s)
#   hasty  `sleep 3`, timeout 1s, kill_grace 500ms: the same, with a grace shorter than the
#          time PID 1 may take to reap the orphaned `sleep`
#   deaf   ignores SIGTERM, timeout 1s, kill_grace 1s: SIGKILL after the grace (answer ~ +1 s)
#
# The exit is timed as the parent sees it (`wait`). An observer that is not the parent and
# polls `kill -0` sees the exited process until it is reaped: when its parent is gone, that is
# PID 1's business, and an init that reaps late (some container runtimes' PID 1 do, every
# second or two) makes the exit look that much slower. Traffic to 127.0.0.1 only.
#
# Usage: bench/timeout.sh [rounds]          CMQHOOK=path/to/cmqhook to skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
command -v curl >/dev/null || { echo "needs curl (apt-get install curl)" >&2; exit 1; }
if [ -z "${CMQHOOK:-}" ]; then
    cargo build --release --locked -q --bin cmqhook
    CMQHOOK=$PWD/target/release/cmqhook
fi
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/hooks.toml" <<'TOML'
[server]
listen = "127.0.0.1:0"

[hooks.term]
path = "/term"
command = "sleep 30"
timeout = "1s"
kill_grace = "5s"

[hooks.hasty]
path = "/hasty"
command = "sleep 3"
timeout = "1s"
kill_grace = "500ms"

[hooks.deaf]
path = "/deaf"
command = 'trap "" TERM; while :; do sleep 0.1; done'
timeout = "1s"
kill_grace = "1s"
TOML

# serve [orphan] -> starts it, sets $pid and $addr; "orphan": from a shell that exits at once,
# so that its parent is PID 1 (or a subreaper), not this script
serve() {
    : > "$work/log"
    local run='RUST_LOG=cmqhook::service=info "$0" serve -c "$1" >/dev/null 2>"$2" & echo $!'
    if [ "${1:-}" = orphan ]; then
        pid=$(sh -c "$run" "$CMQHOOK" "$work/hooks.toml" "$work/log")
    else
        RUST_LOG=cmqhook::service=info "$CMQHOOK" serve -c "$work/hooks.toml" >/dev/null 2>"$work/log" &
        pid=$!
    fi
    echo "$pid" > "$work/pid"
    addr=
    for _ in $(seq 200); do
        addr=$(grep -ao 'listening on http://[0-9.:]*' "$work/log" | sed 's|.*http://||' || true)
        # Its signal handlers are in place once it says it listens.
        [ -n "$addr" ] && return
        sleep 0.05
    done
    echo "serve did not start" >&2; exit 1
}

seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'; }

# stop -> SIGTERM, then the seconds until the parent (this shell) has its exit status
stop() {
    local start
    start=$(date +%s.%N)
    kill -TERM "$pid"
    wait "$pid" || true
    seconds_since "$start"
    rm -f "$work/pid"
}

# stop_orphan -> SIGTERM to an orphaned serve, then the seconds until it has exited (a zombie),
# and until it is gone (reaped by PID 1), as `kill -0` sees it
stop_orphan() {
    local start exited
    start=$(date +%s.%N)
    kill -TERM "$pid"
    while [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || echo gone)" != Z ] &&
        [ -e "/proc/$pid" ]; do sleep 0.002; done
    exited=$(seconds_since "$start")
    while kill -0 "$pid" 2>/dev/null; do sleep 0.002; done
    echo "$exited / $(seconds_since "$start")"
    rm -f "$work/pid"
}

# push HOOK ROUND -> seconds the answer took, past `timeout` (1 s)
push() {
    curl -s -o /dev/null -w '%{time_total}' -X POST -H "x-cmq-message-id: $1-$2" \
        "http://$addr/$1" --data-binary x | awk '{ printf "%+.3f s", $1 - 1 }'
}

# journaled HOOK ROUND -> the signal that ended that run, and whether it left processes behind
journaled() {
    "$CMQHOOK" history -c "$work/hooks.toml" --json --hook "$1" --msg-id "$1-$2" |
        sed -E 's/.*"signal":([^,]*).*"left_behind":([^,]*).*/\1 \2/' |
        awk '{ printf "sig %-4s %s", $1, ($2 == "true" ? "left behind" : "") }'
}

echo "answer past the 1 s timeout; the signal journaled; serve's exit after SIGTERM, idle"
printf '%-5s | %-30s | %-30s | %-30s | %-8s | %s\n' round term hasty deaf exit \
    'exit orphaned: exited / gone to kill -0'
for round in $(seq "$rounds"); do
    serve
    line=$(printf '%-5s' "$round")
    for hook in term hasty deaf; do
        line+=$(printf ' | %-9s %-20s' "$(push "$hook" "$round")" "$(journaled "$hook" "$round")")
    done
    # Idle again: every run above has ended and been journaled.
    line+=$(printf ' | %-8s' "$(stop) s")
    serve orphan
    line+=" | $(stop_orphan) s"
    echo "$line"
done
