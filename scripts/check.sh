#!/bin/sh
# The whole test suite, as CI runs it:
#   1. build with -Werror and run `make check`;
#   2. build again with ASan+UBSan and --enable-debug (a late plugin callback
#      aborts) and run `make check` (any report fails);
#   3. `make distcheck`.
# Run from the top of a checkout, after scripts/setup-debian.sh.
set -eu
top=$(pwd)
jobs=$(nproc 2>/dev/null || echo 2)

# transport_rtp's tests against a real Asterisk run when one is built in
# /var/cache/tolk-asterisk (TOLK_ASTERISK_PREFIX); they skip, saying so,
# when not. The kit beside the checkout (../shared/asterisk, or
# TOLK_ASTERISK_KIT) builds it offline, once per machine: about 7 minutes
# the first time, a second afterwards. TOLK_NO_ASTERISK=1 skips this.
kit=${TOLK_ASTERISK_KIT:-$top/../shared/asterisk}
if [ -z "${TOLK_NO_ASTERISK:-}" ] && [ -f "$kit/build.sh" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "== the local test Asterisk ($kit) == $(date -u +%T)"
        NO_APT=1 bash "$kit/build.sh" || { echo "check.sh: building the test Asterisk failed" >&2; exit 1; }
    else
        echo "== not root: the test Asterisk is not built here; its tests use one already built, or skip == $(date -u +%T)"
    fi
fi
autoreconf -fi >/dev/null 2>&1 || autoreconf -fi

echo "== build and test (-Werror) == $(date -u +%T)"
rm -rf _build/plain && mkdir -p _build/plain && cd _build/plain
"$top/configure" --enable-werror >/dev/null
make -j"$jobs" >/dev/null
make -j"$jobs" check || { cat tests/*.log test-suite.log 2>/dev/null | tail -200; exit 1; }
plain_pass=$(sed -n 's/^# PASS: *//p' test-suite.log)

echo "== the core's unit tests and transport_rtp's under valgrind == $(date -u +%T)"
export TOLK_PLUGIN_PATH="$PWD/plugins" TOLK_TEST_FIXTURES="$PWD/tests/plugins/.libs" \
    top_srcdir="$top" top_builddir="$PWD"
vg_tests="test_loader test_config test_metrics test_pipeline test_reload test_daemon test_recovery
    test_abi12 test_http test_ws test_backlog test_log test_transport test_speculate
    plugins/transport_rtp/tests/test_transport_rtp"
# $jobs at a time: each is single-threaded under valgrind, and this pass is
# on CI's critical path.
echo "$vg_tests" | tr -s ' \n' '\n\n' | sed '/^$/d' | xargs -P "$jobs" -I{} sh -c '
    case {} in */*) prog=./{} ;; *) prog=./tests/{} ;; esac
    if valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
        "$prog" >"$prog.valgrind.log" 2>&1; then
        echo "PASS: {} (valgrind)"
    else
        echo "FAIL: {} (valgrind)"; tail -60 "$prog.valgrind.log"; exit 1
    fi' || exit 1
vg_pass=$(echo $vg_tests | wc -w)
unset TOLK_PLUGIN_PATH TOLK_TEST_FIXTURES top_srcdir top_builddir
cd "$top"

echo "== build and test under AddressSanitizer + UndefinedBehaviorSanitizer == $(date -u +%T)"
rm -rf _build/asan && mkdir -p _build/asan && cd _build/asan
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
"$top/configure" --enable-werror --enable-debug CFLAGS="-O1 -g $san" LDFLAGS="$san" >/dev/null
make -j"$jobs" >/dev/null
# Plugins are dlopen()ed by sanitized programs, so the runtime is already
# loaded; the SDK test builds its own plugin without sanitizers.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    make -j"$jobs" check || { cat tests/*.log test-suite.log 2>/dev/null | tail -200; exit 1; }
cd "$top"

echo "== make distcheck == $(date -u +%T)"
cd _build/plain
# The calls through the real Asterisk ran in both passes above; distcheck
# checks the tarball builds and its tests pass, and skips them.
TOLK_SKIP_ASTERISK_TESTS=1 make -j"$jobs" distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror >/dev/null 2>distcheck.err || {
    tail -100 distcheck.err; exit 1; }
echo "distcheck: OK"
asan_pass=$(sed -n 's/^# PASS: *//p' "$top/_build/asan/test-suite.log")
echo "== done == $(date -u +%T)"
echo "tests: $((plain_pass + vg_pass + asan_pass)) passed, 0 failed"
