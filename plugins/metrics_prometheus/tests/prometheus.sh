#!/bin/sh
# metrics_prometheus end to end, as an operator would run it: tolkd -f with
# a live mock call and the exporter on a free loopback port; promtool on
# what it serves and on the shipped Prometheus config, rules and rule
# tests; a real Prometheus scraping it; the shipped dashboard's queries run
# against that Prometheus; SIGHUP and SIGTERM still reach tolkd.
# (prometheus.sh is made from prometheus.sh.in: configure's paths below.)
set -u
PROMTOOL='/usr/bin/promtool'
PROMETHEUS='/usr/bin/prometheus'
B=${top_builddir:?}
S=${top_srcdir:?}
[ -n "$PROMTOOL" ] || PROMTOOL=$(command -v promtool || true)
[ -n "$PROMETHEUS" ] || PROMETHEUS=$(command -v prometheus || true)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3 || true)
if [ -z "$PROMTOOL" ] || [ -z "$PROMETHEUS" ] || [ -z "$PY" ]; then
    echo "SKIP: needs promtool, prometheus (Debian package prometheus) and python3"
    exit 77
fi
H="$PY $S/plugins/metrics_prometheus/tests/promhelper.py"
T=$(mktemp -d /tmp/tolk-prom-XXXXXX)
TOLKD_PID=
PROM_PID=
cleanup() {
    [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
    [ -n "$TOLKD_PID" ] && kill "$TOLKD_PID" 2>/dev/null && wait "$TOLKD_PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
pass=0
fail=0
check() {
    desc=$1
    shift
    if "$@"; then
        pass=$((pass + 1))
        echo "ok - $desc"
    else
        fail=$((fail + 1))
        echo "not ok - $desc"
    fi
}
# waits up to $1 seconds for a command to succeed
wait_for() {
    n=$(($1 * 10))
    shift
    while [ $n -gt 0 ]; do
        "$@" && return 0
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}

# --- the shipped files ---
check "promtool check config on contrib/prometheus/prometheus.yml" \
    "$PROMTOOL" check config "$S/contrib/prometheus/prometheus.yml"
check "promtool check rules on contrib/prometheus/tolk.rules.yml" \
    "$PROMTOOL" check rules "$S/contrib/prometheus/tolk.rules.yml"
check "promtool test rules: the alerts fire on tolk's series" \
    "$PROMTOOL" test rules "$S/plugins/metrics_prometheus/tests/tolk.rules.test.yml"
check "the Grafana dashboard is JSON" "$PY" -c "import json,sys; json.load(open(sys.argv[1]))" \
    "$S/contrib/grafana/tolk-dashboard.json"

# --- tolkd with two live mock calls and the exporter on any free port ---
C="$T/conf.d"
mkdir -p "$C"
cat >"$C/tolk.conf" <<'EOF'
core: { workers = 1; drain_timeout = 0.2; log_level = "info"; };
EOF
cat >"$C/20-stt.conf" <<'EOF'
instance: { name = "stt-a"; plugin = "stt_mock";
  settings: { phrases = [ "hello world", "thank you" ]; silence_ms = 200; latency_ms = 10; }; };
EOF
cat >"$C/30-mt.conf" <<'EOF'
instance: { name = "mt-a"; plugin = "mt_mock"; settings: { latency_ms = 5; }; };
EOF
cat >"$C/40-tts.conf" <<'EOF'
instance: { name = "tts-a"; plugin = "tts_mock"; settings: { latency_ms = 10; }; };
EOF
cat >"$C/50-chains.conf" <<'EOF'
chains = ( { name = "stt"; kind = "stt"; providers = [ "stt-a" ]; },
           { name = "mt"; kind = "mt"; providers = [ "mt-a" ]; },
           { name = "tts"; kind = "tts"; providers = [ "tts-a" ]; } );
EOF
cat >"$C/60-calls.conf" <<'EOF'
instance: { name = "calls"; plugin = "transport_mock";
  settings: { calls = 2; phrases = 1000; speech_ms = 600; gap_ms = 400; }; };
EOF
cat >"$C/70-metrics.conf" <<'EOF'
instance: { name = "prom"; plugin = "metrics_prometheus"; settings: { port = 0; }; };
EOF
"$B/tolkd" -f -c "$C" -P "$B/plugins" >"$T/tolkd.log" 2>&1 &
TOLKD_PID=$!
listening() { grep -q 'listening on http://127.0.0.1:[0-9]*/metrics' "$T/tolkd.log"; }
check "tolkd starts and the exporter listens" wait_for 10 listening
if [ $fail -ne 0 ]; then
    cat "$T/tolkd.log"
    exit 1
fi
PORT=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' "$T/tolkd.log" | head -1)
U="http://127.0.0.1:${PORT:-0}"

# A real Prometheus scraping it every second, from the shipped config; it
# starts up while the exporter is checked directly.
PPORT=$($H freeport)
P="http://127.0.0.1:$PPORT"
sed -e "s|127.0.0.1:9090|127.0.0.1:$PORT|" -e 's|\(scrape_interval:\) 15s|\1 1s|' \
    -e 's|\(evaluation_interval:\) 15s|\1 1s|' -e 's|scrape_timeout: 10s|scrape_timeout: 1s|' \
    -e "s|^  - tolk.rules.yml|  - $S/contrib/prometheus/tolk.rules.yml|" \
    "$S/contrib/prometheus/prometheus.yml" >"$T/prometheus.yml"
"$PROMETHEUS" --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/data" \
    --web.listen-address="127.0.0.1:$PPORT" --log.level=warn >"$T/prometheus.log" 2>&1 &
PROM_PID=$!
check "the exporter did not warn about its bind address" sh -c "! grep -q 'beyond loopback' '$T/tolkd.log'"

# a phrase is translated (about 1.5 s into the call), then scrape
translated() {
    $H get "$U/metrics" "$T/m0.txt" >/dev/null 2>&1 &&
        grep -q '^translations_completed_total [1-9]' "$T/m0.txt"
}
check "a phrase of the mock call was translated" wait_for 10 translated
check "GET /metrics answers 200" [ "$($H get "$U/metrics" "$T/metrics.txt")" = 200 ]
check "frames_processed_total counts the calls' audio" \
    grep -q '^frames_processed_total [1-9][0-9]*$' "$T/metrics.txt"
check "process metrics are there" grep -q '^process_resident_memory_bytes [1-9]' "$T/metrics.txt"

# promtool: parse errors fail (exit 1); lint findings (exit 3) are allowed
# only for the two names the spec prescribes in milliseconds
rc=9
[ -s "$T/metrics.txt" ] && { "$PROMTOOL" check metrics <"$T/metrics.txt" >"$T/lint.txt" 2>&1; rc=$?; }
check "promtool check metrics finds no error (exit $rc)" [ $rc -eq 0 -o $rc -eq 3 ]
check "promtool's only findings are the spec's millisecond names" sh -c "[ -f '$T/lint.txt' ] && ! grep -v \
    -e '^component_latency_milliseconds use base unit \"seconds\" instead of \"milliseconds\"\$' \
    -e '^queue_wait_time_milliseconds use base unit \"seconds\" instead of \"milliseconds\"\$' \
    -e '^\$' '$T/lint.txt'"
[ $rc -eq 0 ] || sed 's/^/# promtool: /' "$T/lint.txt"

check "GET /healthz answers 200 with status ok" sh -c \
    "[ \"\$($H get '$U/healthz' '$T/health.json')\" = 200 ] && grep -q '\"status\":\"ok\"' '$T/health.json'"
check "GET /nope answers 404" [ "$($H get "$U/nope" "$T/x")" = 404 ]

# --- what Prometheus made of it ---

up=$($H wait-query "$P" 'up{job="tolk"}' 1 20)
check "Prometheus scraped tolkd: up == 1" [ "$up" = 1.0 ]
frames=$($H wait-query "$P" 'frames_processed_total{job="tolk"}' 1 10)
check "Prometheus has a non-zero frames_processed_total ($frames)" [ -n "$frames" ]
check "Prometheus sees the calls" sh -c \
    "[ \"\$($H wait-query '$P' 'active_channels{job=\"tolk\"}' 2 5)\" = 2.0 ]"
$H rules "$P" >"$T/rules.txt" 2>&1
for r in TolkDown TolkProviderDown TolkLatencyP95OverBudget TolkFailoverStorm TolkChannelLimitReached; do
    check "Prometheus loaded the alert $r" grep -qx "$r" "$T/rules.txt"
done
$H dashboard-exprs "$S/contrib/grafana/tolk-dashboard.json" >"$T/exprs.txt"
check "every query of the dashboard runs ($(wc -l <"$T/exprs.txt") queries)" \
    sh -c "$H query-ok '$P' <'$T/exprs.txt'"
check "the dashboard's latency query has data" sh -c \
    "$H wait-query '$P' 'sum(rate(translation_latency_seconds_count{job=\"tolk\",stage=\"total\"}[1m]))' 0.000001 10 >/dev/null"

# --- the core's signals still work with lws on its loop ---
kill -HUP "$TOLKD_PID"
reloaded() { grep -q 'reload applied' "$T/tolkd.log"; }
check "SIGHUP reloads tolkd" wait_for 5 reloaded
check "the exporter serves after the reload" [ "$($H get "$U/healthz" "$T/x")" = 200 ]
kill -TERM "$TOLKD_PID"
stopped() { ! kill -0 "$TOLKD_PID" 2>/dev/null; }
check "SIGTERM stops tolkd" wait_for 10 stopped
wait "$TOLKD_PID"
rc=$?
TOLKD_PID=
check "tolkd exits 0 (exit $rc)" [ $rc -eq 0 ]
check "Prometheus sees it go" sh -c "$H wait-query '$P' 'up{job=\"tolk\"} == bool 0' 1 5 >/dev/null"
# lws writes its own errors and warnings to stderr as "[date time] E: ..."
check "no error or warning from libwebsockets in the log" sh -c \
    "! grep -a -e '^\[[0-9/]* [0-9:]*\] [EW]: ' -e 'libwebsockets' '$T/tolkd.log'"

echo "# $pass passed, $fail failed"
if [ $fail -ne 0 ]; then
    echo "# --- tolkd log (tail) ---"
    tail -30 "$T/tolkd.log"
    echo "# --- prometheus log (tail) ---"
    tail -20 "$T/prometheus.log"
fi
[ $fail -eq 0 ]
