#!/usr/bin/env bash
# CPU a push, by whom: the server's own, its children's, and wrk's, for cmqhook with the journal
# on and off and for the bare actix handler (bench/bare.rs; `bare-piped`: its `--piped` variant,
# which pipes and drains the command's stdout and stderr as cmqhook does), against the ceiling's own CPU a run
# (bench/ceiling.rs). `argv = ["/bin/true"]` fed the CMQ example push; the systems alternate,
# `rounds` times. Own: the threads' run time (/proc/PID/task/*/schedstat); children: cutime +
# cstime of /proc/PID/stat.
# Traffic to 127.0.0.1 only.
#
# Usage: bench/cpu.sh [connections] [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
conns=${1:-8}
secs=${2:-3}
rounds=${3:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --locked -q --bin cmqhook --example ceiling --example bare
bin=$PWD/target/release/cmqhook
work=$(mktemp -d)
trap 'kill $(cat "$work"/*/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
printf '%s' '{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"@ID@","msgBody":"test message","publishTime":11203432}' > "$work/push"
printf '%s' 'test message' > "$work/message"
# own (µs, the threads' run time: bench/lib.sh), children (1/100 s, /proc/PID/stat)
ticks() { echo "$(run_time_us "$1") $(awk '{print $16 + $17}' "/proc/$1/stat")"; }

# serve NAME -> starts it (cmqhook-on, cmqhook-off, bare or bare-piped), sets $pid and $addr
serve() {
    mkdir -p "$work/$1"
    case $1 in
        bare) "$PWD/target/release/examples/bare" 127.0.0.1:0 /bin/true >/dev/null 2>"$work/$1/log" & ;;
        bare-piped) "$PWD/target/release/examples/bare" --piped 127.0.0.1:0 /bin/true >/dev/null 2>"$work/$1/log" & ;;
        *) journal=$([ "$1" = cmqhook-on ] && echo cmqhook.db || echo off)
           printf '[server]\nlisten = "127.0.0.1:0"\njournal = "%s"\n[hooks.bench]\nargv = ["/bin/true"]\n' \
               "$journal" > "$work/$1/hooks.toml"
           RUST_LOG=cmqhook::service=info "$bin" serve -c "$work/$1/hooks.toml" >/dev/null 2>"$work/$1/log" & ;;
    esac
    pid=$!
    echo "$pid" > "$work/$1/pid"
    addr=$(listening_addr "$work/$1/log") || exit 1
}

# measure NAME ROUND -> one line of figures
measure() {
    serve "$1"
    local own0 kids0 own1 kids1 out n wrk_cpu
    read -r own0 kids0 < <(ticks "$pid")
    out=$(RUN_ID="$1-$2" HOOK_PATH=/ BODY_FILE="$work/push" /usr/bin/time -f "WRKCPU %U %S" \
        wrk -t2 -c"$conns" -d"${secs}s" -s bench/push.lua "http://$addr/" 2>&1)
    read -r own1 kids1 < <(ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$work/$1/pid"
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    wrk_cpu=$(awk '/WRKCPU/ {print ($2 + $3) * 1e6}' <<<"$out")
    awk -v name="$1" -v n="$n" -v own=$((own1 - own0)) -v kids=$((kids1 - kids0)) -v wrk="$wrk_cpu" \
        -v rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" 'BEGIN {
        printf "%-12s %8.0f pushes/s  own %4.0f us  children %4.0f us  wrk %3.0f us  a push\n",
            name, rps, own / n, kids * 1e4 / n, wrk / n }'
}

/usr/bin/time -V >/dev/null 2>&1 || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
for round in $(seq "$rounds"); do
    for system in cmqhook-on cmqhook-off bare bare-piped; do measure "$system" "$round"; done
    "$PWD/target/release/examples/ceiling" "$conns" "$secs" "$work/message" /bin/true |
        sed -E 's/.*rps=([^ ]+).*own_cpu_us_per_run=([^ ]+).*/ceiling      \1 runs\/s  own \2 us a run/'
done
