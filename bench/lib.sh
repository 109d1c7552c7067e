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
