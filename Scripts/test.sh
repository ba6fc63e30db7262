#!/bin/bash
# Run cryo's test suite: set up the machine (Scripts/setup.sh), build in debug
# and run `swift test`.  The tests checkpoint and restore real processes, so
# they need root.  Extra arguments go to `swift test`, e.g.
#     sudo Scripts/test.sh --filter MemoryTests
# Exits with swift test's status.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '==> %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "test: the tests dump and restore real processes and need root; run: sudo $0 $*" >&2
    exit 1
fi

"$repo/Scripts/setup.sh"
# setup.sh may have found swift only at /opt/swift; do the same here.
command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"

cd "$repo"
say "swift build (debug)"
swift build

say "swift test $*"
status=0
swift test "$@" || status=$?
say "swift test exited with status $status"
exit "$status"
