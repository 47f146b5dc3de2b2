#!/bin/sh
# The plugin ABI's fingerprint, as a plugin author meets it (plugin.h rule 5):
#   - build settings that change no type of the ABI do not matter: a plugin
#     built with -D_FILE_OFFSET_BITS=64 loads;
#   - a plugin linked against another major of a library whose types cross
#     the ABI (here a stand-in libjansson.so.99) is refused, with a message
#     naming both sonames, before any of its code runs.
set -u
B=${top_builddir:?}
S=${top_srcdir:?}
T=$(mktemp -d /tmp/tolk-abilibs-XXXXXX)
trap 'rm -rf "$T"' EXIT
. "$S/tests/checklib.sh"
CC=${CC:-cc}
JCFLAGS=$(pkg-config --cflags jansson 2>/dev/null)
mkdir "$T/ok" "$T/bad" "$T/lib"

"$CC" -shared -fPIC -I"$S/include" $JCFLAGS -D_FILE_OFFSET_BITS=64 \
    "$S/examples/plugin_skeleton/skeleton_mt.c" -o "$T/ok/skeleton_mt.so" -ljansson
check "a large-file build of a plugin compiles" [ -f "$T/ok/skeleton_mt.so" ]
"$B/tolkd" --describe skeleton_mt -P "$T/ok" >"$T/ok.out" 2>&1
check "a large-file build of a plugin loads" grep -q suffix "$T/ok.out"

# a library that says it is jansson major 99
echo 'int tolk_test_fake_jansson;' >"$T/lib/fake.c"
"$CC" -shared -fPIC -Wl,-soname,libjansson.so.99 "$T/lib/fake.c" -o "$T/lib/libjansson.so.99"
"$CC" -shared -fPIC -I"$S/include" $JCFLAGS "$S/examples/plugin_skeleton/skeleton_mt.c" \
    -o "$T/bad/skeleton_mt.so" -Wl,--no-as-needed "$T/lib/libjansson.so.99" -ljansson \
    -Wl,-rpath,"$T/lib"
check "a plugin linked against libjansson.so.99 builds" [ -f "$T/bad/skeleton_mt.so" ]
"$B/tolkd" --describe skeleton_mt -P "$T/bad" >"$T/bad.out" 2>&1
rc=$?
check "tolkd refuses it" [ $rc -ne 0 ]
check "the message names both sonames" grep -q "linked against libjansson.so.99, but tolkd runs with libjansson.so.4" "$T/bad.out"
[ $fail -eq 0 ] || cat "$T/ok.out" "$T/bad.out"
check_summary
