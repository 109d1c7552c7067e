#!/usr/bin/env bash
# Server memory: idle RSS, then peak RSS (VmHWM) after a hook prints 300 MB of output.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/hooks.toml" <<'TOML'
[server]
listen = "127.0.0.1:0"
respond_within = "300s"
journal = "off"
[hooks.chatty]
command = 'head -c 300000000 /dev/zero | tr "\\0" x; seq 1 100000'
TOML
RUST_LOG=info ./target/release/cmqhook serve -c "$work/hooks.toml" >/dev/null 2>"$work/log" &
echo $! > "$work/pid"
pid=$(cat "$work/pid")
for _ in $(seq 100); do
    addr=$(grep -ao 'listening on http://[0-9.:]*' "$work/log" | sed 's|.*http://||' || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
start=$(date +%s.%N)
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$addr/" --data-binary '')
end=$(date +%s.%N)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
log=$(stat -c %s "$work/log")
echo "idle RSS: $idle KiB"
echo "peak RSS after 300 MB of command output: $peak KiB (answer $status in $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.2f", b-a}') s, $((log / 1048576)) MiB of log)"
