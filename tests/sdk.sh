#!/bin/sh
# The SDK works for a third party: install into a staging directory, build
# examples/plugin_skeleton out of tree with nothing but
# `pkg-config --cflags tolk-plugin`, and run it inside tolk-translate; then
# the same for the networked skeleton examples/plugin_http_mt, against a
# fake LibreTranslate-shaped service (tests/httpfake.py) on 127.0.0.1.
set -u
B=${top_builddir:?}
S=${top_srcdir:?}
T=$(mktemp -d /tmp/tolk-sdk-XXXXXX)
fake=
trap '[ -z "$fake" ] || kill "$fake" 2>/dev/null; rm -rf "$T"' EXIT
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

# The networked skeleton: tolk-plugin.pc's flags (its Requires brings
# jansson) and nothing else; the HTTP client is the core's.
mkdir "$T/http"
cp "$S/examples/plugin_http_mt/http_mt.c" "$S/examples/plugin_http_mt/Makefile" "$T/http/"
(cd "$T/http" && ${MAKE:-make} CFLAGS="-O2 -Werror" >"$T/http-build.log" 2>&1)
check "http_mt builds out of tree with pkg-config only" [ -f "$T/http/http_mt.so" ]
[ -f "$T/http/http_mt.so" ] || cat "$T/http-build.log"
syms=$(nm -D --defined-only "$T/http/http_mt.so" | awk '{print $3}' | grep -v '^_' | tr '\n' ' ')
check "http_mt exports only tolk_plugin_entry" [ "$syms" = "tolk_plugin_entry " ]
cp "$T/http/http_mt.so" "$T/plugins/"
key=sdk-s3cret-key
python3 "$S/tests/httpfake.py" --api-key "$key" >"$T/fake.out" 2>"$T/fake.err" &
fake=$!
port=
for i in $(seq 1 200); do
    port=$(sed -n 's/^PORT //p' "$T/fake.out")
    [ -n "$port" ] && break
    sleep 0.1
done
check "the fake translation service listens" [ -n "$port" ]
# http_mt as the MT provider, with the given key, through tolk-translate.
translate_via_http() {
    rm -rf "$T/conf-http" && mkdir "$T/conf-http"
    cp "$S"/examples/mock/conf.d/*.conf "$T/conf-http/"
    printf 'instance: { name = "mt-http"; plugin = "http_mt";\n  settings: { url = "http://127.0.0.1:%s/translate"; api_key = "%s"; }; };\n' \
        "$port" "$1" >"$T/conf-http/30-mt.conf"
    sed -i 's/"mt-mock"/"mt-http"/' "$T/conf-http/50-chains.conf"
    "$B/tolk-translate" -l debug -c "$T/conf-http" -P "$T/plugins:$B/plugins" --json \
        "$T/in.wav" "$T/out-http.wav" >"$T/http.json" 2>"$T/http.log"
}
absent() { ! grep -q "$@"; }
translate_via_http "$key"
check "tolk-translate runs with http_mt as MT" [ $? -eq 0 ]
check "the translation came from the HTTP service" \
    grep -q '"translation":"es: HELLO, HOW ARE YOU TODAY"' "$T/http.json"
check "http_mt served the phrase" grep -q '"mt":"mt-http"' "$T/http.json"
check "the API key is not in the log" absent -e "$key" "$T/http.log"
[ $fail -eq 0 ] || { cat "$T/http.json" "$T/http.log" "$T/fake.err"; }
# A refused key (HTTP 403) is a permanent failure, reported to the core.
translate_via_http wrong-key
check "HTTP 403 is reported as a refused key" grep -q 'refused the API key (HTTP 403)' "$T/http.log"
check "nothing is translated with a refused key" absent -e '"translation":"es: ' "$T/http.json"
check_summary
