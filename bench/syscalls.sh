#!/usr/bin/env bash
# System calls a push, counted (perf's syscall tracepoints), not timed: cmqhook's server
# process (its own threads, not its commands) and its guard (`cmqhook __guard`, a process of
# its own), with the journal on (`JOURNAL=off` for off), while wrk sends `argv = ["/bin/true"]`
# pushes at `connections`. Counts do not depend on how busy the machine is, so two builds
# compare on a shared machine where their CPU time would not; `BINS` gives the builds (the
# working tree's release build by default), measured one after the other in each round.
# Needs perf (Debian's linux-perf) with syscall tracepoints. Traffic to 127.0.0.1 only.
#
# Usage: [BINS="NAME=PATH ..."] [JOURNAL=off] bench/syscalls.sh [connections] [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
conns=${1:-8}
secs=${2:-3}
rounds=${3:-1}
for tool in perf wrk; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
if [ -z "${BINS:-}" ]; then
    cargo build --release --locked -q --bin cmqhook
    BINS="tree=$PWD/target/release/cmqhook"
fi
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
printf '%s' '{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"@ID@","msgBody":"test message","publishTime":11203432}' > "$work/push"
threads=$(( conns < 2 ? 1 : 2 ))

# measure NAME BIN ROUND -> "NAME process calls-a-push syscall..." lines
measure() {
    local name=$1 bin=$2 dir=$work/$1-$3 pid guard n
    mkdir -p "$dir"
    printf '[server]\nlisten = "127.0.0.1:0"\njournal = "%s"\n[hooks.bench]\nargv = ["/bin/true"]\n' \
        "$([ "${JOURNAL:-on}" = off ] && echo off || echo "$dir/cmqhook.db")" > "$dir/hooks.toml"
    RUST_LOG=cmqhook::service=info "$bin" serve -c "$dir/hooks.toml" >/dev/null 2>"$dir/log" &
    pid=$!
    echo "$pid" > "$work/server.pid"
    addr=$(listening_addr "$dir/log") || exit 1
    guard=$(pgrep -P "$pid" -f __guard | head -1 || true)
    # Each process's own threads only (--no-inherit): not the commands it starts.
    perf stat --no-inherit -x, -e 'syscalls:sys_enter_*' -e context-switches -p "$pid" \
        -o "$dir/server.stat" 2>/dev/null &
    echo $! > "$work/perf-server.pid"
    if [ -n "$guard" ]; then
        perf stat --no-inherit -x, -e 'syscalls:sys_enter_*' -e context-switches -p "$guard" \
            -o "$dir/guard.stat" 2>/dev/null &
        echo $! > "$work/perf-guard.pid"
    fi
    sleep 0.5
    n=$(RUN_ID="$name-$3" HOOK_PATH=/ BODY_FILE="$work/push" \
        wrk -t"$threads" -c"$conns" -d"${secs}s" -s bench/push.lua "http://$addr/" | awk '/requests in/ {print $1}')
    for perf_pid in "$work"/perf-*.pid; do kill -INT "$(cat "$perf_pid")"; wait "$(cat "$perf_pid")" || true; rm -f "$perf_pid"; done
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$work/server.pid"
    for process in server guard; do
        [ -f "$dir/$process.stat" ] || continue
        awk -F, -v name="$name" -v process="$process" -v n="$n" '
            $1 ~ /^[0-9]+$/ && $1 > 0 { sub(/^syscalls:sys_enter_/, "", $3); total += ($3 == "context-switches") ? 0 : $1
                                        printf "%s %s %.3f %s\n", name, process, $1 / n, $3 }
            END { printf "%s %s %.3f ALL-SYSCALLS\n", name, process, total / n }' "$dir/$process.stat"
    done
}

for round in $(seq "$rounds"); do
    for entry in $BINS; do measure "${entry%%=*}" "${entry#*=}" "$round"; done
done > "$work/lines"
echo "system calls a push (wrk -c$conns, ${secs} s, $rounds round(s); journal ${JOURNAL:-on}), mean over rounds"
names=$(for entry in $BINS; do printf '%s ' "${entry%%=*}"; done)
awk -v names="$names" '
    { key = $2 " " $4; sum[key, $1] += $3; count[key, $1]++; keys[key] = 1 }
    END {
        n = split(names, name, " ")
        header = sprintf("%-36s", "process syscall")
        for (i = 1; i <= n; i++) header = header sprintf(" %10s", name[i])
        print header
        for (key in keys) {
            line = sprintf("%-36s", key)
            for (i = 1; i <= n; i++)
                line = line sprintf(" %10.3f", count[key, name[i]] ? sum[key, name[i]] / count[key, name[i]] : 0)
            print line
        }
    }' "$work/lines" | { read -r header; echo "$header"; sort; }
