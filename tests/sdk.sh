#!/bin/sh
# The SDK works for a third party: install into a staging directory, build
# examples/plugin_skeleton out of tree with nothing but
# `pkg-config --cflags tolk-plugin`, and run it inside tolk-translate.
set -u
B=${top_builddir:?}
S=${top_srcdir:?}
T=$(mktemp -d /tmp/tolk-sdk-XXXXXX)
trap 'rm -rf "$T"' EXIT
. "$S/tests/checklib.sh"
STAGE="$T/stage"
${MAKE:-make} -C "$B" install DESTDIR="$STAGE" >"$T/install.log" 2>&1
check "make install into a staging directory" [ $? -eq 0 ]
pcdir=$(dirname "$(find "$STAGE" -name tolk-plugin.pc | head -n 1)")
check "tolk-plugin.pc installed" [ -f "$pcdir/tolk-plugin.pc" ]
check "plugin.h installed" [ -n "$(find "$STAGE" -path '*/include/tolk/plugin.h')" ]
# The staged .pc names the final prefix; the sysroot variable points
# pkg-config's -I at the staging copy, as a distribution build would.
export PKG_CONFIG_PATH="$pcdir" PKG_CONFIG_SYSROOT_DIR="$STAGE"
cp "$S/examples/plugin_skeleton/skeleton_mt.c" "$S/examples/plugin_skeleton/Makefile" "$T/"
(cd "$T" && ${MAKE:-make} CFLAGS="-O2 -Werror" >"$T/build.log" 2>&1)
check "skeleton builds out of tree with pkg-config only" [ -f "$T/skeleton_mt.so" ]
[ -f "$T/skeleton_mt.so" ] || cat "$T/build.log"
syms=$(nm -D --defined-only "$T/skeleton_mt.so" | awk '{print $3}' | grep -v '^_' | tr '\n' ' ')
check "skeleton exports only tolk_plugin_entry" [ "$syms" = "tolk_plugin_entry " ]
mkdir "$T/plugins" "$T/conf"
cp "$T/skeleton_mt.so" "$T/plugins/"
cp "$S"/examples/mock/conf.d/*.conf "$T/conf/"
cat >"$T/conf/30-mt.conf" <<'CONF'
instance: { name = "mt-skel"; plugin = "skeleton_mt"; settings: { suffix = "!"; }; };
CONF
sed -i 's/"mt-mock"/"mt-skel"/' "$T/conf/50-chains.conf"
"$B/tolkd" --describe skeleton_mt -P "$T/plugins" >"$T/describe" 2>&1
check "tolkd loads the skeleton" grep -q "suffix" "$T/describe"
"$B/tests/mkwav" "$T/in.wav" 16000 1 16 1 800 700
"$B/tolk-translate" -c "$T/conf" -P "$T/plugins:$B/plugins" --json "$T/in.wav" "$T/out.wav" >"$T/out.json" 2>&1
check "tolk-translate runs with the skeleton as MT" [ $? -eq 0 ]
check "the skeleton translated (upper case + suffix)" grep -q '"translation":"HELLO, HOW ARE YOU TODAY!"' "$T/out.json"
check "the skeleton served the phrase" grep -q '"mt":"mt-skel"' "$T/out.json"
[ $fail -eq 0 ] || cat "$T/out.json"
check_summary
