#!/usr/bin/env bash
# Instructions a push, counted, not timed: cmqhook (journal off and on) and the bare actix
# handler (bench/bare.rs; `bare-piped`: its `--piped` variant, which pipes and drains the
# command's stdout and stderr as cmqhook does) under valgrind's callgrind, fed `/bin/true` pushes by wrk at
# concurrency 2 for a few seconds. The same binary and inputs give the same count whatever
# else the machine does, so a change of a few percent shows where seconds would hide it.
# User space only (the kernel's share of a push is not counted) and the server only (its
# commands are not traced). A run with no push gives what starting and stopping cost; the
# figure is (total − that) / pushes. Then the functions with the most instructions a push,
# inclusive, for cmqhook with the journal off (and on PostgreSQL). Traffic to 127.0.0.1 only.
#
# `cmqhook-pg`: the journal on PostgreSQL, a database of its own created for the count (each
# of its two runs) and dropped after; counted only when SYSTEMS names it.
#
# Usage: bench/instructions.sh [seconds]
#   CMQHOOK_TEST_POSTGRES   for cmqhook-pg: a database URL that may create databases
#                           (default postgres://root@127.0.0.1:5432/test)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
secs=${1:-8}
for tool in wrk valgrind; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
cargo build --release --locked -q --bin cmqhook --example bare
# CMQHOOK_BIN: another cmqhook binary to count (an earlier build, say); SYSTEMS: which of
# cmqhook-off, cmqhook-on, cmqhook-pg, bare and bare-piped to count (all but cmqhook-pg by
# default)
bin=${CMQHOOK_BIN:-target/release/cmqhook}
work=$(mktemp -d)
admin=${CMQHOOK_TEST_POSTGRES:-postgres://root@127.0.0.1:5432/test}
db="cmqhook_instructions_$$"
drop_db() { psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"; [[ " ${SYSTEMS:-} " != *" cmqhook-pg "* ]] || drop_db' EXIT
printf '%s' '{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"@ID@","msgBody":"test message","publishTime":11203432}' > "$work/push"

# count NAME PUSHES? -> "instructions pushes" of one traced server, fed for $secs s or not at all
count() {
    local name=$1 feed=$2 out=$work/$1-$2 pid n=0
    case $name in
        bare|bare-piped)
            valgrind --tool=callgrind --callgrind-out-file="$out.cg" target/release/examples/bare \
                $([ "$name" = bare-piped ] && echo --piped) 127.0.0.1:0 /bin/true >/dev/null 2>"$out.log" & ;;
        *) case $name in
               cmqhook-on) journal=$out.db ;;
               # A fresh database each run, as the bench's journal starts empty.
               cmqhook-pg) drop_db
                           psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
                           journal="${admin%/*}/$db?sslmode=disable" ;;
               *) journal=off ;;
           esac
           printf '[server]\nlisten = "127.0.0.1:0"\njournal = "%s"\n[hooks.bench]\nargv = ["/bin/true"]\n' \
               "$journal" > "$out.toml"
           RUST_LOG=cmqhook::service=info valgrind --tool=callgrind --callgrind-out-file="$out.cg" \
               "$bin" serve -c "$out.toml" >/dev/null 2>"$out.log" & ;;
    esac
    pid=$!
    echo "$pid" > "$work/$name.pid"
    addr=$(listening_addr "$out.log") || exit 1
    if [ "$feed" = fed ]; then
        n=$(RUN_ID="$name" HOOK_PATH=/ BODY_FILE="$work/push" \
            wrk -t1 -c2 -d"${secs}s" -s bench/push.lua "http://$addr/" | awk '/requests in/ {print $1}')
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$work/$name.pid"
    echo "$(callgrind_annotate "$out.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}') $n"
}

echo "instructions a push (user space, the server's own), wrk -c2 for ${secs} s under callgrind"
for name in ${SYSTEMS:-cmqhook-off cmqhook-on bare bare-piped}; do
    read -r base _ < <(count "$name" idle)
    read -r total pushes < <(count "$name" fed)
    awk -v name="$name" -v base="$base" -v total="$total" -v n="$pushes" 'BEGIN {
        printf "%-12s %8.0f a push  (%d pushes; %.1f M to start and stop)\n", name, (total - base) / n, n, base / 1e6 }'
    echo "$pushes" > "$work/$name.pushes"
done
# KEEP=DIR: keep the callgrind files (NAME-fed.cg, NAME-idle.cg) there, for callgrind_annotate
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$work"/*.cg "$KEEP"/
for name in cmqhook-off cmqhook-on cmqhook-pg; do
    [ -f "$work/$name.pushes" ] || continue
    echo
    echo "$name: instructions a push, inclusive, in its own code, the runner's spawn, malloc and"
    echo "free, and actix's HTTP/1 dispatcher (startup included, spread over the pushes):"
    callgrind_annotate --inclusive=yes "$work/$name-fed.cg" 2>/dev/null |
        grep -E '(cmqhook::|std::process|CStringArray|BTreeMap|/malloc.c:(malloc|free) |actix_http::h1::dispatcher::InnerDispatcher)' |
        head -25 |
        awk -v n="$(cat "$work/$name.pushes")" '{c = $1; gsub(",", "", c); sub(/^ *[0-9,]+ +\([ 0-9.]+%\) +/, ""); sub(/ \[.*$/, "")
                                                printf "%8.0f  %s\n", c / n, substr($0, 1, 110)}'
done
