#!/bin/bash
# Live migration benchmark: Scripts/bench/migrant (MIB of memory rewritten at
# RATE MiB/s, default 2048 and 50: issue 18's service) moves from one network
# namespace to another over a veth pair with `cryo migrate --key` / `cryo
# receive --key --pidns`, eagerly and with --lazy-pages, RUNS times each.
#
#     sudo Scripts/bench-migrate.sh                 # 2048 MiB at 50 MiB/s, 3 runs
#     MIB=512 RATE=20 RUNS=1 sudo -E Scripts/bench-migrate.sh
#     CRYO=.build-rel/release/cryo sudo -E Scripts/bench-migrate.sh   # a cryo already built
#     VERBOSE=1 ...                                 # also migrate's statistics and receive's log
#     TIMELINE=1 ...                                # the frozen period step by step, both ends (ms since the freeze)
#     INSECURE=1 MODES=lazy ...                     # plain TCP instead of TLS; only the lazy mode
#     MODES="eager lazy lazy1" ...                  # lazy1: --lazy-pages --max-rounds 1 (post-copy after round 1)
#
# Per run: the pre-copy rounds with their bytes, the time the tree was frozen
# on the source until the destination said it runs (cryo's figure), the total
# migration time, and the downtime as the service saw it: the longest gap
# between two turns of migrant's loop (CLOCK_REALTIME), which it prints with
# PASS once it has checked every page on the destination. Beside them, one
# full copy of the memory over the same link (plain TCP, python3) for the
# "total <= 1.5x one copy" target, and the 50 ms downtime target.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '==> %s\n' "$*"; }
fail() { printf 'bench-migrate: FAILED: %s\n' "$*" >&2; exit 1; }
mib=${MIB:-2048}
rate=${RATE:-50}
runs=${RUNS:-3}
[[ $(id -u) -eq 0 ]] || fail "needs root; run: sudo $0"
if [[ -n ${CRYO:-} ]]; then
    cryo=$(cd "$repo" && realpath "$CRYO")
else
    say "setting up and building cryo (Scripts/setup.sh)"
    "$repo/Scripts/setup.sh" >/dev/null 2>&1 || fail "Scripts/setup.sh failed"
    cryo=$repo/.build/release/cryo
fi
[[ -x $cryo ]] || fail "$cryo is not an executable"

work=$(mktemp -d /var/tmp/cryo-bench-migrate.XXXXXX)
tag=$$
nsa=cryo-bA-$tag nsb=cryo-bB-$tag
live=()
cleanup() {
    local pid
    for pid in "${live[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$nsa" 2>/dev/null || true
    ip netns del "$nsb" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

gcc -O2 -Wall -o "$work/migrant" "$repo/Scripts/bench/migrant.c" -lm
ip netns add "$nsa"
ip netns add "$nsb"
ip link add "bmA$tag" type veth peer name "bmB$tag"
ip link set "bmA$tag" netns "$nsa"
ip link set "bmB$tag" netns "$nsb"
ip -n "$nsa" addr add 10.78.0.1/24 dev "bmA$tag"
ip -n "$nsb" addr add 10.78.0.2/24 dev "bmB$tag"
for ns in "$nsa" "$nsb"; do ip -n "$ns" link set lo up; done
ip -n "$nsa" link set "bmA$tag" up
ip -n "$nsb" link set "bmB$tag" up
ina=(nsenter "--net=/run/netns/$nsa")
inb=(nsenter "--net=/run/netns/$nsb")
"$cryo" receive --new-key "$work/key"
security=(--key "$work/key")
[[ -n ${INSECURE:-} ]] && security=(--insecure)   # plain TCP, to see what TLS costs
modes=${MODES:-eager lazy}

say "one full copy of $mib MiB over the link (plain TCP)"
"${inb[@]}" python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.78.0.2", 7461)); s.listen(1)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
' &
sink=$!
sleep 0.3
copy=$("${ina[@]}" python3 -c '
import socket, time
n = '"$mib"' << 20; buf = bytes(4 << 20); s = socket.create_connection(("10.78.0.2", 7461)); t = time.monotonic(); left = n
while left > 0:
    s.sendall(buf[:min(left, len(buf))]); left -= min(left, len(buf))
s.shutdown(socket.SHUT_WR); s.recv(1); print("%.3f" % (time.monotonic() - t))
')
wait "$sink"
say "one copy: $copy s"

printf '\n%-6s %-4s %-7s %-44s %-9s %-9s %-8s %-8s %s\n' mode run rounds "bytes per round (MiB)" "frozen s" "total s" "gap ms" "x copy" result
for ((run = 1; run <= runs; run++)); do
    for mode in $modes; do
        log=$work/migrant-$mode-$run.log
        setsid "${ina[@]}" "$work/migrant" "$mib" "$rate" >"$log" 2>&1 </dev/null &
        src=$!
        live+=("$src")
        for ((i = 0; i < 1200; i++)); do grep -q READY "$log" && break; sleep 0.1; done
        grep -q READY "$log" || fail "migrant printed no READY"
        sleep 2   # writing at its rate for a while
        extra=()
        [[ -n ${TIMELINE:-} ]] && extra=(-v)
        [[ $mode == lazy ]] && extra+=(--lazy-pages)
        [[ $mode == lazy1 ]] && extra+=(--lazy-pages --max-rounds 1)   # post-copy right after the first round
        "${inb[@]}" "$cryo" receive --listen 10.78.0.2:7460 "${security[@]}" --pidns -v >"$work/receive.out" 2>"$work/receive.err" &
        recv=$!
        for ((i = 0; i < 100; i++)); do "${inb[@]}" ss -ltnH | grep -q ':7460' && break; sleep 0.05; done
        if ! "${ina[@]}" "$cryo" migrate -t "$src" --to 10.78.0.2:7460 "${security[@]}" --display-stats "${extra[@]}" >"$work/migrate.out" 2>&1; then
            cat "$work/migrate.out" >&2
            fail "migrate failed"
        fi
        wait "$recv" || { cat "$work/receive.err" >&2; fail "receive failed"; }
        wait "$src" 2>/dev/null || true
        restored=$(sed -n 's/^restored pid [0-9]* as pid \([0-9]*\) .*/\1/p' "$work/receive.out")
        [[ -n $restored ]] || fail "no restored pid: $(cat "$work/receive.out")"
        live+=("$restored")
        sleep 1
        kill -TERM "$restored"
        for ((i = 0; i < 600; i++)); do grep -qE '^(PASS|FAIL)' "$log" && break; sleep 0.1; done
        gap=$(sed -n 's/^GAP \([0-9.]*\) .*/\1/p' "$log")
        result=$(grep -E '^(PASS|FAIL)' "$log" || echo "no result")
        rounds=$(sed -n 's/.*: \([0-9]*\) pre-copy rounds/\1/p' "$work/migrate.out")
        perround=$(awk '/^  round [0-9]+:/ { printf "%s%.1f", sep, $3 / 1048576; sep = " " }' "$work/migrate.out")
        frozen=$(sed -n 's/.*frozen: \([0-9.]*\) s.*/\1/p' "$work/migrate.out")
        total=$(sed -n 's/.*total: \([0-9.]*\) s.*/\1/p' "$work/migrate.out")
        ratio=$(awk "BEGIN { printf \"%.2f\", $total / $copy }")
        printf '%-6s %-4s %-7s %-44s %-9s %-9s %-8s %-8s %s\n' "$mode" "$run" "$rounds" "$perround" "$frozen" "$total" "$gap" "$ratio" "$result"
        if [[ -n ${TIMELINE:-} ]]; then
            # Both ends stamp their steps with CLOCK_REALTIME ms: merged, relative to the freeze.
            { sed -n 's/.*\[\([0-9.]*\) ms\] \(.*\)/\1 source: \2/p' "$work/migrate.out"
              sed -n 's/.*\[\([0-9.]*\) ms\] \(.*\)/\1 destination: \2/p' "$work/receive.err"
              # The service's turns around each pause over 10 ms (migrant stamps them the same way).
              awk '/^SLOW / { printf "%.1f service: last turn before a %.1f ms pause\n%s service: next turn\n", $2 - $3, $3, $2 }' "$log"; } |
                sort -n | awk '/source: froze/ && !seen { t = $1; seen = 1 } NR == 1 && !seen { t = $1 } { lines[NR] = $0; at[NR] = $1 }
                               END { for (i = 1; i <= NR; i++) { sub(/^[0-9.]* /, "", lines[i]); printf "    %+8.1f ms  %s\n", at[i] - t, lines[i] } }'
        fi
        if [[ -n ${VERBOSE:-} ]]; then sed 's/^/    migrate: /' "$work/migrate.out"; grep -v '^$' "$work/receive.err" | sed 's/^/    receive: /'; fi
    done
done
printf '\ntargets: downtime (gap) <= 50 ms; total <= 1.5x one copy (%s s)\n' "$copy"
