#!/usr/bin/env bash
# What the journal costs: pushes/s to an `argv = ["/bin/true"]` hook with the journal on and
# off, measured in one run, alternating rounds so that machine noise hits both alike.
# Usage: bench/journal.sh [seconds-per-round] [rounds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
conns=${3:-16}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --locked -q
bin=$PWD/target/release/cmqhook
work=$(mktemp -d)
trap 'kill $(cat "$work"/*/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

start() { # start NAME JOURNAL -> echoes the address
    local name=$1 journal=$2
    mkdir -p "$work/$name"
    cat > "$work/$name/hooks.toml" <<TOML
[server]
listen = "127.0.0.1:0"
journal = "$journal"
[hooks.true]
argv = ["/bin/true"]
stdin = "none"
TOML
    # stdout to /dev/null: the $(start ...) substitution must not wait for the server.
    RUST_LOG=cmqhook::service=info "$bin" serve -c "$work/$name/hooks.toml" >/dev/null 2>"$work/$name/log" &
    echo $! > "$work/$name/pid"
    for _ in $(seq 100); do
        addr=$(grep -o 'listening on http://[0-9.:]*' "$work/$name/log" 2>/dev/null | sed 's|.*http://||' || true)
        [ -n "$addr" ] && { echo "$addr"; return; }
        sleep 0.1
    done
    echo "server $name did not start" >&2; exit 1
}

on=$(start on cmqhook.db)
off=$(start off off)

measure() { # measure ADDR ROUND -> requests/s
    local out
    out=$(RUN_ID="$2" wrk -t2 -c"$conns" -d"${secs}s" -s bench/push.lua "http://$1/")
    if grep -q "Non-2xx" <<<"$out"; then
        echo "non-2xx answers:" >&2; echo "$out" >&2; exit 1
    fi
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}

declare -a ron roff
for round in $(seq "$rounds"); do
    ron+=("$(measure "$on" "on$round")")
    roff+=("$(measure "$off" "off$round")")
    echo "round $round: journal on ${ron[-1]} pushes/s, off ${roff[-1]} pushes/s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mon=$(median "${ron[@]}")
moff=$(median "${roff[@]}")
rows=$(sqlite3 "$work/on/cmqhook.db" "SELECT COUNT(*) FROM runs" 2>/dev/null || echo "?")
echo
echo "journal on:  $mon pushes/s (median of $rounds rounds of ${secs}s, $conns connections; $rows rows journaled)"
echo "journal off: $moff pushes/s"
awk -v on="$mon" -v off="$moff" 'BEGIN { printf "journal cost: %.1f %% (on/off = %.3f)\n", (1 - on/off) * 100, on/off }'
