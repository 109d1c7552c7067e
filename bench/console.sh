#!/usr/bin/env bash
# The console with a full journal (issue 24): N runs (default 10,000) over the last 24 hours,
# in 8 hooks, one in ten failed, written into a SQLite journal that `serve` created; then the
# overview, a deliveries page and their API twins are loaded in a loop (ROUNDS, default 50).
# Prints each page's median and worst answer time, and serve's RSS before and after the loop
# (and its peak). The target: every page under 100 ms, RSS flat.
#
# Usage: bench/console.sh [N] [ROUNDS]     CMQHOOK=path/to/cmqhook to skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000}
rounds=${2:-50}
for tool in curl sqlite3; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
if [ -z "${CMQHOOK:-}" ]; then
    cargo build --release --locked -q --bin cmqhook
    CMQHOOK=$PWD/target/release/cmqhook
fi
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/hooks.toml" <<EOF
[server]
listen = "127.0.0.1:0"
journal = "$work/journal.db"

[console]
listen = "127.0.0.1:0"

[hooks.h0]
argv = ["true"]
EOF

# Starts serve; prints the console's address once it listens.
start() {
    : > "$work/log"
    "$CMQHOOK" serve -c "$work/hooks.toml" >/dev/null 2>"$work/log" &
    echo $! > "$work/pid"
    local addr=
    for _ in $(seq 600); do
        addr=$(grep -ao 'console on http://[0-9.:]*' "$work/log" | sed 's|.*http://||' || true)
        grep -q 'listening on http://' "$work/log" && [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "serve did not start:" >&2; cat "$work/log" >&2; exit 1; }
    echo "$addr"
}
stop() {
    kill "$(cat "$work/pid")"
    wait "$(cat "$work/pid")" 2>/dev/null || true
}

start >/dev/null
stop
# Newest run, highest id; started over the last 24 hours (less a minute).
sqlite3 "$work/journal.db" <<EOF
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $runs)
INSERT INTO runs (started_at, hook, msg_id, request_id, path, attempt, outcome, exit_code,
                  duration_ms, stdout_tail, stderr_tail)
SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || (($runs - i) * 86340 / $runs + 60) || ' seconds'),
       'h' || (i % 8), 'm' || i, 'r' || i, '/', 1,
       CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END,
       (i * 37) % 3000, printf('%.200c', 'x'), 'step ' || i || char(10) || 'ERROR: upstream answered 503'
FROM n;
EOF
addr=$(start)
pid=$(cat "$work/pid")
rss() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status"; }
before=$(rss VmRSS)
printf '%-28s %10s %10s\n' "page ($runs runs)" "median ms" "worst ms"
for path in / /runs /api/hooks '/api/runs' '/runs?hook=h3&outcome=failed'; do
    for _ in $(seq "$rounds"); do
        curl -s -o /dev/null -w '%{time_total}\n' "http://$addr$path"
    done | sort -n | awk -v p="$path" '{ t[NR] = $1 * 1000 }
        END { printf "%-28s %10.1f %10.1f\n", p, t[int((NR + 1) / 2)], t[NR] }'
done
echo "RSS: $before KiB before the loop, $(rss VmRSS) KiB after, peak $(rss VmHWM) KiB"
