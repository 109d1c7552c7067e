#!/usr/bin/env bash
# The spawn mechanism alone (bench/spawner.rs): `/bin/true` with stdin, stdout and stderr pipes,
# started and waited for CONCURRENCY at a time (1, 8, 64) by a multi-threaded tokio process
# itself (direct), or through a single-threaded helper process over a Unix socket with the
# pipe ends passed as descriptors (helper: pid and exit status reported; helper1: exit status
# only; helper-fork: the helper forks rather than vforks). The modes alternate within each
# round, in reverse order every other round. CPU a run is this process's plus the helper's
# (utime + stime from /proc/PID/stat; the commands' own CPU not counted).
#
# Then, if perf can count the tlb:tlb_flush tracepoint, one more run of each under
# `perf stat` (not in the CPU figures: the counting costs CPU): `ipi_recv` is flushes done in a
# shoot-down interrupt on a CPU running the benchmark's processes, `ipi_send` flushes that had
# to look at other CPUs (whether or not an interrupt was sent).
#
# Usage: bench/spawner.sh [seconds] [rounds] [threads (0: the CPUs)]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-4}
rounds=${2:-3}
threads=${3:-0}
cargo build --release --locked -q --example spawner
bin=$PWD/target/release/examples/spawner
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s' 'test message' > "$work/body"
modes=(direct helper helper1 helper-fork)

echo "# $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), ${secs}s a run, threads=$threads"
for round in $(seq "$rounds"); do
    order=("${modes[@]}")
    if ((round % 2 == 0)); then
        order=(helper-fork helper1 helper direct)
    fi
    for n in 1 8 64; do
        for mode in "${order[@]}"; do
            echo "round=$round $("$bin" "$mode" "$n" "$secs" "$threads" "$work/body" /bin/true)"
        done
    done
done | tee "$work/runs"

echo
echo "# spread over $rounds rounds (min-max); cpu = own + helper, a run"
awk '
    {
        for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        key = f["concurrency"] " " f["mode"]
        if (!(key in n)) { order[++keys] = key }
        n[key]++
        for (name in f) {
            v = f[name] + 0
            if (n[key] == 1 || v < lo[key, name]) lo[key, name] = v
            if (n[key] == 1 || v > hi[key, name]) hi[key, name] = v
        }
        cpu[f["round"], key] = f["cpu_us"]
    }
    function range(key, name, fmt) {
        return sprintf(fmt "-" fmt, lo[key, name], hi[key, name])
    }
    END {
        printf "%-4s %-12s %13s %13s %11s %11s %11s %9s %9s\n", "conc", "mode", "runs/s",
            "cpu us", "own us", "helper us", "p50 ms", "tlb irq", "res irq"
        for (k = 1; k <= keys; k++) {
            key = order[k]; split(key, part, " ")
            printf "%-4s %-12s %13s %13s %11s %11s %11s %9s %9s\n", part[1], part[2],
                range(key, "rps", "%.0f"), range(key, "cpu_us", "%.0f"),
                range(key, "own_cpu_us", "%.0f"), range(key, "helper_cpu_us", "%.0f"),
                range(key, "p50_ms", "%.2f"), range(key, "tlb_irqs_per_run", "%.2f"),
                range(key, "res_irqs_per_run", "%.2f")
        }
        print ""
        print "# CPU a run against direct in the same round (1.00 = the same; below 1 = cheaper)"
        for (k = 1; k <= keys; k++) {
            key = order[k]; split(key, part, " ")
            if (part[2] == "direct") continue
            line = sprintf("%-4s %-12s", part[1], part[2])
            for (r = 1; (r, key) in cpu; r++) {
                line = line sprintf(" %.2f", cpu[r, key] / cpu[r, part[1] " direct"])
            }
            print line
        }
    }' "$work/runs"

if perf stat -e tlb:tlb_flush -o /dev/null true 2>/dev/null; then
    echo
    echo "# TLB flushes a run, counted by perf (tlb:tlb_flush) over the process tree"
    for n in 1 8 64; do
        for mode in "${modes[@]}"; do
            perf stat -x, -o "$work/perf" \
                -e tlb:tlb_flush --filter 'reason==1' -e tlb:tlb_flush --filter 'reason==4' \
                -- "$bin" "$mode" "$n" 2 "$threads" "$work/body" /bin/true > "$work/line"
            runs=$(grep -o 'runs=[0-9]*' "$work/line" | cut -d= -f2)
            awk -F, -v n="$n" -v mode="$mode" -v runs="$runs" '
                /tlb:tlb_flush/ { c[++i] = $1 }
                END { printf "concurrency=%s mode=%-12s ipi_recv=%.3f ipi_send=%.3f\n",
                          n, mode, c[1] / runs, c[2] / runs }' "$work/perf"
        done
    done
else
    echo "# perf cannot count tlb:tlb_flush here: TLB figures from /proc/interrupts only"
fi
