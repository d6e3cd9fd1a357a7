#!/usr/bin/env bash
# Runs every cargo-fuzz target of both fuzz workspaces (shm-layout/fuzz: the segment reader;
# inferd/fuzz: the frame decoder, the request parser, the array decoder, the check of a request against a signature) for FUZZ_SECONDS each
# (default 60), starting from the seed corpus kept in the repo (<workspace>/corpus/<target>). New
# inputs go to <workspace>/target/corpus/<target> (ignored, kept between local runs), so a run leaves
# the checkout clean; `cargo fuzz cmin` folds them into the seeds when they are worth keeping.
# Stops at the first target that crashes; libFuzzer leaves the input in <workspace>/artifacts/<target>/.
# Needs the nightly toolchain and cargo-fuzz (bash scripts/setup-fuzz.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: FUZZ_SECONDS must be a positive integer, got '$seconds'" >&2; exit 2; }

for workspace in shm-layout/fuzz inferd/fuzz; do
  targets=$(cd "$workspace" && cargo +nightly fuzz list)
  [[ -n $targets ]] || { echo "fuzz: no targets in $workspace" >&2; exit 1; }
  for target in $targets; do
    echo "==> fuzz $workspace $target for ${seconds} s"
    mkdir -p "$workspace/corpus/$target" "$workspace/target/corpus/$target"
    # libFuzzer writes what it finds into the first directory and only reads the others.
    (cd "$workspace" && cargo +nightly fuzz run "$target" "target/corpus/$target" "corpus/$target" \
      -- -max_total_time="$seconds")
  done
done
# The segment reader's targets work on files in /dev/shm named after their process.
rm -f /dev/shm/shm-layout-fuzz-*
echo "fuzz: every target ran ${seconds} s without a crash"
