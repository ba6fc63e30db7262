# Shared by Scripts/setup.sh and Scripts/test.sh (sourced, not run).

say() { printf '==> %s\n' "$*"; }

# SwiftPM itself now and then dies by a signal mid-build (seen: a crash in
# libdispatch); a compile error exits 1 and is not retried.
swift_build() {
    local status=0
    swift build "$@" || status=$?
    if (( status > 128 )); then
        say "swift build died by signal $((status - 128)); building once more"
        status=0
        swift build "$@" || status=$?
    fi
    return "$status"
}
