#!/usr/bin/env bash
# The performance benchmark, in one run: cmqhook (journal on and off) against the spawn ceiling
# (bench/ceiling.rs: the same commands spawned directly, no HTTP) and adnanh/webhook in
# synchronous mode, for two workloads at concurrency 1, 8 and 64; then idle and peak memory,
# 1,000 pushes held open at once, and routing among 10,000 hooks; then issue 25's figures: a
# chatty command against its pipe (bench/output.sh), own CPU a push against the piped bare
# handler (bench/cpu.sh) and, with a PostgreSQL server, the shared journal (bench/postgres.sh).
# Prints the figures and writes them to BENCHMARKS.md (BENCH_OUT overrides). Traffic goes to 127.0.0.1 only; every load is
# bounded in time.
#
# Usage: bench/run.sh [seconds-per-measurement] [repetitions]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
reps=${2:-3}
out=${BENCH_OUT:-BENCHMARKS.md}
cpus=$(nproc)

missing=()
for tool in wrk webhook sqlite3; do command -v "$tool" >/dev/null || missing+=("$tool"); done
# bench/cpu.sh times wrk with /usr/bin/time (the shell's `time` builtin would hide it from
# `command -v`); bench/output.sh sends its pushes with curl.
[ -x /usr/bin/time ] || missing+=(time)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --locked -q --bin cmqhook --example ceiling --example routing --example bare
bin=$PWD/target/release/cmqhook
ceiling=$PWD/target/release/examples/ceiling
bare=$PWD/target/release/examples/bare
routing=$PWD/target/release/examples/routing

work=$(mktemp -d)
cleanup() {
    for pidfile in "$work"/*/pid; do
        [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
results=$work/results.tsv
: > "$results"

# ---- bodies -------------------------------------------------------------------------------
# The CMQ example push (150 bytes), and the same envelope around a 64 KiB message. "@ID@" is
# replaced per request by bench/push.lua, so that every push has its own msgId.
printf '%s' 'test message' > "$work/message-true"
head -c 65536 /dev/zero | tr '\0' 'x' > "$work/message-cat"
envelope() { # envelope MESSAGE_FILE
    printf '{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"@ID@","msgBody":"%s","publishTime":11203432}' "$(cat "$1")"
}
envelope "$work/message-true" > "$work/push-true"
envelope "$work/message-cat" > "$work/push-cat"

# ---- servers ------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# await_listening NAME -> sets $addr from the "listening on http://ADDR" line of $work/NAME/log
await_listening() {
    addr=
    for _ in $(seq 200); do
        addr=$(grep -ao 'listening on http://[0-9.:]*' "$work/$1/log" 2>/dev/null | sed 's|.*http://||' || true)
        [ -n "$addr" ] && return
        sleep 0.05
    done
    echo "$1 did not start:" >&2; cat "$work/$1/log" >&2; exit 1
}

# start_cmqhook NAME JOURNAL HOOK_TOML [SERVER_TOML] -> sets $addr; pid in $work/NAME/pid
start_cmqhook() {
    local name=$1 journal=$2 hook=$3 server=${4:-}
    rm -rf "${work:?}/$name"; mkdir -p "$work/$name"
    cat > "$work/$name/hooks.toml" <<TOML
[server]
listen = "127.0.0.1:0"
journal = "$journal"
$server
[hooks.bench]
$hook
TOML
    # stdout to /dev/null, or a $(...) around this would wait for the server.
    # NOFILE: the soft open-files limit cmqhook starts with (it raises it itself); LOG: RUST_LOG.
    (ulimit -Sn "${NOFILE:-$(ulimit -Sn)}"
     RUST_LOG=${LOG:-cmqhook::service=info} exec "$bin" serve -c "$work/$name/hooks.toml" >/dev/null 2>"$work/$name/log") &
    echo $! > "$work/$name/pid"
    await_listening "$name"
}

# start_webhook NAME WORKLOAD -> sets $addr
start_webhook() {
    local name=$1 workload=$2 port
    mkdir -p "$work/$name"
    port=$(free_port)
    if [ "$workload" = true ]; then
        cat > "$work/$name/hooks.json" <<'JSON'
[{"id": "bench", "execute-command": "/bin/true", "include-command-output-in-response": true}]
JSON
    else
        # webhook has no stdin for commands: the body goes through a file it writes, the
        # closest equivalent of cmqhook's stdin.
        cat > "$work/$name/hooks.json" <<'JSON'
[{"id": "bench", "execute-command": "/bin/sh",
  "pass-arguments-to-command": [{"source": "string", "name": "-c"},
                                {"source": "string", "name": "cat \"$BODY\" >/dev/null"}],
  "pass-file-to-command": [{"source": "raw-request-body", "name": "body", "envname": "BODY"}],
  "include-command-output-in-response": true}]
JSON
    fi
    webhook -hooks "$work/$name/hooks.json" -ip 127.0.0.1 -port "$port" >/dev/null 2>"$work/$name/log" &
    echo $! > "$work/$name/pid"
    addr=127.0.0.1:$port
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
        sleep 0.05
    done
    echo "webhook did not start:" >&2; cat "$work/$name/log" >&2; exit 1
}

# start_bare NAME WORKLOAD -> sets $addr: bench/bare.rs --piped, the HTTP floor (stdout and
# stderr piped and drained, as any runner that logs output must: issue 25's fair comparison)
start_bare() {
    local name=$1 workload=$2
    rm -rf "${work:?}/$name"; mkdir -p "$work/$name"
    if [ "$workload" = true ]; then
        "$bare" --piped 127.0.0.1:0 /bin/true >/dev/null 2>"$work/$name/log" &
    else
        "$bare" --piped 127.0.0.1:0 /bin/sh -c 'cat >/dev/null' >/dev/null 2>"$work/$name/log" &
    fi
    echo $! > "$work/$name/pid"
    await_listening "$name"
}

stop() { # stop NAME
    local pid
    pid=$(cat "$work/$1/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$work/$1/pid"
}

# ---- measurements -------------------------------------------------------------------------
to_ms() { # wrk's "1.23ms" / "456.00us" / "1.02s" -> milliseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# load ADDR PATH BODY CONNS RUN_ID -> "rps p50 p99"
load() {
    local addr=$1 path=$2 body=$3 conns=$4 id=$5 threads out
    threads=$(( conns < 2 ? 1 : 2 ))
    out=$(RUN_ID="$id" HOOK_PATH="$path" BODY_FILE="$body" \
        wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 20s --latency -s bench/push.lua "http://$addr$path")
    if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
        echo "errors in a load of $addr$path:" >&2; echo "$out" >&2; exit 1
    fi
    echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
        "$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")" \
        "$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
}

# spawn_ceiling WORKLOAD PARALLELISM -> "rps p50 p99 rss"
spawn_ceiling() {
    local line
    if [ "$1" = true ]; then
        line=$("$ceiling" "$2" "$secs" "$work/message-true" /bin/true)
    else
        line=$("$ceiling" "$2" "$secs" "$work/message-cat" /bin/sh -c 'cat >/dev/null')
    fi
    sed -E 's/.*rps=([^ ]+) p50_ms=([^ ]+) p99_ms=([^ ]+) peak_rss_kib=([^ ]+).*/\1 \2 \3 \4/' <<<"$line"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# record WORKLOAD CONC SYSTEM RSS_KIB then rep lines "rps p50 p99" on stdin -> medians to $results
record() {
    local rps=() p50=() p99=() r a b
    while read -r r a b; do rps+=("$r"); p50+=("$a"); p99+=("$b"); done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" \
        "$(median "${rps[@]}")" "$(median "${p50[@]}")" "$(median "${p99[@]}")" "$4" >> "$results"
}

hook_for() { # the cmqhook hook for a workload
    if [ "$1" = true ]; then echo 'argv = ["/bin/true"]'; else echo "command = 'cat >/dev/null'"; fi
}

# A hook of short CPU-bound commands, bounded to one child per CPU; its queue holds every push
# in flight, so nothing is refused (the setting BENCHMARKS.md documents).
bounded() { printf '%s\nconcurrency = %s\nqueue = 256\n' "$(hook_for "$1")" "$cpus"; }

server_opts='max_body = "1 MiB"'
for workload in true cat; do
    body=$work/push-$workload
    # The best ceiling: one child per CPU.
    for rep in $(seq "$reps"); do spawn_ceiling "$workload" "$cpus"; done > "$work/best"
    record "$workload" "$cpus" "ceiling (best)" "$(awk '{print $4}' "$work/best" | sort -g | tail -1)" \
        < <(cut -d' ' -f1-3 "$work/best")
    for conc in 1 8 64; do
        echo "== $workload, concurrency $conc" >&2
        start_webhook webhook "$workload"; webhook_addr=$addr
        start_bare bare "$workload"; bare_addr=$addr
        start_cmqhook on cmqhook.db "$(hook_for "$workload")" "$server_opts"; on_addr=$addr
        start_cmqhook off off "$(hook_for "$workload")" "$server_opts"; off_addr=$addr
        if [ "$conc" -gt "$cpus" ]; then
            start_cmqhook bounded cmqhook.db "$(bounded "$workload")" "$server_opts"; bounded_addr=$addr
        fi
        : > "$work/r-ceiling"; : > "$work/r-webhook"; : > "$work/r-bare"; : > "$work/r-on"; : > "$work/r-off"; : > "$work/r-bounded"
        # Alternate the systems within each repetition, so that machine noise hits all alike.
        for rep in $(seq "$reps"); do
            spawn_ceiling "$workload" "$conc" >> "$work/r-ceiling"
            load "$webhook_addr" /hooks/bench "$body" "$conc" "${workload}-${conc}-w$rep" >> "$work/r-webhook"
            load "$bare_addr" / "$body" "$conc" "${workload}-${conc}-bare$rep" >> "$work/r-bare"
            load "$on_addr" / "$body" "$conc" "${workload}-${conc}-on$rep" >> "$work/r-on"
            load "$off_addr" / "$body" "$conc" "${workload}-${conc}-off$rep" >> "$work/r-off"
            if [ "$conc" -gt "$cpus" ]; then
                load "$bounded_addr" / "$body" "$conc" "${workload}-${conc}-b$rep" >> "$work/r-bounded"
            fi
        done
        record "$workload" "$conc" "ceiling" "$(awk '{print $4}' "$work/r-ceiling" | sort -g | tail -1)" \
            < <(cut -d' ' -f1-3 "$work/r-ceiling")
        record "$workload" "$conc" "webhook" "$(peak_rss "$(cat "$work/webhook/pid")")" < "$work/r-webhook"
        record "$workload" "$conc" "bare actix handler" "$(peak_rss "$(cat "$work/bare/pid")")" < "$work/r-bare"
        record "$workload" "$conc" "cmqhook" "$(peak_rss "$(cat "$work/on/pid")")" < "$work/r-on"
        record "$workload" "$conc" "cmqhook, journal off" "$(peak_rss "$(cat "$work/off/pid")")" < "$work/r-off"
        stop webhook; stop bare; stop on; stop off
        if [ "$conc" -gt "$cpus" ]; then
            record "$workload" "$conc" "cmqhook, concurrency = $cpus" \
                "$(peak_rss "$(cat "$work/bounded/pid")")" < "$work/r-bounded"
            stop bounded
        fi
    done
done

# ---- memory: idle, and 1,000 pushes held open on a `sleep 5` hook --------------------------
echo "== memory" >&2
start_cmqhook idle cmqhook.db "$(hook_for true)"
sleep 1
idle_rss=$(rss "$(cat "$work/idle/pid")")
stop idle

NOFILE=1024 LOG=info start_cmqhook held cmqhook.db "$(printf 'command = "sleep 5"\nconcurrency = 0')" \
    "$(printf 'max_running = 1024\nrespond_within = "14s"')"
held_pid=$(cat "$work/held/pid")
held_out=$(RUN_ID=held HOOK_PATH=/ BODY_FILE="$work/push-true" \
    wrk -t2 -c1000 -d8s --timeout 14s -s bench/push.lua "http://$addr/" 2>&1 || true)
held_peak=$(peak_rss "$held_pid")
held_fds=$(awk '/Max open files/ {print $4 " soft, " $5 " hard"}' "/proc/$held_pid/limits")
held_ok=$(sqlite3 "$work/held/cmqhook.db" "SELECT COUNT(*) FROM runs WHERE outcome = 'succeeded'" 2>/dev/null || echo "?")
held_emfile=$(grep -ci 'too many open files' "$work/held/log" || true)
held_answered=$(awk '/requests in/ {print $1}' <<<"$held_out")
held_errors=$(grep -E "Socket errors|Non-2xx" <<<"$held_out" | tr -s ' ' || true)
# Answers that were not 2xx, and connect/read/write/timeout errors: all must be 0.
held_bad=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) n += $i} END {print n + 0}' <<<"$held_out")
stop held

# ---- routing ------------------------------------------------------------------------------
echo "== routing" >&2
routing_out=$("$routing" 10000)

# ---- output: a chatty command against its pipe ---------------------------------------------
echo "== output" >&2
output_out=$(CMQHOOK=$bin bench/output.sh "$reps" 2>&1) || output_out="bench/output.sh failed: $output_out"

# ---- own CPU a push, against the piped bare handler -----------------------------------------
echo "== own CPU" >&2
cpu_out=$(bench/cpu.sh 8 "$secs" "$reps" 2>&1) || cpu_out="bench/cpu.sh failed: $cpu_out"
# cpu_median SYSTEM FIELD -> the median over rounds of a bench/cpu.sh figure (pushes/s or own)
cpu_median() {
    median $(awk -v s="$1" -v f="$2" '$1 == s { for (i = 2; i <= NF; i++) if ($i == f) print (f == "own" ? $(i + 1) : $(i - 1)) }' <<<"$cpu_out")
}

# ---- PostgreSQL ---------------------------------------------------------------------------
# The shared journal against the SQLite one, when a PostgreSQL server is there to use.
postgres_out=
pinned_out=
if [ -n "${CMQHOOK_TEST_POSTGRES:-}" ] || pg_isready -q -h 127.0.0.1 2>/dev/null; then
    echo "== postgres" >&2
    postgres_out=$(bench/postgres.sh "$secs" "$reps" 2>&1 | grep -v '^debconf') || postgres_out="bench/postgres.sh failed"
    if [ "$cpus" -ge 2 ]; then
        echo "== postgres, the database on a CPU of its own" >&2
        pinned_out=$(PIN=1 bench/postgres.sh "$secs" "$reps" 2>&1 | grep -v '^debconf') || pinned_out="PIN=1 bench/postgres.sh failed"
    fi
fi

# pg_ratio OUTPUT CONNS -> the median over rounds of bench/postgres.sh's pg/sqlite throughput
pg_ratio() {
    [ -n "$1" ] || return 0
    median $(awk -v c="c$2" '$1 == c && /pg\/sqlite throughput/ { sub(",", "", $6); print $6 }' <<<"$1")
}

# ---- report -------------------------------------------------------------------------------
report() {
    echo "# Benchmarks"
    echo
    echo "Written by \`bench/run.sh $secs $reps\` on $(date -u +%Y-%m-%d); each figure is the median of"
    echo "$reps measurements of ${secs} s, the systems alternating within each repetition."
    echo
    echo "Machine: $cpus CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)),"
    echo "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) of memory, Linux $(uname -r);"
    echo "$(rustc --version | cut -d' ' -f1-2), $(webhook -version 2>&1 | head -1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)."
    echo
    echo "Workloads: \`true\` is \`argv = [\"/bin/true\"]\` fed the CMQ example push (150 bytes);"
    echo "\`cat\` is \`command = \"cat >/dev/null\"\` fed a 64 KiB message. The ceiling is"
    echo "\`bench/ceiling.rs\`: the same command spawned, fed and waited for by N threads, no HTTP."
    echo "webhook runs in synchronous mode (\`include-command-output-in-response\`); for \`cat\` it"
    echo "writes the body to a file the command reads, having no stdin for commands."
    echo "\`concurrency = $cpus\` is the hook setting that bounds a hook's children to one per CPU."
    echo "The bare actix handler (\`bench/bare.rs --piped\`) spawns the command for each POST, writes"
    echo "it the body while it reads its stdout and stderr to their end, and answers its exit status,"
    echo "nothing else: what HTTP, the load generator and a runner's unavoidable pipes cost."
    echo
    echo "| workload | concurrency | system | req/s | p50 ms | p99 ms | p99/p50 | peak RSS MiB | × ceiling | × webhook | × bare |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' '
        { key = $1 SUBSEP $2; rps[key, $3] = $4; best[$1] = ($3 == "ceiling (best)") ? $4 : best[$1] }
        { rows[NR] = $0 }
        END {
            for (i = 1; i <= NR; i++) {
                split(rows[i], f, "\t")
                key = f[1] SUBSEP f[2]
                ceil = (f[3] ~ /concurrency =/) ? best[f[1]] : rps[key, "ceiling"]
                vs_ceiling = (f[3] ~ /^(cmqhook|bare)/ && ceil > 0) ? sprintf("%.2f", f[4] / ceil) : ""
                vs_webhook = (f[3] ~ /^(cmqhook|bare)/ && rps[key, "webhook"] > 0) ? sprintf("%.2f", f[4] / rps[key, "webhook"]) : ""
                vs_bare = (f[3] ~ /^cmqhook/ && rps[key, "bare actix handler"] > 0) ? sprintf("%.2f", f[4] / rps[key, "bare actix handler"]) : ""
                printf "| %s | %s | %s | %.0f | %.2f | %.2f | %.1f | %.1f | %s | %s | %s |\n",
                    f[1], f[2], f[3], f[4], f[5], f[6], (f[5] > 0 ? f[6] / f[5] : 0), f[7] / 1024, vs_ceiling, vs_webhook, vs_bare
            }
        }' "$results"
    echo
    echo "\`× bare\` compares with the bare actix handler: what cmqhook's own work costs."
    echo "\`× ceiling\` compares with the ceiling at the same parallelism, and for"
    echo "\`concurrency = $cpus\` with the best ceiling (parallelism = CPUs). Peak RSS of the ceiling"
    echo "is the spawning program's own."
    echo
    echo "## Memory"
    echo
    echo "- Idle RSS of \`cmqhook serve\` (journal on, one hook): $((idle_rss)) KiB."
    echo "- 1,000 pushes held open at once on a \`sleep 5\` hook (\`max_running = 1024\`), wrk with"
    echo "  1,000 connections for 8 s: $held_answered answers, $held_ok runs journaled as succeeded,"
    echo "  peak RSS $held_peak KiB; started with a soft open-files limit of 1024, which it"
    echo "  raised to $held_fds;"
    echo "  $held_emfile \"too many open files\" in the log.${held_errors:+ wrk: $held_errors}"
    echo
    echo "## Routing among 10,000 hooks"
    echo
    echo "Mixed selectors (4 in 10 exact topics, 2 glob topics, 2 tags, 1 subscription, 1 path):"
    echo "loading the config (\`load_ms\`, of which the routing index \`index_ms\`), and routing one"
    echo "push with the index and with a test of every hook (\`scan_us_per_push\`)."
    echo
    echo '```'
    echo "$routing_out"
    echo '```'
    echo
    if [ -n "$postgres_out" ]; then
        echo "## The shared PostgreSQL journal"
        echo
        echo "\`bench/postgres.sh $secs $reps\`: \`/bin/true\` with the journal on SQLite, on PostgreSQL on the same"
        echo "machine (no TLS), and two instances sharing it. PostgreSQL fsyncs every commit; the SQLite"
        echo "journal (WAL, \`synchronous = NORMAL\`) does not."
        echo
        echo '```'
        echo "$postgres_out"
        echo '```'
        echo
        if [ -n "$pinned_out" ]; then
            echo "The same with the database on a CPU of its own (\`PIN=1\`: every PostgreSQL process on"
            echo "the last CPU; cmqhook, its commands and wrk on the others, for the SQLite journal too), as"
            echo "when the database runs on a host of its own and its CPU is not taken from the commands:"
            echo
            echo '```'
            echo "$pinned_out"
            echo '```'
            echo
        fi
    fi
    echo "## A chatty command against its pipe"
    echo
    echo "\`bench/output.sh $reps\`: the command's time through \`serve\` (request to answer, SQLite journal,"
    echo "\`log_output = 1000\`, \`keep_output = 64 KiB\`) against \`sh -c CMD | cat >/dev/null\`."
    echo
    echo '```'
    echo "$output_out"
    echo '```'
    echo
    echo "## Own CPU a push"
    echo
    echo "\`bench/cpu.sh 8 $secs $reps\`: \`/bin/true\` at 8 connections; CPU a push of the server itself"
    echo "(\`/proc/PID/stat\`), of its children and of wrk. \`bare-piped\` is \`bench/bare.rs --piped\`."
    echo
    echo '```'
    echo "$cpu_out"
    echo '```'
    echo
    echo "## Targets"
    echo
    awk -v idle="$idle_rss" -v held="$held_peak" -v emfile="$held_emfile" -v answered="${held_answered:-0}" -v bad="$held_bad" \
        -v load_ms="$(sed -E 's/.*load_ms=([^ ]+).*/\1/' <<<"$routing_out")" \
        -v route="$(sed -E 's/.*route_us_per_push=([^ ]+).*/\1/' <<<"$routing_out")" \
        -v out_lines="$(awk '$1 == "lines" && /median/ {print $4}' <<<"$output_out" | tr -d x)" \
        -v out_nonewline="$(awk '$1 == "nonewline" && /median/ {print $4}' <<<"$output_out" | tr -d x)" \
        -v out_ansi="$(awk '$1 == "ansi" && /median/ {print $4}' <<<"$output_out" | tr -d x)" \
        -v cpu_on="$(cpu_median cmqhook-on own)" -v cpu_off="$(cpu_median cmqhook-off own)" \
        -v cpu_piped="$(cpu_median bare-piped own)" \
        -v rps_off="$(cpu_median cmqhook-off pushes/s)" -v rps_piped="$(cpu_median bare-piped pushes/s)" \
        -v pg8="$(pg_ratio "$postgres_out" 8)" -v pg8_pinned="$(pg_ratio "$pinned_out" 8)" \
        -v pg64_pinned="$(pg_ratio "$pinned_out" 64)" \
        -f bench/targets.awk "$results"
}
report | tee "$out"
