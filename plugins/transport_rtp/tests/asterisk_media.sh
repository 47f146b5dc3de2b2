#!/bin/sh
# The AudioSocket and WebSocket encapsulations against a real Asterisk
# (test_media asterisk, with asterisk_media.py as the ARI driver). Skipped
# (77) when no Asterisk is built in TOLK_ASTERISK_PREFIX (default
# /var/cache/tolk-asterisk/22.10.1; /work/shared/asterisk/build.sh builds
# it). Asterisk is shared with other tests: everything runs under
# flock ${TMPDIR:-/tmp}/tolk-asterisk-test.lock, with unique Stasis apps.
set -u
PREFIX=${TOLK_ASTERISK_PREFIX:-/var/cache/tolk-asterisk/22.10.1}
if [ -n "${TOLK_SKIP_ASTERISK_TESTS:-}" ]; then
    echo "SKIP: TOLK_SKIP_ASTERISK_TESTS is set (scripts/check.sh sets it for make distcheck: these calls already ran in the plain and ASan passes)"
    exit 77
fi
if [ ! -x "$PREFIX/sbin/asterisk" ] || [ ! -x "$PREFIX/run.sh" ]; then
    echo "SKIP: no Asterisk in $PREFIX (set TOLK_ASTERISK_PREFIX, or build one with build.sh from the shared asterisk folder)"
    exit 77
fi
for tool in flock python3; do
    command -v $tool >/dev/null 2>&1 || { echo "SKIP: $tool not found"; exit 77; }
done
CLIP=/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav
if [ ! -r "$CLIP" ]; then
    echo "SKIP: $CLIP not found (Debian package pocketsphinx-testdata)"
    exit 77
fi
TOLK_ASTERISK_PREFIX=$PREFIX
TOLK_MEDIA_SOUND=tolk_media_speech
export TOLK_ASTERISK_PREFIX TOLK_MEDIA_SOUND
# -o: an Asterisk started by run.sh from here must not inherit (and hold) the lock
exec flock -o "${TMPDIR:-/tmp}/tolk-asterisk-test.lock" sh -c '
    up() { python3 -c "
import base64, urllib.request
r = urllib.request.Request(\"http://127.0.0.1:8088/ari/asterisk/info\",
                           headers={\"Authorization\": \"Basic \" + base64.b64encode(b\"test:test\").decode()})
urllib.request.urlopen(r, timeout=3)" 2>/dev/null; }
    if ! up; then
        echo "# starting Asterisk: $TOLK_ASTERISK_PREFIX/run.sh"
        "$TOLK_ASTERISK_PREFIX/run.sh" || { echo "FAIL: Asterisk in $TOLK_ASTERISK_PREFIX does not start"; exit 1; }
    fi
    # The party plays the LibriVox clip as raw 16 kHz s16le (it is a 16 kHz
    # mono WAV: only the header goes).
    python3 -c "
import sys, wave
w = wave.open(sys.argv[1])
assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
open(sys.argv[2], \"wb\").write(w.readframes(w.getnframes()))" "$1" \
        "$TOLK_ASTERISK_PREFIX/var/lib/asterisk/sounds/tolk/$TOLK_MEDIA_SOUND.sln16" || exit 1
    # Our scripted party, in a block of our own in extensions_local.conf
    # (other tests keep theirs there): the shared [party] context uses
    # ExecIf, which the module list does not load, so it never sends DTMF
    # nor waits after playing.
    python3 -c "
import re, sys
path = sys.argv[1]
block = open(sys.argv[2]).read()
try:
    old = open(path).read()
except OSError:
    old = \"\"
old = re.sub(r\"; BEGIN transport_rtp media tests.*?; END transport_rtp media tests\\n\", \"\", old, flags=re.S)
open(path, \"w\").write(old + block)" "$TOLK_ASTERISK_PREFIX/etc/asterisk/extensions_local.conf" \
        "${top_srcdir:-.}/plugins/transport_rtp/tests/asterisk_media.conf" || exit 1
    "$TOLK_ASTERISK_PREFIX/sbin/asterisk" -C "$TOLK_ASTERISK_PREFIX/etc/asterisk/asterisk.conf" \
        -rx "dialplan reload" >/dev/null || { echo "FAIL: dialplan reload"; exit 1; }
    exec "${top_builddir:-.}/plugins/transport_rtp/tests/test_media" asterisk
' asterisk_media "$CLIP"
