#!/bin/sh
# Regenerate scripts/hot-text/hot-text.ld: run a release run-chain under callgrind through the
# lives of a chain (start, first run, cooldown; the same after a clean stop and after
# a crash; a tight loop of runs; failures and their alerts, written as files; pruning
# of old runs), then list every function that ran. Needs valgrind, python3 and nm. Takes about a minute and a half.
#
#   RUN_CHAIN_NO_HOT_TEXT=1 cargo build --release && scripts/hot-text/profile-hot-text.sh [path/to/run-chain]
#
# The binary must be linked without the script: valgrind attributes code outside the
# `.text` section to no object, so the functions in `.text.hot` would not be seen.
#
# Run it again when the code a chain runs has changed much (new dependencies, a big
# refactor): functions missing from the list still work, they only cost memory.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$(dirname "${1:-$here/../../target/release/run-chain}")" && pwd)/$(basename "${1:-run-chain}")
secs=${PROFILE_SECONDS:-60}
if readelf -SW "$bin" | grep -q ' \.text\.hot '; then
    echo "$bin was linked with scripts/hot-text/hot-text.ld; build it with RUN_CHAIN_NO_HOT_TEXT=1" >&2
    exit 1
fi
work=$(mktemp -d)
[ -n "${KEEP_PROFILES:-}" ] || trap 'rm -rf "$work"' EXIT

cp "$bin" "$work/run-chain"
cd "$work"
for s in a b f p s k; do mkdir -m 700 "root-$s"; done
cat >a.toml <<EOF
run_root = "$work/root-a"
[tasks.c]
argv = ["/bin/true"]
success_cooldown = "1h"
EOF
for s in s k; do sed "s/root-a/root-$s/" a.toml >$s.toml; done
# A chain that was stopped (s) or killed (k) after its first run, to be started again.
./run-chain -c s.toml c 2>/dev/null &
stopped=$!
./run-chain -c k.toml c 2>/dev/null &
killed=$!
sleep 2
kill -TERM $stopped
kill -KILL $killed
wait $stopped $killed || true

cat >b.toml <<EOF
run_root = "$work/root-b"
[tasks.a]
argv = ["/bin/true"]
success_cooldown = "0s"
fail_cooldown = "0s"
[tasks.b]
argv = ["/bin/true"]
success_cooldown = "0s"
fail_cooldown = "0s"
EOF
cat >f.toml <<EOF
run_root = "$work/root-f"
[tasks.f]
argv = ["/bin/false"]
success_cooldown = "0s"
fail_cooldown = "1s"
[tasks.g]
command = "echo hello; exit 0"
success_cooldown = "0s"
fail_cooldown = "0s"
EOF
cat >p.toml <<EOF
run_root = "$work/root-p"
[tasks.a]
argv = ["/bin/true"]
success_cooldown = "0s"
fail_cooldown = "0s"
keep_runs_max = 200
keep_runs_for = "2s"
[tasks.b]
argv = ["/bin/true"]
success_cooldown = "0s"
fail_cooldown = "0s"
keep_runs_max = 300
EOF

pids=""
for s in "a c" "s c" "k c" "b a b" "f g f" "p a b"; do
    set -- $s
    cfg=$1
    shift
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg-$cfg.%p" \
        ./run-chain -c "$cfg.toml" "$@" >/dev/null 2>"vg-$cfg.log" &
    pids="$pids $!"
done
sleep "$secs"
kill -TERM $pids
wait || true
python3 "$here/gen-hot-text.py" "$work/run-chain" "$here/hot-text.ld" "$work"/cg-*
