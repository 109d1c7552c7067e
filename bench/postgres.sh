#!/usr/bin/env bash
# The shared journal's cost: `/bin/true` pushes at concurrency 1, 8 and 64 with the journal on
# SQLite, on PostgreSQL (the same machine), and with two instances sharing that PostgreSQL
# database (each behind its own wrk, half the connections each; their throughputs are added).
# Measured in one run, round-robin over the setups, `reps` times; prints requests/s and p50
# for each, the ratios PostgreSQL / SQLite, and (for a local server) the PostgreSQL server's
# backends' CPU per push (those of the bench's database only). Traffic goes to 127.0.0.1 only.
#
# PostgreSQL fsyncs every commit by default (synchronous_commit = on); the SQLite journal does
# not (WAL, synchronous = NORMAL): a PostgreSQL commit survives power loss, a SQLite one a crash
# of the process.
#
# Usage: bench/postgres.sh [seconds-per-measurement] [repetitions]
#   CMQHOOK_TEST_POSTGRES   a database URL the bench may create databases with
#                           (default postgres://root@127.0.0.1:5432/test)
#   PG_OPTIONS              the journal URL's query (default sslmode=disable: the database is on
#                           this machine; sslmode=require measures TLS too)
#   CMQHOOK_BIN             the cmqhook binary to measure (default: target/release/cmqhook,
#                           built first)
#   PIN=1                   the database on a CPU of its own, as on a host of its own: every
#                           local postgres process (and the backends it forks later) on the
#                           last CPU, cmqhook, its commands and wrk on the others, for the
#                           SQLite setup too; the server's affinity is restored at the end
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
reps=${2:-3}
admin=${CMQHOOK_TEST_POSTGRES:-postgres://root@127.0.0.1:5432/test}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v psql >/dev/null || { echo "needs psql (apt-get install postgresql-client)" >&2; exit 1; }
if [ -n "${CMQHOOK_BIN:-}" ]; then
    bin=$(realpath "$CMQHOOK_BIN")
else
    cargo build --release --locked -q --bin cmqhook
    bin=$PWD/target/release/cmqhook
fi
work=$(mktemp -d)
db="cmqhook_bench_$$"
base=${admin%/*}
pin=${PIN:-0}
cpus=$(nproc)
[ "$pin" = 0 ] || [ "$cpus" -ge 2 ] || { echo "PIN=1 needs two CPUs" >&2; exit 1; }
postgres_pids() { pgrep -u postgres postgres 2>/dev/null || true; }
# affinity CPU_LIST PID... (threads included); a process gone meanwhile is skipped
affinity() { local list=$1; shift; for pid in "$@"; do taskset -a -pc "$list" "$pid" >/dev/null 2>&1 || true; done; }
cleanup() {
    [ "$pin" = 0 ] || affinity "0-$((cpus - 1))" $(postgres_pids)
    for pidfile in "$work"/*/pid; do
        [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
if [ "$pin" != 0 ]; then
    affinity "$((cpus - 1))" $(postgres_pids)
    affinity "0-$((cpus - 2))" $$
    echo "pinned: postgres on CPU $((cpus - 1)); cmqhook, its commands and wrk on 0-$((cpus - 2))"
fi
printf '{"TopicOwner":1,"topicName":"MyTopic","subscriptionName":"sub","msgId":"@ID@","msgBody":"test message","publishTime":1}' > "$work/push"

# start NAME JOURNAL [INSTANCE] -> $addr
start() {
    local name=$1 journal=$2 instance=${3:-$1}
    mkdir -p "$work/$name"
    cat > "$work/$name/hooks.toml" <<TOML
[server]
listen = "127.0.0.1:0"
journal = "$journal"
instance = "$instance"
[hooks.bench]
argv = ["/bin/true"]
TOML
    RUST_LOG=cmqhook::service=info "$bin" serve -c "$work/$name/hooks.toml" >/dev/null 2>"$work/$name/log" &
    echo $! > "$work/$name/pid"
    addr=
    for _ in $(seq 200); do
        addr=$(grep -ao 'listening on http://[0-9.:]*' "$work/$name/log" | sed 's|.*http://||' || true)
        [ -n "$addr" ] && break
        sleep 0.05
    done
    [ -n "$addr" ] || { echo "$name did not start:" >&2; cat "$work/$name/log" >&2; exit 1; }
    echo "$addr" > "$work/$name/addr"
}

# load ADDR CONNS RUN_ID -> "requests/s p50_ms"
load() {
    local addr=$1 conns=$2 threads
    threads=$(( conns < 2 ? 1 : 2 ))
    RUN_ID=$3 BODY_FILE=$work/push wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 20s \
        --latency -s bench/push.lua "http://$addr/" 2>&1 |
        awk '/Requests\/sec/ {rps = $2}
             /^ +50%/ {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000}
                       else if (v ~ /ms$/) {sub(/ms/, "", v)}
                       else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; p50 = v}
             END {printf "%.0f %.3f\n", rps, p50}'
}

# CPU ticks (1/100 s) of the local postgres backends serving the bench's database (not those
# of other databases on a shared server), children included; empty when the database runs
# elsewhere.
pg_ticks() {
    local pids
    [ -n "$(postgres_pids)" ] || return 0
    pids=$(psql "$admin" -Atc "SELECT pid FROM pg_stat_activity WHERE datname = '$db'")
    [ -n "$pids" ] || return 0
    for pid in $pids; do
        awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || true
    done | awk '{t += $1} END {print t}'
}
# own_ticks NAME: the instance's own CPU ticks (its commands not included)
own_ticks() { awk '{print $14 + $15}' "/proc/$(cat "$work/$1/pid")/stat"; }
# own_cpu NAME CONNS TICKS_BEFORE REQUESTS_PER_S: µs of the instance's own CPU a push, to $work/own-cpu
own_cpu() {
    echo "$1 $2 $(awk -v t0="$3" -v t1="$(own_ticks "$1")" -v rps="$4" -v secs="$secs" \
        'BEGIN {printf "%.0f", (t1 - t0) * 1e4 / (rps * secs)}')" >> "$work/own-cpu"
}
runs_in_db() { psql "$base/$db" -Atc "SELECT count(*) FROM cmqhook_runs"; }

start sqlite "$work/sqlite.db"
options=${PG_OPTIONS-sslmode=disable}
start pg "$base/$db?$options" pg
start pg-a "$base/$db?$options" pg-a
start pg-b "$base/$db?$options" pg-b
results=$work/results
: > "$results"
for rep in $(seq "$reps"); do
    for conns in 1 8 64; do
        own=$(own_ticks sqlite)
        line=$(load "$(cat "$work/sqlite/addr")" "$conns" "s$rep-$conns")
        echo "sqlite $conns $line" >> "$results"
        own_cpu sqlite "$conns" "$own" "${line%% *}"
        ticks=$(pg_ticks); before=$(runs_in_db); own=$(own_ticks pg)
        line=$(load "$(cat "$work/pg/addr")" "$conns" "p$rep-$conns")
        echo "pg $conns $line" >> "$results"
        ticks_after=$(pg_ticks); after=$(runs_in_db)
        own_cpu pg "$conns" "$own" "${line%% *}"
        if [ -n "$ticks" ] && [ "$after" -gt "$before" ]; then
            echo "$conns $(( (ticks_after - ticks) * 10000 / (after - before) ))" >> "$work/server-cpu"
        fi
        if [ "$conns" -gt 1 ]; then
            half=$(( conns / 2 ))
            load "$(cat "$work/pg-a/addr")" "$half" "a$rep-$conns" > "$work/a.out" &
            other=$!
            load "$(cat "$work/pg-b/addr")" "$half" "b$rep-$conns" > "$work/b.out"
            wait "$other"
            read -r ra pa < "$work/a.out"
            read -r rb pb < "$work/b.out"
            echo "pg-two $conns $((ra + rb)) $(awk -v a="$pa" -v b="$pb" 'BEGIN {printf "%.3f", (a + b) / 2}')" >> "$results"
        fi
    done
done
runs=$(psql "$base/$db" -Atc "SELECT count(*), count(DISTINCT (hook, msg_id)) FROM cmqhook_runs")
echo "PostgreSQL journal: $runs (runs, distinct messages: equal when nothing ran twice)"
echo
printf '%-8s %6s %28s %28s\n' setup conns "requests/s (min med max)" "p50 ms (min med max)"
for setup in sqlite pg pg-two; do
    for conns in 1 8 64; do
        awk -v s="$setup" -v c="$conns" '$1 == s && $2 == c {print $3, $4}' "$results" > "$work/one"
        [ -s "$work/one" ] || continue
        rps=$(cut -d' ' -f1 "$work/one" | sort -n | awk '{a[NR] = $1} END {printf "%d %d %d", a[1], a[int((NR + 1) / 2)], a[NR]}')
        p50=$(cut -d' ' -f2 "$work/one" | sort -n | awk '{a[NR] = $1} END {printf "%.2f %.2f %.2f", a[1], a[int((NR + 1) / 2)], a[NR]}')
        printf '%-8s %6s %28s %28s\n' "$setup" "$conns" "$rps" "$p50"
    done
done
echo
echo "cmqhook's own CPU a push (/proc/PID/stat, its commands not included), µs:"
for setup in sqlite pg; do
    for conns in 1 8 64; do
        awk -v s="$setup" -v c="$conns" '$1 == s && $2 == c {printf " %s", $3}' "$work/own-cpu" |
            sed "s/^/  $setup c$conns:/"
        echo
    done
done
if [ -s "$work/server-cpu" ]; then
    echo
    echo "PostgreSQL server CPU a push (the bench database's backends, /proc/PID/stat), µs:"
    for conns in 1 8 64; do
        awk -v c="$conns" '$1 == c {printf " %s", $2}' "$work/server-cpu" | sed "s/^/  c$conns:/"
        echo
    done
fi
echo
for conns in 1 8 64; do
    awk -v c="$conns" '$2 == c && $1 == "sqlite" {s[++n] = $3; sp[n] = $4}
                       $2 == c && $1 == "pg" {p[++m] = $3; pp[m] = $4}
                       END {for (i = 1; i <= n && i <= m; i++) {
                                printf "c%-3s round %d: pg/sqlite throughput %.2f, p50 %+.2f ms\n",
                                       c, i, p[i] / s[i], pp[i] - sp[i]}}' "$results"
done
