# Shared by the bench scripts: source it.

# listening_addr LOG -> prints the address of the "listening on http://ADDR" line of LOG once a
# server wrote it (within 10 s); prints the log and fails if it never does.
listening_addr() {
    local addr
    for _ in $(seq 200); do
        addr=$(grep -ao 'listening on http://[0-9.:]*' "$1" 2>/dev/null | sed 's|.*http://||' || true)
        [ -n "$addr" ] && { echo "$addr"; return; }
        sleep 0.05
    done
    echo "the server logging to $1 did not start:" >&2; cat "$1" >&2; return 1
}

# run_time_us PID -> the CPU time the process's threads have run, in µs, from each thread's
# /proc/PID/task/TID/schedstat (exact, in ns). Not utime + stime of /proc/PID/stat: those are
# ticks, and on the VMs these figures come from they put 7–33 µs a push of cmqhook on actix's
# acceptor thread, whose run time was 0 (bench/PROFILE.md, 2026-12-07). Threads that exit
# between two readings take their time with them; the servers measured keep theirs.
run_time_us() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ ns += $1 } END { printf "%.0f\n", ns / 1000 }'
}

# build_before REV -> prints the path of cmqhook built at REV (release), building it the first
# time in a git worktree under target/ab/REV with this tree's target directory (dependencies are
# built once) and keeping the binary as target/ab/REV.cmqhook. For the A/B scripts.
build_before() {
    local rev tree before
    rev=$(git rev-parse --short "$1")
    tree=$PWD/target/ab/$rev
    before=$PWD/target/ab/$rev.cmqhook
    if [ ! -x "$before" ]; then
        [ -d "$tree" ] || git worktree add --detach "$tree" "$rev" >/dev/null
        CARGO_TARGET_DIR=$PWD/target cargo build --manifest-path "$tree/Cargo.toml" --release --locked -q --bin cmqhook >&2
        cp target/release/cmqhook "$before"
    fi
    echo "$before"
}

# status_kib PID FIELD... -> the fields' values in /proc/PID/status (KiB), space-separated
status_kib() {
    local pid=$1; shift
    awk -v want="$*" 'BEGIN { n = split(want, w, " ") } { sub(":", "", $1); v[$1] = $2 }
        END { for (i = 1; i <= n; i++) printf "%s%s", v[w[i]], (i < n ? " " : "\n") }' "/proc/$pid/status"
}

# ab_setup REV -> for the A/B scripts: builds cmqhook at REV (build_before) and the working
# tree's; sets `bins` (before, after), `work` (a directory removed on exit, with every server
# whose pid is in $work/*/pid stopped) and writes there push-true (the CMQ example push) and
# push-cat (a 64 KiB message).
ab_setup() {
    command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
    local before
    before=$(build_before "$1")
    cargo build --release --locked -q --bin cmqhook
    declare -gA bins=([before]=$before [after]=$PWD/target/release/cmqhook)
    work=$(mktemp -d)
    trap 'kill $(cat "$work"/*/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
    envelope 'test message' > "$work/push-true"
    envelope "$(head -c 65536 /dev/zero | tr '\0' x)" > "$work/push-cat"
}

envelope() { printf '{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"@ID@","msgBody":"%s","publishTime":11203432}' "$1"; }
