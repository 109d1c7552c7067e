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
