#!/bin/sh
# tts_espeak as a user meets it: the mock conf.d (examples/mock) with the synthesiser
# swapped for tts_espeak (a libconfig file, as in conf.d), through
# tolk-translate and transport_file.
set -u
B=${top_builddir:?}
S=${top_srcdir:?}
T=$(mktemp -d /tmp/tolk-espeak-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
. "$S/tests/checklib.sh"

C="$T/conf.d"
mkdir "$C"
cp "$S"/examples/mock/conf.d/*.conf "$C"/
cat >"$C/40-tts.conf" <<'EOF'
instance: {
  name = "tts-espeak";
  plugin = "tts_espeak";
  settings: {
    voices: { es = "es"; en = "en-us"; };
    rate = 80;  # slow: the translations then outlast IN.wav (see below)
  };
};
EOF
sed 's/"tts-mock"/"tts-espeak"/' "$S/examples/mock/conf.d/50-chains.conf" >"$C/50-chains.conf"
TR="$B/tolk-translate -c $C"

check "conf.d with tts_espeak passes tolkd --check-config" \
    sh -c "'$B/tolkd' -c '$C' --check-config >/dev/null 2>&1"

"$B/tests/mkwav" "$T/in.wav" 16000 1 16 3 800 700
$TR --json "$T/in.wav" "$T/out.wav" >"$T/out.json" 2>"$T/err"
check "en->es: tolk-translate exits 0" [ $? -eq 0 ]
check "en->es: three phrases, none lost" grep -q '"summary":true,"phrases":3,"lost":0' "$T/out.json"
check "en->es: spoken by tts-espeak" [ "$(grep -c '"tts":"tts-espeak"' "$T/out.json")" -eq 3 ]
check "OUT.wav is mono 16 kHz 16-bit" \
    [ "$(wav_u16 "$T/out.wav" 22)/$(wav_u32 "$T/out.wav" 24)/$(wav_u16 "$T/out.wav" 34)" = 1/16000/16 ]
# Without --realtime OUT.wav is the translations back to back, padded with
# silence to the length of IN.wav (5.2 s). 14 Spanish words at 80 words/min
# are about 10.5 s: longer than IN.wav, so the length is espeak's.
bytes=$(wav_u32 "$T/out.wav" 40)
check "OUT.wav holds 7 to 16 s of speech ($bytes bytes)" [ "$bytes" -gt 224000 -a "$bytes" -lt 512000 ]

$TR --from es --to en --voice en-gb --json "$T/in.wav" "$T/out-en.wav" >"$T/en.json" 2>"$T/err-en"
check "es->en with --voice en-gb: nothing lost" grep -q '"lost":0' "$T/en.json"
$TR --voice no-such-voice --json "$T/in.wav" "$T/out-x.wav" >"$T/x.json" 2>"$T/err-x"
check "an unknown --voice falls back to the language's voice" grep -q '"lost":0' "$T/x.json"

$TR --from en --to zz --json "$T/in.wav" "$T/out-zz.wav" >"$T/zz.json" 2>"$T/err-zz"
check "unsupported language: tolk-translate exits 3 (a phrase lost)" [ $? -eq 3 ]
check "unsupported language: the phrase is reported lost" grep -q '"ok":false' "$T/zz.json"
check "unsupported language: the log says declined" grep -qi "declined" "$T/err-zz"

cat >"$C/40-tts.conf" <<'EOF'
instance: { name = "tts-espeak"; plugin = "tts_espeak"; settings: { voices: { es = "no-such-voice"; }; }; };
EOF
$TR "$T/in.wav" "$T/out-bad.wav" >/dev/null 2>"$T/err-bad"
check "a voices entry naming no espeak voice is refused" [ $? -ne 0 ]
check "the refusal names the voice" grep -q "'no-such-voice' (for es) is no espeak voice" "$T/err-bad"

check_summary
