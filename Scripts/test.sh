#!/bin/bash
# Run cryo's test suite: set up the machine (Scripts/setup.sh), build in debug
# and run `swift test`.  The tests checkpoint and restore real processes, so
# they need root.  Extra arguments go to `swift test`, e.g.
#     sudo Scripts/test.sh --filter MemoryTests
# Exits with swift test's status.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repo/Scripts/common.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "test: the tests dump and restore real processes and need root; run: sudo $0 $*" >&2
    exit 1
fi

"$repo/Scripts/setup.sh"
# dump --tcp-established locks connections with iptables unless told otherwise (CRIU's default),
# and many tests take that default: without it they fail in whatever order they run before
# a test that installs it on demand.
"$repo/Scripts/setup.sh" --test-package iptables
# setup.sh may have found swift only at /opt/swift; do the same here.
command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"

cd "$repo"
say "swift build (debug)"
swift_build

# Which kind of machine this was, for readers of CI logs: vector state the
# tests check (AVX-512, AMX tiles) and the size of the XSAVE area differ.
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)
has() { [[ " $cpu_flags " == *" $1 "* ]] && echo yes || echo no; }
say "CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); kernel $(uname -r)"
say "CPU flags: avx2 $(has avx2), avx512f $(has avx512f), avx512bw $(has avx512bw), amx_tile $(has amx_tile), xsave $(has xsave)"

say "swift test $*"
status=0
swift test "$@" || status=$?
say "swift test exited with status $status"
exit "$status"
