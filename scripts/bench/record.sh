#!/usr/bin/env bash
# shm-layout: nanoseconds to record one request into the segment, against the prometheus crate.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -p shm-layout --bench record 2>&1 | grep -v '^\s*\(Compiling\|Finished\|Running\)'
