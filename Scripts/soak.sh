#!/bin/bash
# cryo soak test: many dump/restore cycles of one process, watching cryo's
# peak memory.
#
#     sudo Scripts/soak.sh                       # 100 cycles, release build
#     CYCLES=20 CRYO=.build/debug/cryo sudo -E Scripts/soak.sh
#
# Tests/Fixtures/counter runs in its own session.  Every cycle does
#   1. `cryo dump --leave-running` into a fresh folder (the counter carries on),
#   2. `cryo dump` into another fresh folder (which kills it), then
#   3. `cryo restore -d` from that folder (it comes back under the same pid),
# each timed by /usr/bin/time for cryo's peak resident set size (%M, KiB).
# Folders are removed after each cycle.  At the end the counter gets SIGTERM
# and must print PASS (its memory and registers survived every cycle).
#
# cryo is a short-lived command, so descriptor counts say nothing here; what
# must not happen is its peak RSS growing with the cycles (it would mean the
# image or the process it handles grows).  The summary prints first, last and
# max per command, and fails when the median of the last 10 cycles is more
# than 10% + 1 MiB above the median of the first 10.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '==> %s\n' "$*"; }
fail() { printf 'soak: FAILED: %s\n' "$*" >&2; exit 1; }

cycles=${CYCLES:-100}
[[ $cycles =~ ^[0-9]+$ && $cycles -ge 1 ]] || fail "CYCLES must be a positive number (got '$cycles')"
[[ $(id -u) -eq 0 ]] || fail "cryo needs root; run: sudo $0"
[[ -x /usr/bin/time ]] || fail "/usr/bin/time is missing (apt-get install time)"

cryo=${CRYO:-}
if [[ -z $cryo ]]; then
    say "setting up and building cryo (Scripts/setup.sh)"
    if ! setup_output=$("$repo/Scripts/setup.sh" 2>&1); then
        printf '%s\n' "$setup_output" | tail -n 40 >&2
        fail "Scripts/setup.sh failed"
    fi
    cryo=$repo/.build/release/cryo
fi
[[ -x $cryo ]] || fail "$cryo is not an executable"

work=$(mktemp -d "${SOAK_DIR:-/var/tmp}/cryo-soak.XXXXXX")
pid=
cleanup() {
    if [[ -n $pid && "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$work/counter" ]]; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cc -O1 -g -o "$work/counter" "$repo/Tests/Fixtures/counter.c" || fail "cannot compile the counter fixture"
log=$work/counter.log
setsid "$work/counter" </dev/null >>"$log" 2>&1 &
pid=$!
disown "$pid"   # bash still reaps it; no "Killed" job notice when a dump kills it
for _ in $(seq 200); do grep -qx READY "$log" && break; sleep 0.05; done
grep -qx READY "$log" || fail "counter printed no READY: $(cat "$log")"
[[ "$(awk '/^Sid:|^NSsid:/ { print $2; exit }' "/proc/$pid/status")" == "$pid" ]] \
    || [[ "$(ps -o sid= -p "$pid" | tr -d ' ')" == "$pid" ]] || fail "counter $pid does not lead its session"
say "counter is pid $pid; $cycles cycles with $cryo"

# run NAME ARGS...: runs cryo under /usr/bin/time, appends its peak RSS (KiB) to $work/NAME.rss.
run() {
    local name=$1; shift
    if ! /usr/bin/time -f %M -o "$work/time.out" "$cryo" "$@" >"$work/cryo.out" 2>"$work/cryo.err"; then
        fail "cryo $* (cycle $cycle): $(cat "$work/cryo.err")"
    fi
    tail -n 1 "$work/time.out" >>"$work/$name.rss"
}

# running: the counter runs (not stopped, traced or gone) under $pid.
running() {
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$work/counter" ]] || return 1
    local state tracer
    state=$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
    tracer=$(awk '/^TracerPid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
    [[ $state == [RSD] && $tracer == 0 ]]
}

started=$SECONDS
for ((cycle = 1; cycle <= cycles; cycle++)); do
    run dump-leave-running dump --leave-running -t "$pid" -D "$work/lr-$cycle"
    running || fail "cycle $cycle: the counter does not run on after a --leave-running dump"
    rm -rf "$work/lr-$cycle"

    run dump dump -t "$pid" -D "$work/full-$cycle"
    for _ in $(seq 200); do [[ -e /proc/$pid ]] || break; sleep 0.02; done
    [[ -e /proc/$pid ]] && fail "cycle $cycle: pid $pid still exists after the dump"

    run restore restore -D "$work/full-$cycle" -d
    for _ in $(seq 200); do running && break; sleep 0.02; done
    running || fail "cycle $cycle: the counter does not run after the restore"
    rm -rf "$work/full-$cycle"
    ((cycle % 10 == 0)) && say "cycle $cycle done ($((SECONDS - started)) s)"
done

kill -TERM "$pid"
for _ in $(seq 500); do [[ -e /proc/$pid ]] || break; sleep 0.02; done
[[ -e /proc/$pid ]] && fail "the counter did not exit after SIGTERM"
last=$(grep -v '^$' "$log" | tail -n 1)
[[ $last == PASS ]] || fail "the counter did not pass after $cycles cycles: $last"
say "the counter passed its check after $cycles cycles ($((SECONDS - started)) s)"

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
grew=0
printf '\n%-20s %10s %10s %10s %10s %10s  (peak RSS, KiB)\n' command first last max "med 1-10" "med last10"
for name in dump-leave-running dump restore; do
    file=$work/$name.rss
    first=$(head -n 1 "$file"); final=$(tail -n 1 "$file"); max=$(sort -n "$file" | tail -n 1)
    early=$(head -n 10 "$file" | median); late=$(tail -n 10 "$file" | median)
    printf '%-20s %10s %10s %10s %10s %10s\n' "$name" "$first" "$final" "$max" "$early" "$late"
    if ((late > early + early / 10 + 1024)); then grew=1; fi
done
((grew == 0)) || fail "cryo's peak RSS grew over the cycles"
say "soak passed: peak RSS did not grow over $cycles cycles"
