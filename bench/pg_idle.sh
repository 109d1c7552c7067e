#!/usr/bin/env bash
# What an idle fleet costs the PostgreSQL server: every `serve` on a shared database renews its
# leases every lease/3, looks for replay requests four times a second and, with a stored hook,
# for due stored work (and counts the waiting work) twice a second. Starts N instances (1, then
# 4) with one `ack = "stored"` hook on a fresh database, lets them idle, and prints the local
# PostgreSQL server's CPU (all its processes, from /proc) and the instances' own CPU, per
# instance and second. Traffic to 127.0.0.1 only.
#
# Usage: bench/pg_idle.sh [seconds] [rounds]
#   CMQHOOK_TEST_POSTGRES   a database URL the bench may create databases with
#                           (default postgres://root@127.0.0.1:5432/test)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
admin=${CMQHOOK_TEST_POSTGRES:-postgres://root@127.0.0.1:5432/test}
command -v psql >/dev/null || { echo "needs psql (apt-get install postgresql-client)" >&2; exit 1; }
pgrep -u postgres postgres >/dev/null || { echo "needs a local PostgreSQL server" >&2; exit 1; }
cargo build --release --locked -q --bin cmqhook
bin=$PWD/target/release/cmqhook
work=$(mktemp -d)
db="cmqhook_idle_$$"
base=${admin%/*}
cleanup() {
    for pidfile in "$work"/*/pid; do
        [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 0.5
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
psql "$admin" -qc "CREATE DATABASE $db" >/dev/null

# start NAME -> an instance on the database, listening
start() {
    local name=$1
    mkdir -p "$work/$name"
    cat > "$work/$name/hooks.toml" <<TOML
[server]
listen = "127.0.0.1:0"
journal = "$base/$db?sslmode=disable"
instance = "$name"
[hooks.job]
ack = "stored"
argv = ["/bin/true"]
TOML
    RUST_LOG=cmqhook::service=info "$bin" serve -c "$work/$name/hooks.toml" >/dev/null 2>"$work/$name/log" &
    echo $! > "$work/$name/pid"
    for _ in $(seq 200); do
        grep -qs 'listening on' "$work/$name/log" && return 0
        sleep 0.05
    done
    echo "$name did not start:" >&2; cat "$work/$name/log" >&2; exit 1
}

# CPU ticks (1/100 s) of every local postgres process, children included.
pg_ticks() {
    for pid in $(pgrep -u postgres postgres); do
        awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || true
    done | awk '{t += $1} END {print t + 0}'
}
# Transactions committed in the bench's database so far (every statement outside a
# transaction is one): the polling's count, whatever else the server is doing.
xacts() {
    psql "$admin" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'"
}
# CPU ticks of the instances started so far.
own_ticks() {
    for pidfile in "$work"/*/pid; do
        awk '{print $14 + $15}' "/proc/$(cat "$pidfile")/stat" 2>/dev/null || true
    done | awk '{t += $1} END {print t + 0}'
}

echo "idle fleet, one stored hook, ${secs} s a measurement, $rounds rounds"
echo "(the server's CPU counts every client of the server: run it on a quiet one)"
printf '%-10s %-6s %22s %22s %22s\n' instances round "statements/s/instance" "server CPU ms/s/inst" "cmqhook CPU ms/s/inst"
started=0
for n in 1 4; do
    while [ "$started" -lt "$n" ]; do
        started=$((started + 1))
        start "i$started"
    done
    sleep 2 # past the start: migrations, first renewals
    for round in $(seq "$rounds"); do
        pg=$(pg_ticks); own=$(own_ticks); tx=$(xacts)
        sleep "$secs"
        pg_after=$(pg_ticks); own_after=$(own_ticks); tx_after=$(xacts)
        awk -v n="$n" -v r="$round" -v s="$secs" -v pg=$((pg_after - pg)) -v own=$((own_after - own)) \
            -v tx=$((tx_after - tx)) \
            'BEGIN {printf "%-10d %-6d %22.1f %22.2f %22.2f\n", n, r, tx / s / n, pg * 10 / s / n, own * 10 / s / n}'
    done
done
