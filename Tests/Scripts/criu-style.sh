#!/bin/sh
# A checkpoint/restore script as a CRIU user writes it, run unchanged against
# cryo (CRIU=path/to/cryo): pre-dump, dump, restore detached with a pid file.
# Usage: criu-style.sh PID WORKDIR. Prints the restored pid last.
set -eu
CRIU=${CRIU:-criu}
pid=$1
work=$2
mkdir -p "$work/pre" "$work/img" "$work/logs"

$CRIU --version
$CRIU check --feature clone3_set_tid

$CRIU pre-dump -t "$pid" -D "$work/pre" -o pre-dump.log -v4 --track-mem --file-locks --ext-unix-sk \
    --manage-cgroups ignore --display-stats
$CRIU dump --tree "$pid" --images-dir "$work/img" --work-dir "$work/logs" -o dump.log -v4 \
    --prev-images-dir ../pre --track-mem --file-locks --ext-unix-sk --link-remap --ghost-limit 1M \
    --tcp-established --manage-cgroups=ignore --network-lock skip --display-stats
[ -s "$work/logs/dump.log" ] || { echo "no dump log in the work dir" >&2; exit 1; }

$CRIU restore -D "$work/img" -W "$work/logs" -o restore.log -v4 --restore-detached --pidfile restore.pid \
    --tcp-established -l -x --manage-cgroups ignore --network-lock skip --display-stats
restored=$(cat "$work/logs/restore.pid")
kill -0 "$restored"
echo "restored $restored"
