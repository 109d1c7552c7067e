#!/usr/bin/env bash
# cmqhook at an earlier revision against the working tree's, in one run: the same pushes
# (`/bin/true` and `cat` fed the CMQ example push, journal on SQLite) at concurrency 1, 8 and
# 64, the two builds alternating within each round, so that a regression budget ("throughput
# within the noise, p50 at most +0.15 ms") is judged on figures the machine's state moved alike.
# The revision is built in a git worktree under target/ab/REV, with the working tree's target
# directory (its dependencies are built once), and its binary kept as target/ab/REV.cmqhook:
# later runs against the same revision build only the working tree. Traffic to 127.0.0.1 only.
#
# Usage: bench/ab.sh REV [seconds] [rounds]
#   WORKLOADS (default "true cat") and CONNS (default "1 8 64") narrow the run, e.g. to look
#   again at one figure that moved
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rev=$(git rev-parse --short "${1:?usage: bench/ab.sh REV [seconds] [rounds]}")
secs=${2:-3}
rounds=${3:-3}
ab_setup "$rev"

# serve NAME WORKLOAD -> sets $pid and $addr
serve() {
    local hook
    rm -rf "${work:?}/$1"; mkdir -p "$work/$1"
    hook=$([ "$2" = true ] && echo 'argv = ["/bin/true"]' || echo "command = 'cat >/dev/null'")
    printf '[server]\nlisten = "127.0.0.1:0"\njournal = "%s"\nmax_body = "1 MiB"\n[hooks.bench]\n%s\n' \
        "$work/$1/cmqhook.db" "$hook" > "$work/$1/hooks.toml"
    RUST_LOG=cmqhook::service=info "${bins[$1]}" serve -c "$work/$1/hooks.toml" >/dev/null 2>"$work/$1/log" &
    pid=$!
    echo "$pid" > "$work/$1/pid"
    addr=$(listening_addr "$work/$1/log") || exit 1
}

to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v !~ /ms$/ && v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

ticks() { run_time_us "$1"; } # the server's own CPU, µs (its threads' run time: bench/lib.sh)

# measure NAME WORKLOAD CONNS ROUND -> "NAME WORKLOAD CONNS rps p50 own-µs-a-push"
measure() {
    local out threads
    serve "$1" "$2"
    threads=$(( $3 < 2 ? 1 : 2 ))
    ticks0=$(ticks "$pid")
    out=$(RUN_ID="$1-$2-$3-$4" HOOK_PATH=/ BODY_FILE="$work/push-$2" \
        wrk -t"$threads" -c"$3" -d"${secs}s" --timeout 20s --latency -s bench/push.lua "http://$addr/")
    ticks1=$(ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$work/$1/pid"
    if grep -qE "Non-2xx|Socket errors" <<<"$out"; then echo "errors:" >&2; echo "$out" >&2; exit 1; fi
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    echo "$1 $2 $3 $(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")" \
        "$(( (ticks1 - ticks0) / n ))"
}

echo "before = $rev, after = the working tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo ', modified'))"
for round in $(seq "$rounds"); do
    for workload in ${WORKLOADS:-true cat}; do
        for conns in ${CONNS:-1 8 64}; do
            # Which build goes first alternates, so neither always meets a warmer machine.
            if (( round % 2 )); then order="before after"; else order="after before"; fi
            for name in $order; do measure "$name" "$workload" "$conns" "$round"; done
        done
    done
done | tee "$work/lines"
echo
echo "after / before, each round side by side (throughput ratio; p50 after − before, ms;"
echo "the server's own CPU a push after / before)"
awk '{ key = $2 " c" $3; i = ++n[key, $1]; rps[key, $1, i] = $4; p50[key, $1, i] = $5; own[key, $1, i] = $6
       keys[key] = 1 }
END {
    for (key in keys) {
        line = sprintf("%-10s", key)
        for (i = 1; i <= n[key, "after"]; i++)
            line = line sprintf("  %.2f (%+.2f; %.2f)", rps[key, "after", i] / rps[key, "before", i],
                                p50[key, "after", i] - p50[key, "before", i],
                                own[key, "after", i] / own[key, "before", i])
        print line
    }
}' "$work/lines" | sort
