#!/bin/bash
# Runs the VM tests verbosely into a log and prints, as they come, each
# test's result and the figures the tests print; when a test fails, also
# the log's last lines (the whole log stays for reading).
# Usage: scripts/vmtest.sh LOG [go test flags...]
set -uo pipefail
log=$1
shift
"${GO:-go}" test -count=1 -tags vmtest -v "$@" ./vm-tests/ 2>&1 | tee "$log" |
	grep --line-buffered -E '^(\s*--- |ok\s|FAIL|PASS$|panic:|bench )'
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ]; then
	echo "== the last lines of $log =="
	tail -100 "$log"
fi
exit "$rc"
