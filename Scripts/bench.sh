#!/bin/bash
# cryo benchmark: dump and restore times against what the machine can do.
#
#     sudo Scripts/bench.sh            # sizes 64 and 2048 MiB, 3 runs each
#     sudo Scripts/bench.sh 256 1024   # other sizes (MiB, multiples of 4)
#     RUNS=5 sudo -E Scripts/bench.sh  # more runs per size
#     SECTIONS="compress precopy" sudo -E Scripts/bench.sh  # only some sections
#     SECTIONS=shapes SHAPES="fds mappings tree" sudo -E Scripts/bench.sh  # only some shapes
#     SCRATCH_PATH=.build-x sudo -E Scripts/bench.sh      # build and use .build-x
#     CRYO_BIN=/tmp/cryo-old sudo -E Scripts/bench.sh     # time that binary, build nothing
#
# For every size the Tests/Fixtures/bigmem fixture maps that many MiB and
# writes three quarters of it.  Right before each dump Scripts/bench/baseline
# measures, for the same number of touched bytes, memcpy bandwidth, the time
# to fault in fresh anonymous memory ("fresh touch") and the time to write a
# new file of that size (no fsync).  Then `cryo dump` and `cryo restore -d` are
# timed by wall clock (restore -d returns once the process runs again), the
# restored bigmem gets SIGTERM and must report PASS.  Every column of the
# table is the median over the runs; the ratios are medians of the per-run
# ratios.  A minimal process (Tests/Fixtures/counter) is timed the same way,
# and so is a tree of 127 processes (Tests/Fixtures/tree, TREE_PROCS to change
# the count): its dump and restore seconds are shown next to CRIU 4.2's on
# this machine (0.560 s and 0.260 s, from ../shared/FIELD-NOTES.md).
#
# Compression (section "compress"): bigmem of $COMPRESS_MIB MiB (default 512)
# filled with compressible ("text") and incompressible ("random") words is
# dumped and restored without and with `dump --compress`, both in every run:
# the table gives each pair and the ratios of image size and time.
#
# Pre-copy (section "precopy"): bigmem of $PRECOPY_MIB MiB (default 2048),
# 3/4 touched, is dumped in full once per run (the baseline); a second one
# gets `cryo pre-dump`, rewrites 1% of its memory (SIGUSR1) and is dumped with
# --prev-images-dir.  Frozen times come from each image's stats-dump; the
# target is the final dump frozen for under 10% of the full dump's time.
# Scripts/bench/baseline runs right before both dumps, as for the memory rows
# (so neither dump pays for touching cold guest memory first).  The same is
# done to Tests/Fixtures/shapes holes of $PRECOPY_MIB MiB (every 4th page
# untouched, SIGUSR1 rewrites 3 pages): its final dump's frozen time beside
# the issue's target of 0.05 s.
#
# Lazy restore (section "lazy"): bigmem of $LAZY_MIB MiB (default 2048), 3/4
# touched, and Tests/Fixtures/shapes holes of $HOLES_MIB MiB (every 4th page
# untouched, issue 16's targets), restored with `restore -d` and `restore -d
# --lazy-pages` in every run, each timed by Scripts/bench/lazyprobe from the
# start of the command:
# when the restored process first answers (SIGUSR2 -> "PONG"), when cryo
# returns, and when all its memory is in (the background loader has exited).
#
# Memory shapes (section "shapes"): Tests/Fixtures/shapes and the tree and
# threads fixtures laid out as real programs are: 2 GiB with every 4th page
# untouched ($HOLES_MIB), 512 MiB with a random half touched, 10,000 small
# mappings of mixed protections, 10,000 descriptors, 127 processes, 64
# threads.  Each is dumped and restored (-d) once per run; the memory shapes
# beside the same-run baselines for their touched bytes (file write, fresh
# touch, UFFDIO_COPY in 256 KiB pieces into fresh memory), with the ratios,
# and every shape beside CRIU 4.2's recorded figures on this machine kind
# (../shared/FIELD-NOTES.md and issue 16; "-" where none was recorded; the
# CRIU rows for 1000 files and 4000 mappings stand for 10,000 here; 1000
# descriptors and 4000 mappings are measured too, beside CRIU's own figures
# for those counts).
#
# The image folders (about 3/4 of the size each) live under $BENCH_DIR
# (default /var/tmp) and are removed after every run.

# The table's printf format is kept in one variable on purpose.
# shellcheck disable=SC2059
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '==> %s\n' "$*"; }
fail() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }

sizes=("$@")
((${#sizes[@]})) || sizes=(64 2048)
sections=" ${SECTIONS:-memory counter tree compress precopy lazy shapes} "
holes_mib=${HOLES_MIB:-2048}
compress_mib=${COMPRESS_MIB:-512}
precopy_mib=${PRECOPY_MIB:-2048}
lazy_mib=${LAZY_MIB:-2048}
want() { [[ $sections == *" $1 "* ]]; }
runs=${RUNS:-3}
tree_procs=${TREE_PROCS:-127}
for size in "${sizes[@]}"; do
    [[ $size =~ ^[0-9]+$ && $size -ge 4 && $((size % 4)) -eq 0 ]] || fail "sizes are MiB, multiples of 4 (got '$size')"
done
[[ $runs =~ ^[0-9]+$ && $runs -ge 1 ]] || fail "RUNS must be a positive number (got '$runs')"
[[ $tree_procs =~ ^[0-9]+$ && $tree_procs -ge 1 && $tree_procs -le 2000 ]] || fail "TREE_PROCS must be 1..2000 (got '$tree_procs')"
[[ $(id -u) -eq 0 ]] || fail "cryo needs root; run: sudo $0 $*"

if [[ -n ${CRYO_BIN:-} ]]; then   # a cryo built before (another commit's, to compare): no setup, no build
    cryo=$CRYO_BIN
else
    say "setting up and building cryo (Scripts/setup.sh)"
    if ! setup_output=$("$repo/Scripts/setup.sh" 2>&1); then
        printf '%s\n' "$setup_output" | tail -n 40 >&2
        fail "Scripts/setup.sh failed"
    fi
    scratch=${SCRATCH_PATH:-.build}
    [[ $scratch == /* ]] || scratch=$repo/$scratch
    cryo=$scratch/release/cryo
fi
[[ -x $cryo ]] || fail "$cryo was not built"

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/cryo-bench.XXXXXX")
live_pid=     # the fixture currently running, killed on any failure
live_name=
live_members=()  # all its processes (a tree fixture prints "PIDS root ..."), killed too

# ours PID: the pid is a fixture this script started (its program lives in
# $work), or still our own child (the subshell that is about to become one).
ours() {
    [[ "$(readlink "/proc/$1/exe" 2>/dev/null)" == "$work/"* ]] \
        || [[ "$(awk '/^PPid:/ { print $2 }' "/proc/$1/status" 2>/dev/null)" == "$$" ]]
}

cleanup() {
    local pid
    if [[ -n $live_pid ]] && ours "$live_pid"; then
        kill -KILL "$live_pid" 2>/dev/null || true
        wait_gone "$live_pid" 10 || true
    fi
    for pid in "${live_members[@]}"; do
        if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    for pid in "${live_members[@]}"; do
        if ours "$pid"; then wait_gone "$pid" 10 || true; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "compiling baseline and fixtures into $work"
gcc -O2 -Wall -o "$work/baseline" "$repo/Scripts/bench/baseline.c"
gcc -O1 -Wall -o "$work/bigmem" "$repo/Tests/Fixtures/bigmem.c"
gcc -O1 -Wall -o "$work/counter" "$repo/Tests/Fixtures/counter.c"
gcc -O1 -Wall -o "$work/tree" "$repo/Tests/Fixtures/tree.c"
gcc -O2 -Wall -o "$work/lazyprobe" "$repo/Scripts/bench/lazyprobe.c"
gcc -O1 -Wall -o "$work/shapes" "$repo/Tests/Fixtures/shapes.c"
gcc -O1 -Wall -pthread -o "$work/threads" "$repo/Tests/Fixtures/threads.c"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }

wait_gone() {  # pid seconds: wait until the pid no longer exists
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        [[ -e /proc/$1 ]] || return 0
        sleep 0.05
    done
    return 1
}

# start_fixture NAME ARGS...: start a fixture in its own session, output to
# $work/NAME.log, and wait for READY.  Sets live_pid/live_name, and
# live_members to the pids of its "PIDS" line (just live_pid without one).
start_fixture() {
    local name=$1
    shift
    local log=$work/$name.log
    rm -f "$log"  # so that the READY of a previous run does not count
    (
        for fd in /proc/self/fd/*; do  # inherited descriptors would end up in the image
            fd=${fd##*/}
            if ((fd > 2)); then eval "exec $fd>&-"; fi
        done
        exec setsid "$work/$name" "$@" </dev/null >"$log" 2>&1
    ) &
    live_pid=$!
    live_name=$name
    live_members=("$live_pid")
    disown "$live_pid"  # bash reaps it quietly when cryo kills it
    local i
    for ((i = 0; i < 6000; i++)); do
        grep -q '^READY' "$log" 2>/dev/null && break
        [[ -e /proc/$live_pid ]] || fail "$name exited before READY: $(cat "$log")"
        sleep 0.05
    done
    grep -q '^READY' "$log" 2>/dev/null || fail "$name did not print READY within 300 s"
    [[ "$(cat "/proc/$live_pid/comm")" == "$name" ]] || fail "pid $live_pid is not $name"
    if grep -q '^PIDS ' "$log"; then
        read -r -a live_members <<<"$(sed -n 's/^PIDS //p' "$log" | head -n 1)"
        [[ ${live_members[0]} == "$live_pid" ]] || fail "$name's PIDS line does not start with its pid $live_pid"
    fi
}

# all_members_are NAME: every pid of live_members runs NAME (after a restore).
all_members_are() {
    local pid
    for pid in "${live_members[@]}"; do
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] || return 1
    done
}

# dump_and_restore IMAGES [DUMP OPTIONS...]: time cryo dump and cryo restore -d
# of live_pid.  Sets dump_s, restore_s, image_mib, frozen_s.
dump_and_restore() {
    local images=$1 t0 t1
    shift
    t0=$(now)
    "$cryo" dump -t "$live_pid" -D "$images" "$@" || fail "cryo dump -t $live_pid -D $images $* failed (exit $?)"
    t1=$(now)
    dump_s=$(calc "$t1 - $t0")
    wait_gone "$live_pid" 10 || fail "pid $live_pid still exists 10 s after cryo dump returned"
    local pid
    for pid in "${live_members[@]}"; do
        wait_gone "$pid" 10 || fail "pid $pid of $live_name's tree still exists 10 s after cryo dump returned"
    done
    image_mib=$(calc "$(du -sb "$images" | cut -f1) / 1048576")
    frozen_s=$(sed -n 's/.*"frozenSeconds" *: *\([0-9.eE+-]*\).*/\1/p' "$images/stats-dump" 2>/dev/null || true)
    frozen_s=${frozen_s:--}
    t0=$(now)
    "$cryo" restore -D "$images" -d || fail "cryo restore -D $images -d failed (exit $?)"
    t1=$(now)
    restore_s=$(calc "$t1 - $t0")
    [[ "$(cat "/proc/$live_pid/comm" 2>/dev/null)" == "$live_name" ]] \
        || fail "after cryo restore there is no $live_name with pid $live_pid"
    all_members_are "$live_name" || fail "after cryo restore not all ${#live_members[@]} pids of $live_name's tree run $live_name"
}

# finish_fixture: SIGTERM the restored fixture and require PASS in its log.
finish_fixture() {
    local log=$work/$live_name.log i
    kill -TERM "$live_pid"
    for ((i = 0; i < 6000; i++)); do
        grep -qE '^(PASS|FAIL)' "$log" && break
        [[ -e /proc/$live_pid ]] || break
        sleep 0.05
    done
    wait_gone "$live_pid" 30 || fail "restored $live_name (pid $live_pid) did not exit after SIGTERM"
    live_pid=
    live_members=()
    grep -q '^PASS' "$log" || fail "restored $live_name did not pass: $(grep -E '^(PASS|FAIL)' "$log" || echo 'no PASS/FAIL line')"
}

check_disk() {  # MiB needed in $work
    local avail
    avail=$(df --output=avail -BM "$work" | tail -n 1 | tr -dc 0-9)
    ((avail >= $1)) || fail "only $avail MiB free in $work, need $1 MiB"
}

median() {  # the median of the arguments (numbers)
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) printf "%.6f\n", v[(NR + 1) / 2]
        else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

say "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, THP $(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo '?'), images in $work"

declare -A result  # "size,column" -> median
want memory || sizes=()
for size in "${sizes[@]}"; do
    touched=$((size * 3 / 4))  # bigmem writes 3/4 of its pages
    declare -a d_s=() r_s=() img=() frz=() cp=() tch=() tch1=() fw=() q_fw=() q_dt=() q_rt=()
    for ((run = 1; run <= runs; run++)); do
        check_disk $((touched * 2 + 1024))
        sync
        start_fixture bigmem "$size"
        base=$("$work/baseline" "$touched" "$work") || fail "baseline $touched $work failed"
        memcpy_gbps=$(sed -n 's/^memcpy_gbps=//p' <<<"$base")
        touch_s=$(sed -n 's/^fresh_touch_s=//p' <<<"$base")
        write_s=$(sed -n 's/^file_write_s=//p' <<<"$base")
        touch_first_s=$(sed -n 's/^fresh_touch_first_s=//p' <<<"$base")
        write_first_s=$(sed -n 's/^file_write_first_s=//p' <<<"$base")
        dump_and_restore "$work/images"
        finish_fixture
        rm -rf "$work/images"
        d_s+=("$dump_s") r_s+=("$restore_s") img+=("$image_mib") cp+=("$memcpy_gbps")
        tch+=("$touch_s") tch1+=("$touch_first_s") fw+=("$write_s")
        [[ $frozen_s != - ]] && frz+=("$frozen_s")
        q_fw+=("$(calc "$dump_s / $write_s")") q_dt+=("$(calc "$dump_s / $touch_s")") q_rt+=("$(calc "$restore_s / $touch_s")")
        [[ $frozen_s != - ]] && frozen_s=$(printf '%.3f' "$frozen_s")
        printf '    %5d MiB run %d: dump %.3f s (frozen %s s), restore %.3f s, image %.1f MiB | memcpy %.2f GB/s, fresh touch %.3f s (1st %.3f), file write %.3f s (1st %.3f)  PASS\n' \
            "$size" "$run" "$dump_s" "$frozen_s" "$restore_s" "$image_mib" "$memcpy_gbps" "$touch_s" "$touch_first_s" "$write_s" "$write_first_s"
    done
    result[$size,dump]=$(median "${d_s[@]}")
    result[$size,restore]=$(median "${r_s[@]}")
    result[$size,image]=$(median "${img[@]}")
    result[$size,frozen]=$( ((${#frz[@]})) && median "${frz[@]}" || echo -)
    result[$size,memcpy]=$(median "${cp[@]}")
    result[$size,touch]=$(median "${tch[@]}")
    result[$size,touch1]=$(median "${tch1[@]}")
    result[$size,write]=$(median "${fw[@]}")
    result[$size,q_fw]=$(median "${q_fw[@]}")
    result[$size,q_dt]=$(median "${q_dt[@]}")
    result[$size,q_rt]=$(median "${q_rt[@]}")
    result[$size,touched]=$touched
done

declare -a c_d=() c_r=() c_i=()
for ((run = 1; run <= runs; run++)); do
    want counter || break
    start_fixture counter
    sleep 0.2  # the counter must advance after READY
    dump_and_restore "$work/images"
    sleep 0.2
    finish_fixture
    rm -rf "$work/images"
    c_d+=("$dump_s") c_r+=("$restore_s") c_i+=("$image_mib")
    printf '    counter run %d: dump %.3f s, restore %.3f s, image %.1f MiB  PASS\n' "$run" "$dump_s" "$restore_s" "$image_mib"
done

# A tree of processes (every one has pipes to its parent and children, several
# sessions and groups); the restore is done when every process runs again.
declare -a t_d=() t_r=() t_i=() t_f=()
for ((run = 1; run <= runs; run++)); do
    want tree || break
    start_fixture tree "$tree_procs"
    ((${#live_members[@]} == tree_procs)) || fail "tree $tree_procs reported ${#live_members[@]} pids"
    dump_and_restore "$work/images"
    finish_fixture
    rm -rf "$work/images"
    t_d+=("$dump_s") t_r+=("$restore_s") t_i+=("$image_mib")
    [[ $frozen_s != - ]] && t_f+=("$frozen_s") && frozen_s=$(printf '%.3f' "$frozen_s")
    printf '    tree %d run %d: dump %.3f s (frozen %s s), restore %.3f s, image %.1f MiB  PASS\n' \
        "$tree_procs" "$run" "$dump_s" "$frozen_s" "$restore_s" "$image_mib"
done
tree_dump=$(median "${t_d[@]}")
tree_restore=$(median "${t_r[@]}")
tree_frozen=$( ((${#t_f[@]})) && printf '%.3f' "$(median "${t_f[@]}")" || echo -)
# CRIU 4.2 on this machine, same fixture (../shared/FIELD-NOTES.md, medians).
criu_tree_dump=0.560 criu_tree_restore=0.260 criu_tree_image=23

if want memory && want counter && want tree; then
echo
echo "cryo benchmark: medians of $runs runs; MB and GB are 10^6 and 10^9 bytes; MB/s = touched bytes / time;"
echo "baseline columns are for the same touched bytes, measured right before each dump; fresh touch and file write"
echo "are the best of 3 and 2 rounds, '1st touch' the first round (slower in a VM when guest memory is cold);"
echo "the restore reads the image back from the page cache.  \"tree $tree_procs\" is Tests/Fixtures/tree with $tree_procs processes"
if ((tree_procs == 127)); then
    echo "(restore -d returns when all of them run); the CRIU 4.2 row is quoted from ../shared/FIELD-NOTES.md (same machine)."
else
    echo "(restore -d returns when all of them run)."
fi
echo
fmt='%-8s %7s | %7s %8s %7s %8s %8s %7s | %7s %8s %8s %8s | %10s %10s %10s\n'
printf "$fmt" size touched "dump" "frozen" "dump" "restore" "restore" "image" memcpy "fresh" "1st" "file" "dump /" "dump /" "restore /"
printf "$fmt" MiB MiB "s" "s" "MB/s" s "MB/s" MiB "GB/s" "touch s" "touch s" "write s" "file write" "fresh tch" "fresh tch"
printf '%s\n' "$(printf '%.0s-' {1..139})"
for size in "${sizes[@]}"; do
    t=${result[$size,touched]}
    bytes=$(calc "$t * 1048576")
    frozen=${result[$size,frozen]}
    [[ $frozen != - ]] && frozen=$(printf '%.3f' "$frozen")
    printf "$fmt" "$size" "$t" \
        "$(printf '%.3f' "${result[$size,dump]}")" "$frozen" \
        "$(printf '%.0f' "$(calc "$bytes / 1e6 / ${result[$size,dump]}")")" \
        "$(printf '%.3f' "${result[$size,restore]}")" \
        "$(printf '%.0f' "$(calc "$bytes / 1e6 / ${result[$size,restore]}")")" \
        "$(printf '%.1f' "${result[$size,image]}")" \
        "$(printf '%.2f' "${result[$size,memcpy]}")" \
        "$(printf '%.3f' "${result[$size,touch]}")" \
        "$(printf '%.3f' "${result[$size,touch1]}")" \
        "$(printf '%.3f' "${result[$size,write]}")" \
        "$(printf '%.2fx' "${result[$size,q_fw]}")" \
        "$(printf '%.2fx' "${result[$size,q_dt]}")" \
        "$(printf '%.2fx' "${result[$size,q_rt]}")"
done
printf "$fmt" counter - "$(printf '%.3f' "$(median "${c_d[@]}")")" - - \
    "$(printf '%.3f' "$(median "${c_r[@]}")")" - "$(printf '%.1f' "$(median "${c_i[@]}")")" - - - - - - -
printf "$fmt" "tree $tree_procs" - "$(printf '%.3f' "$tree_dump")" "$tree_frozen" - \
    "$(printf '%.3f' "$tree_restore")" - "$(printf '%.1f' "$(median "${t_i[@]}")")" - - - - - - -
if ((tree_procs == 127)); then
    printf "$fmt" "CRIU 4.2" - "$(printf '%.3f' "$criu_tree_dump")" - - "$(printf '%.3f' "$criu_tree_restore")" - \
        "$(printf '%.1f' "$criu_tree_image")" - - - - - - -
    echo
    printf 'tree 127: cryo dump %.3f s = %.2fx, restore %.3f s = %.2fx of CRIU 4.2 on this machine (%.2f s, %.2f s; ../shared/FIELD-NOTES.md)\n' \
        "$tree_dump" "$(calc "$tree_dump / $criu_tree_dump")" "$tree_restore" "$(calc "$tree_restore / $criu_tree_restore")" \
        "$criu_tree_dump" "$criu_tree_restore"
fi

echo
# The targets are stated for 2 GiB; with other sizes, judge the largest.
target_size=$(printf '%s\n' "${sizes[@]}" | sort -n | tail -n 1)
[[ " ${sizes[*]} " == *" 2048 "* ]] && target_size=2048
# Issue #6: dump within 1.2x of writing the touched pages to a new file, restore within 1.2x of touching them fresh.
for target in "dump:q_fw:writing them to a file" "restore:q_rt:touching them fresh"; do
    IFS=: read -r what column baseline <<<"$target"
    ratio=${result[$target_size,$column]}
    verdict=$(awk "BEGIN { print ($ratio <= 1.2) ? \"met\" : \"NOT met\" }")
    printf 'target: %s of %s MiB within 1.2x of %s: %.2fx, %s\n' "$what" "$target_size" "$baseline" "$ratio" "$verdict"
done
fi

# --- compression: the same fixture dumped and restored plain and --compress, in every run ---
declare -A comp
for pattern in text random; do
    want compress || break
    declare -a p_d=() p_r=() p_i=() z_d=() z_r=() z_i=() q_i=() q_d=() q_r=()
    for ((run = 1; run <= runs; run++)); do
        check_disk $((compress_mib * 2 + 1024))
        sync
        start_fixture bigmem "$compress_mib" "$pattern"
        dump_and_restore "$work/images"
        finish_fixture
        rm -rf "$work/images"
        local_plain=("$dump_s" "$restore_s" "$image_mib")
        sync
        start_fixture bigmem "$compress_mib" "$pattern"
        dump_and_restore "$work/images" --compress
        finish_fixture
        rm -rf "$work/images"
        p_d+=("${local_plain[0]}") p_r+=("${local_plain[1]}") p_i+=("${local_plain[2]}")
        z_d+=("$dump_s") z_r+=("$restore_s") z_i+=("$image_mib")
        q_i+=("$(calc "${local_plain[2]} / $image_mib")") q_d+=("$(calc "$dump_s / ${local_plain[0]}")")
        q_r+=("$(calc "$restore_s / ${local_plain[1]}")")
        printf '    compress %s %d MiB run %d: plain dump %.3f s restore %.3f s image %.1f MiB | --compress dump %.3f s restore %.3f s image %.1f MiB  PASS\n' \
            "$pattern" "$compress_mib" "$run" "${local_plain[@]}" "$dump_s" "$restore_s" "$image_mib"
    done
    for k in p_d p_r p_i z_d z_r z_i q_i q_d q_r; do
        declare -n arr=$k
        comp[$pattern,$k]=$(median "${arr[@]}")
        unset -n arr
    done
done
if want compress; then
    touched_mb=$(calc "$compress_mib * 3 / 4 * 1048576 / 1e6")
    echo
    echo "compression: bigmem $compress_mib MiB (3/4 touched), each run dumps and restores it plain and with --compress;"
    echo "medians of $runs runs; MB/s = touched bytes / time; ratio = plain image / compressed image; x = compressed / plain time"
    echo
    cfmt='%-8s | %8s %8s %9s | %8s %8s %9s | %6s %8s %8s | %7s %7s\n'
    printf "$cfmt" pattern "dump s" "rest. s" "image MiB" "dump s" "rest. s" "image MiB" ratio "dump MB/s" "rest MB/s" "dump x" "rest. x"
    printf "$cfmt" "" plain plain plain zstd zstd zstd "" zstd zstd "" ""
    printf '%s\n' "$(printf '%.0s-' {1..118})"
    for pattern in text random; do
        printf "$cfmt" "$pattern" \
            "$(printf '%.3f' "${comp[$pattern,p_d]}")" "$(printf '%.3f' "${comp[$pattern,p_r]}")" "$(printf '%.1f' "${comp[$pattern,p_i]}")" \
            "$(printf '%.3f' "${comp[$pattern,z_d]}")" "$(printf '%.3f' "${comp[$pattern,z_r]}")" "$(printf '%.1f' "${comp[$pattern,z_i]}")" \
            "$(printf '%.2f' "${comp[$pattern,q_i]}")" \
            "$(printf '%.0f' "$(calc "$touched_mb / ${comp[$pattern,z_d]}")")" "$(printf '%.0f' "$(calc "$touched_mb / ${comp[$pattern,z_r]}")")" \
            "$(printf '%.2fx' "${comp[$pattern,q_d]}")" "$(printf '%.2fx' "${comp[$pattern,q_r]}")"
    done
fi

# --- pre-copy: full dump (baseline) and pre-dump + dump --prev-images-dir of the same size, in every run ---
if want precopy; then
    declare -a f_f=() f_d=() c_f=() c_d=() c_p=() c_pf=() c_q=() h_p=() h_pf=() h_d=() h_f=()
    for ((run = 1; run <= runs; run++)); do
        check_disk $((precopy_mib * 2 + 1024))
        sync
        start_fixture bigmem "$precopy_mib"
        # The same warm-up as the memory rows: guest memory first touched by the baseline, not by the dump.
        "$work/baseline" "$((precopy_mib * 3 / 4))" "$work" >/dev/null || fail "baseline failed"
        dump_and_restore "$work/images"
        finish_fixture
        rm -rf "$work/images"
        full_frozen=$frozen_s full_dump=$dump_s
        sync
        start_fixture bigmem "$precopy_mib"
        t0=$(now)
        "$cryo" pre-dump -t "$live_pid" -D "$work/pre" || fail "cryo pre-dump -t $live_pid -D $work/pre failed (exit $?)"
        t1=$(now)
        pre_s=$(calc "$t1 - $t0")
        pre_frozen=$(sed -n 's/.*"frozenSeconds" *: *\([0-9.eE+-]*\).*/\1/p' "$work/pre/stats-dump")
        kill -USR1 "$live_pid"
        for ((i = 0; i < 600; i++)); do grep -q '^REWROTE 1' "$work/bigmem.log" && break; sleep 0.05; done
        grep -q '^REWROTE 1' "$work/bigmem.log" || fail "bigmem did not rewrite its 1% after SIGUSR1"
        "$work/baseline" "$((precopy_mib * 3 / 4))" "$work" >/dev/null || fail "baseline failed"
        dump_and_restore "$work/images" --prev-images-dir ../pre
        finish_fixture
        rm -rf "$work/images" "$work/pre"
        f_f+=("$full_frozen") f_d+=("$full_dump") c_f+=("$frozen_s") c_d+=("$dump_s") c_p+=("$pre_s") c_pf+=("$pre_frozen")
        c_q+=("$(calc "$frozen_s / $full_frozen")")
        printf '    pre-copy %d MiB run %d: full dump %.3f s (frozen %.3f s) | pre-dump %.3f s (frozen %.3f s), 1%% rewritten, dump %.3f s (frozen %.3f s) = %.1f%% of full frozen  PASS\n' \
            "$precopy_mib" "$run" "$full_dump" "$full_frozen" "$pre_s" "$pre_frozen" "$dump_s" "$frozen_s" "$(calc "100 * $frozen_s / $full_frozen")"
        # The fragmented shape (every 4th page untouched, ~131k runs at 2 GiB): pre-dump, 3 pages rewritten, final dump.
        check_disk $((precopy_mib * 2 + 1024))
        sync
        start_fixture shapes holes "$precopy_mib"
        t0=$(now)
        "$cryo" pre-dump -t "$live_pid" -D "$work/pre" || fail "cryo pre-dump -t $live_pid -D $work/pre failed (exit $?)"
        t1=$(now)
        h_pre_s=$(calc "$t1 - $t0")
        h_pre_frozen=$(sed -n 's/.*"frozenSeconds" *: *\([0-9.eE+-]*\).*/\1/p' "$work/pre/stats-dump")
        kill -USR1 "$live_pid"
        for ((i = 0; i < 600; i++)); do grep -q '^REWROTE 1' "$work/shapes.log" && break; sleep 0.05; done
        grep -q '^REWROTE 1' "$work/shapes.log" || fail "shapes holes did not rewrite its pages after SIGUSR1"
        "$work/baseline" "$((precopy_mib * 3 / 4))" "$work" >/dev/null || fail "baseline failed"
        dump_and_restore "$work/images" --prev-images-dir ../pre
        finish_fixture
        rm -rf "$work/images" "$work/pre"
        h_p+=("$h_pre_s") h_pf+=("$h_pre_frozen") h_d+=("$dump_s") h_f+=("$frozen_s")
        printf '    pre-copy holes %d MiB run %d: pre-dump %.3f s (frozen %.3f s), 3 pages rewritten, dump %.3f s (frozen %.3f s)  PASS\n' \
            "$precopy_mib" "$run" "$h_pre_s" "$h_pre_frozen" "$dump_s" "$frozen_s"
    done
    echo
    echo "pre-copy: bigmem $precopy_mib MiB (3/4 touched); baseline = a full dump of a fresh bigmem in the same run;"
    echo "then pre-dump, 1% of the memory rewritten, dump --prev-images-dir (restored and checked); medians of $runs runs"
    echo
    pfmt='%-22s | %9s %9s | %9s %9s | %9s %9s | %10s\n'
    printf "$pfmt" "" "full" "full" "pre-dump" "pre-dump" "final" "final" "final /"
    printf "$pfmt" "" "dump s" "frozen s" "s" "frozen s" "dump s" "frozen s" "full frozen"
    printf '%s\n' "$(printf '%.0s-' {1..106})"
    ratio=$(median "${c_q[@]}")
    printf "$pfmt" "bigmem $precopy_mib MiB" "$(printf '%.3f' "$(median "${f_d[@]}")")" "$(printf '%.3f' "$(median "${f_f[@]}")")" \
        "$(printf '%.3f' "$(median "${c_p[@]}")")" "$(printf '%.3f' "$(median "${c_pf[@]}")")" \
        "$(printf '%.3f' "$(median "${c_d[@]}")")" "$(printf '%.3f' "$(median "${c_f[@]}")")" "$(printf '%.1f%%' "$(calc "100 * $ratio")")"
    printf "$pfmt" "holes $precopy_mib MiB" - - \
        "$(printf '%.3f' "$(median "${h_p[@]}")")" "$(printf '%.3f' "$(median "${h_pf[@]}")")" \
        "$(printf '%.3f' "$(median "${h_d[@]}")")" "$(printf '%.3f' "$(median "${h_f[@]}")")" -
    echo
    verdict=$(awk "BEGIN { print ($ratio < 0.10) ? \"met\" : \"NOT met\" }")
    printf 'target: pre-copy final dump frozen under 10%% of a full dump'"'"'s: %.1f%%, %s\n' "$(calc "100 * $ratio")" "$verdict"
    holes_frozen=$(median "${h_f[@]}")
    verdict=$(awk "BEGIN { print ($holes_frozen <= 0.05) ? \"met\" : \"NOT met\" }")
    printf 'target: the fragmented (holes) final dump after a pre-dump frozen at most 0.05 s (issue 16): %.3f s, %s\n' "$holes_frozen" "$verdict"
fi

# lazy_restore_rows SIZE [holes]: bigmem of SIZE MiB (with "holes": shapes
# holes, every 4th page never touched) restored with `restore -d` and with
# `restore -d --lazy-pages`, alternating within each run, each timed by
# lazyprobe from the start of the command.
lazy_restore_rows() {
    local size=$1 shape=${2:-} run mode out
    local -a fixture=(bigmem "$size") e_run=() e_done=() l_run=() l_cryo=() l_done=() ratio=()
    local label="bigmem $size MiB"
    # Issue 16's targets for the fragmented process; the older ones for bigmem.
    local running_target=0.050 loaded_target=1.2
    if [[ $shape == holes ]]; then
        fixture=(shapes holes "$size") label="shapes holes $size MiB" running_target=0.100 loaded_target=1.0
    fi
    for ((run = 1; run <= runs; run++)); do
        local eager_done=
        for mode in eager lazy; do
            check_disk $((size + 1024))
            start_fixture "${fixture[@]}"
            "$cryo" dump -t "$live_pid" -D "$work/images" || fail "cryo dump -t $live_pid -D $work/images failed"
            wait_gone "$live_pid" 10 || fail "pid $live_pid still exists 10 s after cryo dump returned"
            local args=(restore -D "$work/images" -d)
            [[ $mode == lazy ]] && args+=(--lazy-pages)
            out=$("$work/lazyprobe" "$live_pid" "$work/${fixture[0]}.log" "$cryo" "${args[@]}") \
                || fail "lazyprobe: cryo ${args[*]} failed"
            local r c d
            r=$(sed -n 's/^running_s=//p' <<<"$out")
            c=$(sed -n 's/^cryo_s=//p' <<<"$out")
            d=$(sed -n 's/^loaded_s=//p' <<<"$out")
            finish_fixture
            rm -rf "$work/images"
            if [[ $mode == eager ]]; then
                e_run+=("$r") e_done+=("$c") eager_done=$c
            else
                l_run+=("$r") l_cryo+=("$c") l_done+=("$d") ratio+=("$(calc "$d / $eager_done")")
            fi
            printf '    %s run %d %-5s: running after %.3f s, cryo returned after %.3f s, all memory in after %.3f s  PASS\n' \
                "$label" "$run" "$mode" "$r" "$c" "$d"
        done
    done
    local lazy_running lazy_ratio
    lazy_running=$(median "${l_run[@]}")
    lazy_ratio=$(median "${ratio[@]}")
    echo
    echo "restore --lazy-pages of $label ($((size * 3 / 4)) MiB touched): seconds from the start of \`cryo restore -d\`,"
    echo "medians of $runs runs, eager and lazy alternating in each run; running = the restored process answered SIGUSR2"
    printf '%-14s %10s %12s %14s\n' restore "running s" "cryo done s" "memory in s"
    printf '%-14s %10.3f %12.3f %14.3f\n' eager "$(median "${e_run[@]}")" "$(median "${e_done[@]}")" "$(median "${e_done[@]}")"
    printf '%-14s %10.3f %12.3f %14.3f\n' "--lazy-pages" "$lazy_running" "$(median "${l_cryo[@]}")" "$(median "${l_done[@]}")"
    printf 'target: lazy restore of %s running within %.3f s: %.3f s, %s\n' "$label" "$running_target" "$lazy_running" \
        "$(awk "BEGIN { print ($lazy_running <= $running_target) ? \"met\" : \"NOT met\" }")"
    printf 'target: lazy restore of %s fully loaded within %.1fx of the eager restore: %.2fx, %s\n' "$label" "$loaded_target" "$lazy_ratio" \
        "$(awk "BEGIN { print ($lazy_ratio <= $loaded_target) ? \"met\" : \"NOT met\" }")"
}

# --- lazy restore: bigmem and the fragmented shape restored eagerly and with --lazy-pages, in every run ---
if want lazy; then
    echo
    lazy_restore_rows "$lazy_mib"
    echo
    lazy_restore_rows "$holes_mib" holes
fi

# --- memory shapes: each beside its same-run baselines and CRIU 4.2's recorded figures ---
if want shapes; then
    # name | fixture and arguments | touched MiB (0: no memory baseline) | CRIU dump s | CRIU restore s
    shape_specs=(
        "holes $holes_mib MiB|shapes holes $holes_mib|$((holes_mib * 3 / 4))|1.268|1.045"
        "half 512 MiB|shapes half 512|256|-|-"
        "4000 mappings|shapes maps 4000|31|0.119|0.052"
        "10000 mappings|shapes maps 10000|78|0.119|0.052"
        "1000 fds|shapes fds 1000|0|0.076|0.046"
        "10000 fds|shapes fds 10000|0|0.076|0.046"
        "tree 127|tree 127|0|0.560|0.260"
        "64 threads|threads 64|0|0.106|0.051"
    )
    if [[ -n ${SHAPES:-} ]]; then   # e.g. SHAPES="fds mappings": only the shapes whose label has one of the words
        picked=()
        for spec in "${shape_specs[@]}"; do
            for word in $SHAPES; do [[ ${spec%%|*} == *"$word"* ]] && { picked+=("$spec"); break; }; done
        done
        shape_specs=("${picked[@]}")
        ((${#shape_specs[@]})) || fail "SHAPES=\"$SHAPES\" matches no shape"
    fi
    declare -A shp
    for spec in "${shape_specs[@]}"; do
        IFS='|' read -r label command touched criu_d criu_r <<<"$spec"
        read -r -a argv <<<"$command"
        declare -a s_d=() s_r=() s_f=() s_w=() s_t=() s_u=()
        for ((run = 1; run <= runs; run++)); do
            check_disk $((touched * 2 + 1024))
            start_fixture "${argv[@]}"
            w=- t=- u=-
            if ((touched > 0)); then
                base=$("$work/baseline" "$touched" "$work") || fail "baseline $touched $work failed"
                w=$(sed -n 's/^file_write_s=//p' <<<"$base") t=$(sed -n 's/^fresh_touch_s=//p' <<<"$base")
                u=$(sed -n 's/^uffd_copy_s=//p' <<<"$base")
                s_w+=("$w") s_t+=("$t") s_u+=("$u")
            fi
            dump_and_restore "$work/images"
            finish_fixture
            rm -rf "$work/images"
            s_d+=("$dump_s") s_r+=("$restore_s")
            [[ $frozen_s != - ]] && s_f+=("$frozen_s")
            printf '    %s run %d: dump %.3f s (frozen %s s), restore %.3f s | file write %s s, fresh touch %s s, UFFDIO_COPY %s s  PASS\n' \
                "$label" "$run" "$dump_s" "$frozen_s" "$restore_s" "$w" "$t" "$u"
        done
        shp[$label,d]=$(median "${s_d[@]}") shp[$label,r]=$(median "${s_r[@]}")
        shp[$label,f]=$( ((${#s_f[@]})) && median "${s_f[@]}" || echo -)
        for k in w t u; do
            declare -n arr=s_$k
            shp[$label,$k]=$( ((${#arr[@]})) && median "${arr[@]}" || echo -)
            unset -n arr
        done
        shp[$label,cd]=$criu_d shp[$label,cr]=$criu_r
    done
    ratio() { [[ $1 == - || $2 == - ]] && echo - || printf '%.2fx' "$(calc "$1 / $2")"; }
    num() { [[ $1 == - ]] && echo - || printf '%.3f' "$1"; }
    echo
    echo "memory shapes: medians of $runs runs (noisy when the machine is shared); baselines for the touched bytes in the same run;"
    echo "CRIU 4.2 = recorded figures on this machine kind (../shared/FIELD-NOTES.md, issue 16), not measured here"
    echo
    sfmt='%-16s | %7s %7s %7s | %8s %8s %8s | %8s %8s | %8s %8s %8s %8s\n'
    printf "$sfmt" shape "dump s" frozen "rest. s" "write s" "touch s" "uffd s" "CRIU d" "CRIU r" "d/write" "r/uffd" "d/CRIU" "r/CRIU"
    printf '%s\n' "$(printf '%.0s-' {1..128})"
    for spec in "${shape_specs[@]}"; do
        IFS='|' read -r label _ <<<"$spec"
        printf "$sfmt" "$label" "$(num "${shp[$label,d]}")" "$(num "${shp[$label,f]}")" "$(num "${shp[$label,r]}")" \
            "$(num "${shp[$label,w]}")" "$(num "${shp[$label,t]}")" "$(num "${shp[$label,u]}")" \
            "$(num "${shp[$label,cd]}")" "$(num "${shp[$label,cr]}")" \
            "$(ratio "${shp[$label,d]}" "${shp[$label,w]}")" "$(ratio "${shp[$label,r]}" "${shp[$label,u]}")" \
            "$(ratio "${shp[$label,d]}" "${shp[$label,cd]}")" "$(ratio "${shp[$label,r]}" "${shp[$label,cr]}")"
    done
fi
