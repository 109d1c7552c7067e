# bench/run.sh: the targets of the performance issue, checked against its figures.
# Reads results.tsv (workload, concurrency, system, rps, p50 ms, p99 ms, peak RSS KiB) and
# prints the issue's targets as a table. -v idle=KiB -v held=KiB -v emfile=N -v answered=N -v bad=N
# -v load_ms=ms -v route=us; issue 25's: -v out_lines, out_nonewline, out_ansi (serve/pipe),
# cpu_on, cpu_off, cpu_piped (own CPU µs a push), rps_off, rps_piped, pg8, pg8_pinned, pg64_pinned
# (PostgreSQL/SQLite throughput; empty without a PostgreSQL server)
BEGIN { FS = "\t" }
{
    rps[$1, $2, $3] = $4; p50[$1, $2, $3] = $5; p99[$1, $2, $3] = $6; rss[$1, $2, $3] = $7
    if ($3 == "ceiling (best)") best[$1] = $4
    if ($3 ~ /^cmqhook, concurrency = /) { bounded = $3 }
}
function row(target, measured, ok) {
    printf "| %s | %s | %s |\n", target, measured, ok ? "met" : "**not met**"
}
function ratio(a, b) { return b > 0 ? a / b : 0 }
END {
    print "| target | measured | |"
    print "|---|---|---|"
    split("true cat", workloads, " ")
    for (w = 1; w <= 2; w++) {
        wl = workloads[w]
        for (c = 8; c <= 64; c *= 8) {
            r = ratio(rps[wl, c, "cmqhook"], rps[wl, c, "ceiling"])
            row(sprintf("`%s`, c%d, journal on: ≥ 0.90 × ceiling", wl, c), sprintf("%.2f", r), r >= 0.9)
        }
    }
    for (w = 1; w <= 2; w++) {
        wl = workloads[w]
        for (c = 8; c <= 64; c *= 8) {
            r = ratio(rps[wl, c, bounded], best[wl])
            row(sprintf("`%s`, c%d, `%s`: ≥ 0.85 × best ceiling", wl, c, substr(bounded, 10)), sprintf("%.2f", r), r >= 0.85)
        }
    }
    for (w = 1; w <= 2; w++) {
        wl = workloads[w]
        for (c = 1; c <= 64; c *= 8) {
            if (wl == "true" && c == 1) continue
            want = (wl == "true") ? 1.3 : 1.0
            r = ratio(rps[wl, c, "cmqhook"], rps[wl, c, "webhook"])
            row(sprintf("`%s`, c%d: ≥ %.1f × webhook", wl, c, want), sprintf("%.2f", r), r >= want)
        }
    }
    for (w = 1; w <= 2; w++) {
        wl = workloads[w]
        r = ratio(p50[wl, 1, "cmqhook"], p50[wl, 1, "ceiling"])
        row(sprintf("`%s`, c1: p50 ≤ 1.3 × ceiling p50", wl), sprintf("%.2f ms, %.2f ×", p50[wl, 1, "cmqhook"], r), r > 0 && r <= 1.3)
        r = ratio(p99[wl, 64, "cmqhook"], p50[wl, 64, "cmqhook"])
        row(sprintf("`%s`, c64: p99/p50 ≤ 2", wl), sprintf("%.1f", r), r > 0 && r <= 2)
        row(sprintf("`%s`, c64: peak RSS ≤ 16 MiB", wl), sprintf("%.1f MiB", rss[wl, 64, "cmqhook"] / 1024), rss[wl, 64, "cmqhook"] <= 16384)
    }
    row("idle RSS ≤ 10 MiB", sprintf("%.1f MiB", idle / 1024), idle <= 10240)
    # "A push should cost what its command costs" (issue 15): against the bare handler.
    for (w = 1; w <= 2; w++) {
        wl = workloads[w]
        for (c = 8; c <= 64; c *= 8) {
            r = ratio(rps[wl, c, "cmqhook"], rps[wl, c, "bare actix handler"])
            row(sprintf("`%s`, c%d, journal on: ≥ 0.97 × bare", wl, c), sprintf("%.2f", r), r >= 0.97)
        }
    }
    d = p50["true", 1, "cmqhook"] - p50["true", 1, "bare actix handler"]
    row("`true`, c1: p50 ≤ bare p50 + 0.2 ms", sprintf("%+.2f ms", d), p50["true", 1, "cmqhook"] > 0 && d <= 0.2)
    d = (rss["cat", 64, "cmqhook"] - rss["cat", 64, "bare actix handler"]) / 1024
    row("`cat`, c64: peak RSS ≤ bare + 8 MiB", sprintf("%+.1f MiB", d), rss["cat", 64, "cmqhook"] > 0 && d <= 8)
    row("idle RSS ≤ 8 MiB (issue 15)", sprintf("%.1f MiB", idle / 1024), idle <= 8192)
    row("1,000 pushes held open: peak RSS ≤ 40 MiB (issue 15)", sprintf("%.1f MiB", held / 1024), held > 0 && held <= 40960)
    row("1,000 pushes held open: all answered 2xx, peak RSS ≤ 64 MiB, no \"too many open files\"",
        sprintf("%d answered, %d errors, %.1f MiB, %d", answered, bad, held / 1024, emfile),
        answered >= 1000 && bad == 0 && held <= 65536 && emfile == 0 && held > 0)
    row("10,000 hooks: load ≤ 200 ms", sprintf("%.0f ms", load_ms), load_ms > 0 && load_ms <= 200)
    row("10,000 hooks: routing ≤ 5 µs a push", sprintf("%.2f µs", route), route > 0 && route <= 5)
    # Issue 25: a chatty command at the speed of its pipe, a push costing what its command costs.
    row("300 MB of short lines: ≤ 2 × the pipe", sprintf("%.2f ×", out_lines), out_lines > 0 && out_lines <= 2)
    row("300 MB without a newline: ≤ 2 × the pipe", sprintf("%.2f ×", out_nonewline), out_nonewline > 0 && out_nonewline <= 2)
    row("10 MB of ANSI-coloured output: ≤ 2 × the pipe", sprintf("%.2f ×", out_ansi), out_ansi > 0 && out_ansi <= 2)
    r = ratio(cpu_off, cpu_piped)
    row("`true`, c8, journal off: own CPU ≤ 1.15 × bare (piped)", sprintf("%.0f / %.0f µs, %.2f ×", cpu_off, cpu_piped, r), r > 0 && r <= 1.15)
    r = ratio(cpu_on, cpu_off)
    row("`true`, c8: own CPU journal on ≤ 1.1 × journal off", sprintf("%.0f / %.0f µs, %.2f ×", cpu_on, cpu_off, r), r > 0 && r <= 1.1)
    d = p50["true", 1, "cmqhook"] - p50["true", 1, "bare actix handler"]
    row("`true`, c1: p50 ≤ bare (piped) p50 + 0.1 ms", sprintf("%+.2f ms", d), p50["true", 1, "cmqhook"] > 0 && d <= 0.1)
    if (pg8 != "") {
        row("PostgreSQL/SQLite, `true`, c8, same CPUs: ≥ 0.75 ×", sprintf("%.2f", pg8), pg8 >= 0.75)
        row("PostgreSQL/SQLite, `true`, c8, database on its own CPU: ≥ 0.95 ×", sprintf("%.2f", pg8_pinned), pg8_pinned >= 0.95)
        row("PostgreSQL/SQLite, `true`, c64, database on its own CPU: ≥ 0.95 ×", sprintf("%.2f", pg64_pinned), pg64_pinned >= 0.95)
    }
}
