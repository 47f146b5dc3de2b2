#!/bin/sh
# The command-line programs as a user runs them: tolk-translate on WAV
# files of every accepted kind and some refused ones, tolkd's checks, and a
# tolkd that reloads on SIGHUP and exits cleanly on SIGTERM.
set -u
B=${top_builddir:?}
S=${top_srcdir:?}
T=$(mktemp -d /tmp/tolk-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
. "$S/tests/checklib.sh"
TR="$B/tolk-translate -c $S/examples/mock/conf.d"

# --- tolk-translate on the shipped (mock) pipeline ---
"$B/tests/mkwav" "$T/in.wav" 16000 1 16 3 800 700
$TR --json "$T/in.wav" "$T/out.wav" >"$T/out.json" 2>"$T/err"
rc=$?
check "tolk-translate exits 0" [ $rc -eq 0 ]
check "three phrases reported" [ "$(grep -c '"phrase":' "$T/out.json")" -eq 3 ]
check "first phrase translated by the dictionary" \
    grep -q '"text":"hello, how are you today","translation":"hola, cómo estás tú hoy"' "$T/out.json"
check "providers named" grep -q '"providers":{"stt":"stt-mock","mt":"mt-mock","tts":"tts-mock"}' "$T/out.json"
check "summary line" grep -q '"summary":true,"phrases":3,"lost":0' "$T/out.json"
check "no latency claimed without --realtime" sh -c "! grep -q latency_ms '$T/out.json'"
check "OUT.wav is mono" [ "$(wav_u16 "$T/out.wav" 22)" = 1 ]
check "OUT.wav is 16 kHz" [ "$(wav_u32 "$T/out.wav" 24)" = 16000 ]
check "OUT.wav is 16-bit" [ "$(wav_u16 "$T/out.wav" 34)" = 16 ]
check "OUT.wav holds audio" [ "$(wav_u32 "$T/out.wav" 40)" -gt 32000 ]

$TR "$T/in.wav" "$T/out2.wav" >"$T/out.txt" 2>&1
check "text report shows the translation" grep -q -- '-> "hola, cómo estás tú hoy"' "$T/out.txt"
# Fed faster than real time, the recogniser's time after a phrase is its
# backlog: no stt figure, and what is shown is labelled as processing time.
check "fast text report: processing times, labelled" grep -q '^    processing time: mt [0-9]* ms (mt-mock), tts first audio [0-9]* ms (tts-mock)$' "$T/out.txt"
check "fast text report: no stt time, no lag" sh -c "! grep -E -q '(stt [0-9]+ ms|lag [0-9])' '$T/out.txt'"
check "fast text report: says they are not latency" grep -q '^# fed faster than real time: the times above are processing times, not latency' "$T/out.txt"
check "fast JSON: no stt time, no lag" sh -c "grep -q '\"stages_ms\":{\"stt\":null,' '$T/out.json' && ! grep -q lag_ms '$T/out.json'"

# An instance that cannot be created (stt_deepgram without a key) is exit
# 3 for both programs (tolk-translate(1), tolkd(8)), not 1: the files are
# valid, the system is not.
if [ -e "$B/plugins/stt_deepgram/.libs/stt_deepgram.so" ]; then
    mkdir "$T/nokey"
    cp "$S"/examples/mock/conf.d/*.conf "$T/nokey/"
    printf 'instance: { name = "dg"; plugin = "stt_deepgram"; };\n' >"$T/nokey/25-dg.conf"
    env -u DEEPGRAM_API_KEY "$B/tolk-translate" -c "$T/nokey" "$T/in.wav" "$T/nk.wav" >"$T/nk.out" 2>&1
    check "tolk-translate: an instance that cannot be created: exit 3" [ $? -eq 3 ]
    check "...naming it" grep -q "instance 'dg' (plugin stt_deepgram) failed to start" "$T/nk.out"
    env -u DEEPGRAM_API_KEY timeout 20 "$B/tolkd" -f -c "$T/nokey" >"$T/nkd.out" 2>&1
    check "tolkd: an instance that cannot be created: exit 3" [ $? -eq 3 ]
    check "...naming it" grep -q "instance 'dg' (plugin stt_deepgram) failed to start" "$T/nkd.out"
fi

# --realtime: each phrase has its lag (end of phrase -> its translated
# speech starts), the summary its percentiles against the bound.
"$B/tests/mkwav" "$T/rt.wav" 16000 1 16 2 800 700
$TR --realtime --json "$T/rt.wav" "$T/rt-out.wav" >"$T/rt.json" 2>"$T/rt.err"
check "realtime: exits 0" [ $? -eq 0 ]
check "realtime JSON: lag_ms and speedup per phrase" [ "$(grep -c '"lag_ms":[0-9.]*,"speedup":[0-9.]*' "$T/rt.json")" -eq 2 ]
check "realtime JSON: lag percentiles and the bound" grep -q '"lag_p50_ms":[0-9.]*,"lag_p90_ms":[0-9.]*,"lag_p99_ms":[0-9.]*,"lag_max_ms":[0-9.]*,"lag_bound_ms":1500' "$T/rt.json"
$TR --realtime "$T/rt.wav" "$T/rt-out2.wav" >"$T/rt.txt" 2>&1
check "realtime text: a labelled lag per phrase" [ "$(grep -c '^    lag [0-9]* ms (end of phrase -> first translated frame)' "$T/rt.txt")" -eq 2 ]
check "realtime text: the lag summary" grep -q '^# lag: p50 [0-9]* ms, p90 [0-9]* ms, max [0-9]* ms; [0-9]* phrases* over the 1.5 s bound' "$T/rt.txt"

for rate in 8000 22050 44100 48000; do
    "$B/tests/mkwav" "$T/in$rate.wav" $rate 2 16 2 800 700
    $TR --json "$T/in$rate.wav" "$T/out$rate.wav" >"$T/o$rate.json" 2>&1
    check "stereo $rate Hz accepted" [ $? -eq 0 ]
    check "stereo $rate Hz: both phrases found" [ "$(grep -c '"phrase":' "$T/o$rate.json")" -eq 2 ]
done

"$B/tests/mkwav" "$T/in24.wav" 16000 1 24 1
$TR "$T/in24.wav" "$T/o.wav" >/dev/null 2>"$T/e24"
check "24-bit refused with exit 1" [ $? -eq 1 ]
check "24-bit refusal says why" grep -q "24-bit" "$T/e24"
"$B/tests/mkwav" "$T/in11.wav" 11025 1 16 1
$TR "$T/in11.wav" "$T/o.wav" >/dev/null 2>"$T/e11"
check "11025 Hz refused with exit 1" [ $? -eq 1 ]
check "11025 Hz refusal names the rate" grep -q "11025" "$T/e11"
"$B/tests/mkwav" "$T/float.wav" 16000 1 32 1 800 700 3
$TR "$T/float.wav" "$T/o.wav" >/dev/null 2>"$T/ef"
check "float WAV refused" [ $? -eq 1 ]
echo "just some text" >"$T/text.wav"
$TR "$T/text.wav" "$T/o.wav" >/dev/null 2>"$T/et"
check "non-WAV refused with exit 1" [ $? -eq 1 ]
: >"$T/zero.wav"
$TR "$T/zero.wav" "$T/o.wav" >/dev/null 2>&1
check "empty file refused" [ $? -eq 1 ]
$TR "$T/nonexistent.wav" "$T/o.wav" >/dev/null 2>&1
check "missing file refused" [ $? -eq 1 ]
"$B/tests/mkwav" "$T/silent.wav" 16000 1 16 0 0 3000
$TR --json "$T/silent.wav" "$T/os.wav" >"$T/os.json" 2>&1
check "silence: exit 0" [ $? -eq 0 ]
check "silence: no phrases" grep -q '"phrases":0' "$T/os.json"
$TR >/dev/null 2>&1
check "usage error exits 2" [ $? -eq 2 ]

# A 10-minute call is streamed, not buffered: peak memory stays near that of
# a 10-second one (the mock engines, so the core and transport are measured).
if [ -x /usr/bin/time ]; then
    "$B/tests/mkwav" "$T/short.wav" 16000 1 16 3 1000 2000
    "$B/tests/mkwav" "$T/long.wav" 16000 1 16 200 1000 2000
    /usr/bin/time -f %M -o "$T/rss-short" $TR "$T/short.wav" "$T/o-short.wav" >/dev/null 2>&1
    /usr/bin/time -f %M -o "$T/rss-long" $TR "$T/long.wav" "$T/o-long.wav" >"$T/long.out" 2>&1
    check "10-minute file: exit 0" [ $? -eq 0 ]
    check "10-minute file: 200 phrases" grep -q "# 200 phrases translated, 0 lost" "$T/long.out"
    short=$(tail -n 1 "$T/rss-short")
    long=$(tail -n 1 "$T/rss-long")
    echo "# peak RSS: ${short} KiB for 10 s, ${long} KiB for 10 min"
    # (under AddressSanitizer freed memory sits in its quarantine: no
    # meaningful peak to compare)
    if [ -z "${ASAN_OPTIONS:-}" ]; then
        check "10-minute file: peak RSS within 8 MiB of a short call's" [ "$long" -lt $((short + 8192)) ]
    fi
fi

# --- the shipped conf.d: the offline engines on a real recording ---
CLIP=/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0920.wav
"$B/tolk-translate" -c "$S/conf.d" --json "$CLIP" "$T/es.wav" >"$T/es.json" 2>"$T/es.err"
check "offline chain: tolk-translate exits 0" [ $? -eq 0 ]
check "offline chain: recognised by pocketsphinx" grep -q '"stt":"stt-pocketsphinx","mt":"mt-apertium","tts":"tts-espeak"' "$T/es.json"
check "offline chain: at least one phrase, none lost" \
    grep -Eq '"summary":true,"phrases":[1-9][0-9]*,"lost":0' "$T/es.json"
# the words themselves are checked by stt_pocketsphinx's WER test and
# mt_apertium's translation tests; here the whole chain must produce Spanish
check "offline chain: Spanish text out" grep -Eiq '"translation":"[^"]*\b(el|la|los|las|de|que|y|en|un|una|es|no|a)\b' "$T/es.json"
check "offline chain: Spanish speech written (16 kHz, over 1 s)" [ "$(wav_u32 "$T/es.wav" 24)" = 16000 -a "$(wav_u32 "$T/es.wav" 40)" -gt 32000 ]
[ $fail -eq 0 ] || { cat "$T/es.json"; tail -5 "$T/es.err"; }

# --- the failover demonstration: same phrases as without the fault ---
"$B/tests/mkwav" "$T/fo.wav" 16000 1 16 3 1000 800
"$B/tolk-translate" -c "$S/examples/failover/conf.d" --json "$T/fo.wav" "$T/fo1.wav" >"$T/fo1.json" 2>/dev/null
check "failover demo exits 0" [ $? -eq 0 ]
"$B/tolk-translate" -c "$S/examples/failover/no-fault.conf.d" --json "$T/fo.wav" "$T/fo2.wav" >"$T/fo2.json" 2>/dev/null
pick() { grep -o '"text":"[^"]*","translation":"[^"]*"' "$1"; }
check "failover demo: three phrases" [ "$(pick "$T/fo1.json" | wc -l)" -eq 3 ]
check "failover demo: same phrases and translations as without the fault" \
    [ "$(pick "$T/fo1.json")" = "$(pick "$T/fo2.json")" ]
check "failover demo: the report names the failover" \
    grep -q '"recovery":{"stage":"stt","tier":"failover","from":"stt-primary","to":"stt-backup"}' "$T/fo1.json"
check "failover demo: the backup served the phrases after it" grep -q '"stt":"stt-backup"' "$T/fo1.json"
check "no-fault run: no recovery" sh -c "! grep -q '\"tier\"' '$T/fo2.json'"

# --- long input (issue 11): every phrase of a file, however long ---
# Phrases are counted against the tone bursts mkwav wrote.
ok_count() { grep -c '"ok":true' "$1"; }
# drain_timeout is a shutdown guard, not a limit on a file's work: a
# 2-minute file with a 1 s drain_timeout still gets every phrase.
mkdir "$T/dt"
cp "$S"/examples/mock/conf.d/*.conf "$T/dt/"
sed -i 's/drain_timeout = [0-9.]*;/drain_timeout = 1.0;/' "$T/dt/tolk.conf"
"$B/tests/mkwav" "$T/dt.wav" 16000 1 16 60 800 1200
$TR -c "$T/dt" --json "$T/dt.wav" "$T/dt-out.wav" >"$T/dt.json" 2>"$T/dt.err"
check "small drain_timeout: exit 0" [ $? -eq 0 ]
check "small drain_timeout: all 60 phrases translated" [ "$(ok_count "$T/dt.json")" -eq 60 ]
check "small drain_timeout: summary says 60, none lost" grep -q '"phrases":60,"lost":0' "$T/dt.json"
# When the guard does fire (a synthesiser that never answers), the report
# says so, the phrases count as lost and the exit status is 3.
mkdir "$T/hang"
cp "$T"/dt/*.conf "$T/hang/"
sed -i 's/ms_per_char = 60;/ms_per_char = 60; hang = true;/' "$T/hang/40-tts.conf"
sed -i 's/^recovery: {/recovery: { request_timeout = 600.0;/' "$T/hang/tolk.conf"
"$B/tests/mkwav" "$T/two.wav" 16000 1 16 2 800 700
$TR -c "$T/hang" --json "$T/two.wav" "$T/hang.wav" >"$T/hang.json" 2>"$T/hang.err"
check "hung synthesiser: exit 3" [ $? -eq 3 ]
check "hung synthesiser: both phrases reported lost" grep -q '"phrases":2,"lost":2' "$T/hang.json"
check "hung synthesiser: the summary says why it stopped" grep -q '"stopped":"drain timeout' "$T/hang.json"

# An hour of speech-like audio (0.8 s tone, 1.2 s gap) with mock engines of
# 1 ms latency, with and without the failover demo's mid-file STT failure:
# every phrase, in seconds of wall time.
for d in conf.d no-fault.conf.d; do
    mkdir -p "$T/hour/$d"
    cp "$S"/examples/failover/$d/*.conf "$T/hour/$d/"
    sed -i 's/latency_ms = [0-9]*;/latency_ms = 1;/' "$T/hour/$d"/*.conf
    sed -i 's/drain_timeout = [0-9.]*;/drain_timeout = 2.0;/' "$T/hour/$d/tolk.conf"
done
"$B/tests/mkwav" "$T/hour.wav" 16000 1 16 1800 800 1200
"$B/tolk-translate" -c "$T/hour/conf.d" --json "$T/hour.wav" "$T/hour1.wav" >"$T/hour1.json" 2>/dev/null
check "one hour with an STT failover: exit 0" [ $? -eq 0 ]
check "one hour with an STT failover: all 1800 phrases" [ "$(ok_count "$T/hour1.json")" -eq 1800 ]
check "one hour with an STT failover: the failover happened" grep -q '"tier":"failover"' "$T/hour1.json"
"$B/tolk-translate" -c "$T/hour/no-fault.conf.d" --json "$T/hour.wav" "$T/hour2.wav" >"$T/hour2.json" 2>/dev/null
check "one hour without a fault: all 1800 phrases" [ "$(ok_count "$T/hour2.json")" -eq 1800 ]
rm -f "$T/hour.wav" "$T/hour1.wav" "$T/hour2.wav"

# The failover demo as shipped, on 120 s: the fault no longer costs the
# phrases before the last replay_seconds (it gave 5 of 60).
"$B/tests/mkwav" "$T/fo120.wav" 16000 1 16 60 1000 1000
"$B/tolk-translate" -c "$S/examples/failover/conf.d" --json "$T/fo120.wav" "$T/fo120a.wav" >"$T/fo120a.json" 2>/dev/null
check "failover demo, 120 s: exit 0" [ $? -eq 0 ]
"$B/tolk-translate" -c "$S/examples/failover/no-fault.conf.d" --json "$T/fo120.wav" "$T/fo120b.wav" >"$T/fo120b.json" 2>/dev/null
check "failover demo, 120 s: all 60 phrases" [ "$(ok_count "$T/fo120a.json")" -eq 60 ]
check "failover demo, 120 s: same phrases and translations as without the fault" \
    [ "$(pick "$T/fo120a.json")" = "$(pick "$T/fo120b.json")" ]

# --- tolk-translate's exit status (issue 11, item 12) ---
$TR "$T/in.wav" /dev/full >"$T/full.out" 2>"$T/full.err"
check "OUT.wav on a full disk: exit 1" [ $? -eq 1 ]
check "OUT.wav on a full disk: the report says so" grep -q "/dev/full is incomplete: .*No space left on device" "$T/full.out"
mkdir "$T/nochain"
cp "$S"/examples/mock/conf.d/*.conf "$T/nochain/"
sed -i 's/providers = \[ "tts-mock" \];/providers = [ "tts-mock" ]; languages = [ "es" ];/' "$T/nochain/50-chains.conf"
$TR -c "$T/nochain" --from en --to fr "$T/in.wav" "$T/nc.wav" >/dev/null 2>"$T/nc.err"
check "no chain for the languages: exit 1" [ $? -eq 1 ]
check "no chain for the languages: says which" grep -q "no tts chain .* serves en -> fr" "$T/nc.err"
# SIGINT: a valid partial WAV, the report says so, exit 130 (128 + 2).
"$B/tests/mkwav" "$T/int.wav" 16000 1 16 60 800 1200
$TR "$T/int.wav" "$T/int-out.wav" >"$T/int.out" 2>"$T/int.err" &
tpid=$!
# signal it once it is translating: a background job of a non-interactive
# shell starts with SIGINT ignored until tolk-translate installs its handler
n=0
while c=$(grep -c '^\[' "$T/int.out" 2>/dev/null); [ "${c:-0}" -lt 2 ] && [ $n -lt 300 ]; do
    sleep 0.1
    n=$((n + 1))
done
kill -INT $tpid
wait $tpid
check "SIGINT: exit 130" [ $? -eq 130 ]
check "SIGINT: the report says it was interrupted" grep -q "^# interrupted by SIGINT" "$T/int.out"
check "SIGINT: fewer than 60 phrases" [ "$(grep -c '^\[' "$T/int.out")" -lt 60 ]
check "SIGINT: the partial WAV's header matches its data" \
    [ "$(wav_u32 "$T/int-out.wav" 40)" -eq $(($(wc -c <"$T/int-out.wav") - 44)) -a "$(wav_u32 "$T/int-out.wav" 40)" -gt 0 ]

# --- a FIFO as IN.wav (issue 11, item 13) ---
mkfifo "$T/fifo.wav"
$TR --input-timeout 1 "$T/fifo.wav" "$T/ff.wav" >/dev/null 2>"$T/ff.err"
check "FIFO without a writer: exit 1 after the timeout" [ $? -eq 1 ]
check "FIFO without a writer: says it waits, then gives up" \
    sh -c "grep -q 'waiting up to 1 s' '$T/ff.err' && grep -q 'no writer for 1 s' '$T/ff.err'"
cat "$T/in.wav" >"$T/fifo.wav" &
$TR --json "$T/fifo.wav" "$T/ff.wav" >"$T/ff.json" 2>/dev/null
check "FIFO with a writer: translated" grep -q '"summary":true,"phrases":3,"lost":0' "$T/ff.json"
wait

# --- tolkd checks ---
"$B/tolkd" --check-config -c "$S/conf.d" >"$T/check.out" 2>&1
check "shipped conf.d passes --check-config" [ $? -eq 0 ]
"$B/tolkd" --check-config -c "$S/examples/mock/conf.d" >"$T/check.out" 2>&1
check "mock conf.d passes --check-config" [ $? -eq 0 ]
mkdir "$T/bad"
cp "$S"/examples/mock/conf.d/*.conf "$T/bad/"
printf 'core: {\n  max_channels = 10;\n  workres = 2;\n};\n' >"$T/bad/tolk.conf"
"$B/tolkd" --check-config -c "$T/bad" >"$T/bad.out" 2>&1
check "bad conf.d fails --check-config with 1" [ $? -eq 1 ]
check "error names FILE:LINE and the key" grep -q "$T/bad/tolk.conf:3: unknown key 'workres' in core" "$T/bad.out"
"$B/tolkd" --help >/dev/null
check "tolkd --help" [ $? -eq 0 ]
"$B/tolkd" --version | grep -q "plugin ABI"
check "tolkd --version" [ $? -eq 0 ]
"$B/tolkd" --describe stt_mock >"$T/describe" 2>&1
check "tolkd --describe lists settings" grep -q "silence_ms" "$T/describe"
"$B/tolkd" --bogus >/dev/null 2>&1
check "tolkd: unknown option exits 2" [ $? -eq 2 ]

# --- tolkd running: SIGHUP, then SIGTERM ---
mkdir "$T/live"
cp "$S"/examples/mock/conf.d/*.conf "$T/live/"
cat >"$T/live/60-calls.conf" <<'CONF'
instance: { name = "calls"; plugin = "transport_mock";
  settings: { calls = 2; phrases = 2; speech_ms = 500; gap_ms = 500; repeat = true; }; };
CONF
"$B/tolkd" -f -c "$T/live" -p "$T/tolkd.pid" 2>"$T/tolkd.log" &
pid=$!
i=0
while [ ! -s "$T/tolkd.pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
check "pid file written" [ "$(cat "$T/tolkd.pid" 2>/dev/null)" = "$pid" ]
sleep 1
# (a reload is read on a thread of its own: wait for each outcome)
logged() {
    i=0
    while ! grep -q "$1" "$T/tolkd.log" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
sed -i 's/latency_ms = 20;/latency_ms = 25;/' "$T/live/30-mt.conf"
kill -HUP $pid
logged "reload applied"
printf 'instance: { name = "mt-mock"; plugin = "mt_mock"; settings: { nonsense = 1; }; };\n' >"$T/live/30-mt.conf"
kill -HUP $pid
logged "reload rejected"
kill -TERM $pid
wait $pid
rc=$?
check "tolkd exits 0 on SIGTERM" [ $rc -eq 0 ]
check "tolkd applied the good reload" grep -q "reload applied" "$T/tolkd.log"
check "tolkd rejected the bad reload with FILE:LINE" grep -q "30-mt.conf:1: unknown key 'nonsense'" "$T/tolkd.log"
check "tolkd took calls" grep -q "open via calls" "$T/tolkd.log"
check "pid file removed" [ ! -e "$T/tolkd.pid" ]

check_summary
