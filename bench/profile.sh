#!/usr/bin/env bash
# Where cmqhook's own CPU goes: a build with frame pointers (target/profile-fp), `perf record`
# of the server (not its children) while wrk sends pushes to an `argv = ["/bin/true"]` hook
# with the journal on (`JOURNAL=off` for off), the samples grouped by bench/categorize.py, and
# the top leaf functions by self time.
# Needs perf (Debian's linux-perf) and python3. Traffic to 127.0.0.1 only.
#
# Usage: [JOURNAL=off] bench/profile.sh [connections] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-8}
secs=${2:-4}
for tool in perf wrk python3; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
CARGO_PROFILE_RELEASE_DEBUG=1 RUSTFLAGS="-C force-frame-pointers=yes" \
    cargo build --release --locked -q --bin cmqhook --target-dir target/profile-fp
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
printf '%s' '{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"@ID@","msgBody":"test message","publishTime":11203432}' > "$work/push"
printf '[server]\nlisten = "127.0.0.1:0"\njournal = "%s"\n[hooks.bench]\nargv = ["/bin/true"]\n' \
    "${JOURNAL:-cmqhook.db}" > "$work/hooks.toml"
RUST_LOG=cmqhook::service=info target/profile-fp/release/cmqhook serve -c "$work/hooks.toml" >/dev/null 2>"$work/log" &
pid=$!
addr=
for _ in $(seq 200); do
    addr=$(grep -ao 'listening on http://[0-9.:]*' "$work/log" | sed 's|.*http://||' || true)
    [ -n "$addr" ] && break
    sleep 0.05
done
[ -n "$addr" ] || { echo "cmqhook did not start" >&2; exit 1; }
perf record -q -e cpu-clock -F 4000 -g --no-inherit -p "$pid" -o "$work/perf.data" 2>/dev/null &
perf_pid=$!
sleep 0.3
RUN_ID=profile HOOK_PATH=/ BODY_FILE="$work/push" wrk -t2 -c"$conns" -d"${secs}s" -s bench/push.lua "http://$addr/" |
    grep Requests/sec
kill -INT "$perf_pid"; wait "$perf_pid" || true
perf report -i "$work/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -4
perf script -i "$work/perf.data" -F comm,ip,sym 2>/dev/null | python3 bench/categorize.py
echo "top leaf functions (self time):"
perf report -i "$work/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep '%' | head -25
