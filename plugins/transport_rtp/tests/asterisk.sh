#!/bin/sh
# Real calls through a real Asterisk (22.10.1 from ../shared/asterisk/build.sh)
# with tolkd, transport_rtp and the mock engines: see asterisk_calls.py.
# Skipped (77) when that Asterisk is not built. Every test that uses the
# shared Asterisk holds one lock, so tests that restart it never disturb
# another engineer's or CI job's calls.
set -u
PREFIX=${TOLK_ASTERISK_PREFIX:-/var/cache/tolk-asterisk/22.10.1}
if [ -n "${TOLK_SKIP_ASTERISK_TESTS:-}" ]; then
    echo "SKIP: TOLK_SKIP_ASTERISK_TESTS is set (scripts/check.sh sets it for make distcheck: these calls already ran in the plain and ASan passes)"
    exit 77
fi
S=${top_srcdir:?}
B=${top_builddir:?}
if [ ! -x "$PREFIX/sbin/asterisk" ] || [ ! -x "$PREFIX/run.sh" ]; then
    echo "SKIP: no Asterisk at $PREFIX (build it with build.sh from the shared asterisk folder, or set TOLK_ASTERISK_PREFIX)"
    exit 77
fi
for tool in python3 flock; do
    if ! command -v $tool >/dev/null 2>&1; then
        echo "SKIP: $tool not installed"
        exit 77
    fi
done
# -o: the lock is not inherited by what the test starts (an Asterisk started
# by run.sh would otherwise hold it for as long as it runs)
exec flock -o "${TMPDIR:-/tmp}/tolk-asterisk-test.lock" \
    python3 "$S/plugins/transport_rtp/tests/asterisk_calls.py" "$PREFIX" "$S" "$B" "$@"
