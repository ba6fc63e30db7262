#!/bin/bash
# cryo demo: checkpoint a running program, let cryo kill it, bring it back.
#
# Builds cryo (via setup.sh), compiles Scripts/demo/ticker.c, starts it in its
# own session with its output in a log file, dumps it, shows it is gone,
# restores it with the same pid and shows the log carrying on.  Run as root:
#     sudo Scripts/demo.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '\n==> %s\n' "$*"; }
fail() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "cryo needs root (ptrace and clone3 with set_tid); run: sudo $0"

say "setting up and building cryo (Scripts/setup.sh)"
"$repo/Scripts/setup.sh"
cryo=$repo/.build/release/cryo
[[ -x $cryo ]] || fail "$cryo was not built"

work=$(mktemp -d /tmp/cryo-demo.XXXXXX)
pid=
cleanup() {
    # Stop the demo program if it is still around (and still ours), then tidy up.
    # "Ours" means its program is in $work, or it is still our child (the
    # subshell about to become the ticker).
    if [[ -n $pid ]] && { [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$work/"* ]] \
        || [[ "$(awk '/^PPid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)" == "$$" ]]; }; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log=$work/ticker.log
images=$work/images

show_log() {  # the last few lines of the log, indented
    tail -n "${1:-4}" "$log" | sed 's/^/    /'
}
ticks() { grep -c '^tick ' "$log" || true; }
last_tick() { grep '^tick ' "$log" | tail -n 1 | awk '{print $2}'; }
wait_for_ticks() {  # wait until the log has at least $1 tick lines
    for _ in $(seq 100); do
        (($(ticks) >= $1)) && return 0
        sleep 0.1
    done
    fail "the ticker stopped printing (log: $log)"
}

say "compiling the demo program Scripts/demo/ticker.c"
gcc -O2 -Wall -o "$work/ticker" "$repo/Scripts/demo/ticker.c"

say "starting it in its own session (setsid), output to $log"
# The subshell closes every descriptor above 2 it may have inherited (cryo
# would otherwise have to save them too), then becomes the ticker: setsid
# execs directly because a background job here is not a group leader.
(
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        if ((fd > 2)); then eval "exec $fd>&-"; fi
    done
    exec setsid "$work/ticker" </dev/null >"$log" 2>&1
) &
pid=$!
disown "$pid"  # no "Killed" job notice from bash when cryo kills it
sleep 0.2
[[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == ticker ]] || fail "pid $pid is not the ticker"
echo "    pid $pid"
wait_for_ticks 5
say "it has been ticking for a couple of seconds:"
show_log 4

say "cryo dump -t $pid -D $images -v   (freezes it, saves it, kills it)"
"$cryo" dump -t "$pid" -D "$images" -v || fail "cryo dump failed"
# The ticker is still our child (disowned only from the job table): bash
# reaps it, which frees the pid for the restore.
for _ in $(seq 50); do
    [[ -e /proc/$pid ]] || break
    sleep 0.1
done
before=$(last_tick)
lines_before=$(wc -l <"$log")

say "the process is gone:"
if ps -o pid,cmd -p "$pid"; then
    fail "pid $pid still exists after the dump"
fi
echo "    (ps finds no pid $pid; the last line it printed was tick $before)"

say "the image folder ($(du -sh "$images" | cut -f1)):"
# shellcheck disable=SC2012  # just showing the folder to a human
ls -l "$images" | sed 's/^/    /'

say "cryo show $images"
"$cryo" show "$images" || echo "    (cryo show failed; carrying on)"

say "cryo restore -D $images -d -v   (recreates pid $pid and lets it run)"
"$cryo" restore -D "$images" -d -v || fail "cryo restore failed"
sleep 2

say "it runs again with the same pid:"
ps -o pid,cmd -p "$pid" || fail "no process with pid $pid after the restore"

say "and the log carries on where it stopped (tick $before was the last before the dump):"
show_log 6
new_lines=$(tail -n +"$((lines_before + 1))" "$log")
first_after=$(grep '^tick ' <<<"$new_lines" | head -n 1 | awk '{print $2}')
[[ -n $first_after ]] || fail "no new ticks in the log after the restore"
[[ $first_after -eq $((before + 1)) ]] || fail "the first tick after the restore is $first_after, expected $((before + 1))"
grep -q 'sum WRONG' <<<"$new_lines" && fail "the restored ticker reports a wrong checksum"
grep -q ", pid $pid (" <<<"$new_lines" || fail "the restored ticker reports a different pid"
echo "    first tick after the restore: $first_after (= $before + 1), same pid, checksum ok"

say "stopping the demo process (SIGTERM)"
kill -TERM "$pid"
for _ in $(seq 50); do
    [[ -e /proc/$pid ]] || break
    sleep 0.1
done
[[ -e /proc/$pid ]] && fail "pid $pid did not exit after SIGTERM"
pid=
show_log 2

say "demo finished: cryo checkpointed the ticker and restored it with the same pid and memory"
