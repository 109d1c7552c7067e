#!/usr/bin/env bash
# cmqhook's memory at an earlier revision against the working tree's, the two builds alternating
# within each round, for issue 25's "memory no worse": idle; 1,000 pushes held open on a
# `sleep 5` hook; 64 KiB pushes to `cat` at concurrency 64 (SQLite journal). Each is read as
# anonymous memory (RssAnon: heap, stacks, the binary's relocated data) and file-backed memory
# (RssFile: mostly the binary's resident pages) apart, so that more memory a run is told from a
# larger binary. The held figure is read once 3 s in, when every one of the 1,000 runs has
# started and none has ended (the server's children then are printed beside it: the 1,000
# commands and cmqhook's guard), and as the peak of samples every 0.1 s; VmHWM is the kernel's
# peak of both. The revision is built as bench/ab.sh builds it (target/ab/REV.cmqhook).
# Traffic to 127.0.0.1 only.
#
# Usage: bench/ab_memory.sh REV [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rev=$(git rev-parse --short "${1:?usage: bench/ab_memory.sh REV [rounds]}")
rounds=${2:-3}
ab_setup "$rev"

# serve NAME HOOK [SERVER] -> sets $pid and $addr; 1,024 open files to start with, as run.sh
serve() {
    rm -rf "${work:?}/$1"; mkdir -p "$work/$1"
    printf '[server]\nlisten = "127.0.0.1:0"\njournal = "%s"\n%s\n[hooks.bench]\n%s\n' \
        "$work/$1/cmqhook.db" "${3:-}" "$2" > "$work/$1/hooks.toml"
    (ulimit -Sn 1024; RUST_LOG=cmqhook::service=info exec "${bins[$1]}" serve -c "$work/$1/hooks.toml" \
        >/dev/null 2>"$work/$1/log") &
    pid=$!
    echo "$pid" > "$work/$1/pid"
    addr=$(listening_addr "$work/$1/log") || exit 1
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$work/$1/pid"; }

# load NAME CONNS SECONDS BODY -> starts wrk in the background, sets $load
load() {
    RUN_ID="$1-$RANDOM" HOOK_PATH=/ BODY_FILE="$work/push-$4" \
        wrk -t2 -c"$2" -d"$3s" --timeout 14s -s bench/push.lua "http://$addr/" >"$work/$1/wrk" 2>&1 &
    load=$!
}

# peak_anon -> samples RssAnon every 0.1 s while wrk runs; prints the largest, and RssFile then
peak_anon() {
    local max=0 file=0 anon f
    while kill -0 "$load" 2>/dev/null; do
        read -r anon f < <(status_kib "$pid" RssAnon RssFile)
        if [ "$anon" -gt "$max" ]; then max=$anon; file=$f; fi
        sleep 0.1
    done
    echo "$max $file"
}

# measure NAME -> "NAME figure anon file" lines
measure() {
    serve "$1" 'argv = ["/bin/true"]'
    sleep 1
    echo "$1 idle $(status_kib "$pid" RssAnon RssFile)"
    stop "$1"

    serve "$1" "$(printf 'command = "sleep 5"\nconcurrency = 0')" \
        "$(printf 'max_running = 1024\nrespond_within = "14s"')"
    load "$1" 1000 6 true
    sleep 3
    local running
    running=$(ps --ppid "$pid" -o stat= | grep -vc Z || true)
    echo "$1 held-at-3s $(status_kib "$pid" RssAnon RssFile) children $running"
    echo "$1 held-peak $(peak_anon)"
    wait "$load" || true
    echo "$1 held-hwm $(status_kib "$pid" VmHWM) 0"
    stop "$1"

    serve "$1" "command = 'cat >/dev/null'"
    load "$1" 64 5 cat
    echo "$1 cat-c64-peak $(peak_anon)"
    wait "$load" || true
    echo "$1 cat-c64-hwm $(status_kib "$pid" VmHWM) 0"
    stop "$1"
}

echo "before = $rev, after = the working tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo ', modified'))"
for round in $(seq "$rounds"); do
    if (( round % 2 )); then order="before after"; else order="after before"; fi
    for name in $order; do measure "$name"; done
done | tee "$work/lines"
echo
echo "KiB, the range over $rounds rounds: anonymous (file-backed); VmHWM is both"
awk '{ key = $2; v = $3; f = $4
       if (!((key, $1) in lo) || v < lo[key, $1]) lo[key, $1] = v
       if (!((key, $1) in hi) || v > hi[key, $1]) hi[key, $1] = v
       if (!((key, $1) in flo) || f < flo[key, $1]) flo[key, $1] = f
       if (!((key, $1) in fhi) || f > fhi[key, $1]) fhi[key, $1] = f
       if (!(key in seen)) { seen[key] = 1; order[++n] = key } }
END {
    printf "%-14s %-28s %-28s\n", "", "before", "after"
    for (i = 1; i <= n; i++) {
        k = order[i]
        b = sprintf("%d–%d", lo[k, "before"], hi[k, "before"])
        a = sprintf("%d–%d", lo[k, "after"], hi[k, "after"])
        if (k !~ /hwm/) {
            b = b sprintf(" (%d–%d)", flo[k, "before"], fhi[k, "before"])
            a = a sprintf(" (%d–%d)", flo[k, "after"], fhi[k, "after"])
        }
        printf "%-14s %-28s %-28s\n", k, b, a
    }
}' "$work/lines"
