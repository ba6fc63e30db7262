#!/bin/bash
# Set up a fresh Debian 12 machine (as root) to build cryo, then build it.
#
# Installs the Debian packages the build needs when they are missing and runs
# `swift build -c release --static-swift-stdlib`.  Safe to run again: installed packages are left
# alone and apt is not touched at all when nothing is missing.  Swift itself
# is expected at /opt/swift (or anywhere on PATH).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

source "$repo/Scripts/common.sh"

# `setup.sh --test-package NAME`: installs only NAME, a program that one
# end-to-end test runs (it asks for it and skips when this fails), and builds
# nothing. Services that come with it are not started (policy-rc.d).
if [[ ${1:-} == --test-package ]]; then
    package=${2:-}
    case $package in
        nginx | postgresql | iptables | nftables) ;;
        *) echo "setup: --test-package: unknown test package '$package' (known: nginx, postgresql, iptables, nftables)" >&2; exit 2 ;;
    esac
    if dpkg -s "$package" 2>/dev/null | grep -q '^Status: install ok installed'; then
        say "$package already installed"
        exit 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: $package is missing; run this script as root (sudo) to install it" >&2
        exit 1
    fi
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    say "apt-get install -y $package"
    if ! apt-get install -y --no-install-recommends "$package" </dev/null; then
        say "apt-get update"
        apt-get update
        apt-get install -y --no-install-recommends "$package" </dev/null
    fi
    exit 0
fi

packages=(libelf-dev libunwind-dev liblzma-dev libzstd-dev pkg-config gcc libcap2-bin)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg -s "$package" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$package")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing packages: ${missing[*]}; run this script as root (sudo) to install them" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    say "installing missing packages: ${missing[*]}"
    say "apt-get update"
    apt-get update
    say "apt-get install -y ${missing[*]}"
    apt-get install -y "${missing[@]}" </dev/null
else
    say "packages already installed: ${packages[*]}"
fi

if ! command -v swift >/dev/null 2>&1; then
    if [[ -x /opt/swift/usr/bin/swift ]]; then
        say "adding /opt/swift/usr/bin to PATH"
        export PATH="/opt/swift/usr/bin:$PATH"
    else
        echo "setup: swift not found on PATH or at /opt/swift/usr/bin; install a Swift 6 toolchain first" >&2
        exit 1
    fi
fi
say "using $(command -v swift) ($(swift --version 2>&1 | head -n 1))"

# cryo needs Linux 6.7+ on x86_64; say so early rather than fail later.
arch=$(uname -m)
kernel=$(uname -r)
if [[ $arch != x86_64 ]]; then
    echo "setup: warning: cryo supports x86_64 only; this machine is $arch" >&2
fi
IFS=.- read -r major minor _ <<<"$kernel"
if ((major < 6 || (major == 6 && minor < 7))); then
    echo "setup: warning: kernel $kernel is older than 6.7 (PAGEMAP_SCAN); dumps will fail" >&2
fi

# SCRATCH_PATH builds elsewhere than .build (e.g. one per git worktree).
scratch=${SCRATCH_PATH:-.build}
# The Swift runtime linked in: cryo starts in about 6 ms instead of 10, and a
# small dump or restore is mostly start-up.
say "swift build -c release --static-swift-stdlib --scratch-path $scratch (in $repo)"
swift_build -c release --static-swift-stdlib --scratch-path "$scratch"
say "built $(cd "$scratch" && pwd)/release/cryo"

# The manual page (from the command definitions, swift-argument-parser's
# generate-manual) and shell completions, installed where man and the shells look.
say "generating the manual page and shell completions"
swift_build -c release --static-swift-stdlib --scratch-path "$scratch" --product generate-manual
mkdir -p "$scratch/man"
"$scratch/release/generate-manual" "$scratch/release/cryo" --section 1 --output-directory "$scratch/man" >/dev/null
for shell in bash zsh fish; do
    "$scratch/release/cryo" --generate-completion-script "$shell" >"$scratch/man/cryo.$shell"
done
if [[ $(id -u) -eq 0 ]]; then
    install -D -m 0644 "$scratch/man/cryo.1" /usr/local/share/man/man1/cryo.1
    install -D -m 0644 "$scratch/man/cryo.bash" /usr/local/share/bash-completion/completions/cryo
    install -D -m 0644 "$scratch/man/cryo.zsh" /usr/local/share/zsh/site-functions/_cryo
    install -D -m 0644 "$scratch/man/cryo.fish" /usr/local/share/fish/vendor_completions.d/cryo.fish
    say "installed man cryo (/usr/local/share/man/man1/cryo.1) and bash, zsh and fish completions"
else
    say "not root: the manual page and completions are in $scratch/man, not installed"
fi
