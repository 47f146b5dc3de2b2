#!/bin/sh
# tolkd as an operator runs it, and as a careless or hostile one does:
# messages for broken configurations and plugins, a reload of a large conf.d
# while /healthz is polled, a FIFO in conf.d, stray signals, a stderr pipe
# nobody reads, a contested pid file, and the daemon started with relative
# paths, and the exporter's port taken by another process (exit 3 at
# startup, a rejected reload). The exporter (metrics_prometheus, port 0)
# answers /healthz.
set -u
B=${top_builddir:?}
S=${top_srcdir:?}
T=$(mktemp -d /tmp/tolk-daemon-XXXXXX)
PIDS=
cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
. "$S/tests/checklib.sh"
TOLKD="$B/tolkd"
# (a hang fails a check instead of the whole suite)
TO="timeout 20"
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
# GET URL: prints the status code (000: no answer within 10 s)
get() { curl -s -o /dev/null -m 10 -w '%{http_code}' "$1"; }
alive() { kill -0 "$1" 2>/dev/null; }
healthy() { [ "$(get "$U/healthz")" = 200 ]; }
dead() { ! kill -0 "$1" 2>/dev/null; }
if ! command -v curl >/dev/null; then
    echo "SKIP: needs curl"
    exit 77
fi

# The mock pipeline, two looping calls and the exporter on any free port.
mkconf() {
    mkdir -p "$1"
    cp "$S"/examples/mock/conf.d/*.conf "$1/"
    sed -i 's/drain_timeout = [0-9.]*;/drain_timeout = 0.5;/' "$1/tolk.conf"
    cat >"$1/60-calls.conf" <<'EOF'
instance: { name = "calls"; plugin = "transport_mock";
  settings: { calls = 2; phrases = 1000; speech_ms = 500; gap_ms = 300; repeat = true; }; };
EOF
    printf 'instance: { name = "prom"; plugin = "metrics_prometheus"; settings: { port = %s; }; };\n' \
        "${2:-0}" >"$1/70-metrics.conf"
}
port_of() { sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' "$1" | head -1; }

# --- messages that name the real problem (tolkd -t) ---
mkdir "$T/m"
printf 'core: {\n  workers = 1e999;\n  drain_timeout = -1e999;\n  max_channels = 99999999999999999999;\n};\n' >"$T/m/tolk.conf"
$TO "$TOLKD" -t -c "$T/m" >"$T/m.out" 2>&1
check "numbers out of range: exit 1" [ $? -eq 1 ]
check "1e999 is an error with FILE:LINE" grep -q "$T/m/tolk.conf:2: number 1e999 is out of range" "$T/m.out"
check "-1e999 is an error with FILE:LINE" grep -q "$T/m/tolk.conf:3: number -1e999 is out of range" "$T/m.out"
check "99999999999999999999 is out of range (not -1)" \
    grep -q "$T/m/tolk.conf:4: integer 99999999999999999999 is out of range" "$T/m.out"
check "no value invented" sh -c "! grep -q 'is -1' '$T/m.out'"

# 5000 endpoints and one name twice: names are checked in a hash table (the
# check was quadratic: 100k took 75 s); the time is printed, not judged.
# (Not 100k here: libconfig 1.5 grows its lists by realloc, which is
# quadratic under AddressSanitizer; 100k take about 1 s on the plain build.)
mkdir "$T/big"
awk 'BEGIN { print "endpoints = ("; for (i = 0; i < 5000; i++)
    printf "  { name = \"ep%d\"; language = \"en\"; },\n", i;
    print "  { name = \"ep7\"; language = \"es\"; }\n);" }' >"$T/big/tolk.conf"
t0=$(date +%s%N)
timeout 60 "$TOLKD" -t -c "$T/big" >"$T/big.out" 2>&1
rc=$?
t1=$(date +%s%N)
echo "# tolkd -t on 5000 endpoints: $(((t1 - t0) / 1000000)) ms"
check "5000 endpoints: the one duplicate found (exit $rc)" [ $rc -eq 1 ]
check "...with both places" grep -q "$T/big/tolk.conf:5002: duplicate endpoint 'ep7' (first defined at $T/big/tolk.conf:9)" "$T/big.out"

mkdir -p "$T/d/x.conf"
cp "$S"/examples/mock/conf.d/*.conf "$T/d/"
$TO "$TOLKD" -t -c "$T/d" >"$T/d.out" 2>&1
check "a directory named x.conf: exit 1" [ $? -eq 1 ]
check "a directory named x.conf: says it is a directory" \
    grep -q "$T/d/x.conf: is a directory, not a configuration file" "$T/d.out"

mkdir "$T/i"
cp "$S"/examples/mock/conf.d/*.conf "$T/i/"
printf '# endpoints kept apart\n@include "endpoints.inc"\n' >"$T/i/80-endpoints.conf"
printf 'endpoints = (\n  { name = "carol"; language = "en"; },\n  { name = "dave"; lang = "es"; }\n);\n' >"$T/i/endpoints.inc"
$TO "$TOLKD" -t -c "$T/i" >"$T/i.out" 2>&1
check "an error in an @include'd file: exit 1" [ $? -eq 1 ]
check "an error in an @include'd file names that file and its line" \
    grep -q "$T/i/endpoints.inc:3: unknown key 'lang' in endpoint" "$T/i.out"

mkdir "$T/p"
ln -s loop.so "$T/p/loop.so"
mkfifo "$T/p/fifo.so"
# an x86-64 ELF header, or AArch64 where this runs on x86-64's neighbour
own=$(od -An -tu2 -j18 -N2 "$TOLKD" | tr -d ' ')
other=183
[ "$own" = 183 ] && other=62
{ printf '\177ELF\002\001\001\000\000\000\000\000\000\000\000\000\003\000'
  printf "\\$(printf %03o $((other & 255)))\\$(printf %03o $((other >> 8)))"
  head -c 44 /dev/zero; } >"$T/p/alien.so"
for plugin in loop fifo alien; do
    mkdir -p "$T/p-$plugin"
    printf 'instance: { name = "x"; plugin = "%s"; };\n' "$plugin" >"$T/p-$plugin/tolk.conf"
    $TO "$TOLKD" -t -c "$T/p-$plugin" -P "$T/p" >"$T/p-$plugin.out" 2>&1
    echo "rc=$?" >>"$T/p-$plugin.out"
done
check "a plugin that is a symlink loop: says so" grep -q "loop.so: a loop of symbolic links" "$T/p-loop.out"
check "a plugin that is a FIFO: refused at once" grep -q "fifo.so: refused: it is a FIFO" "$T/p-fifo.out"
check "a plugin that is a FIFO: exit 1, no hang" grep -q "rc=1" "$T/p-fifo.out"
check "an ELF for another machine: says so" \
    grep -q "alien.so: cannot load: built for another machine (e_machine $other" "$T/p-alien.out"

mkdir "$T/f"
cp "$S"/examples/mock/conf.d/*.conf "$T/f/"
mkfifo "$T/f/x.conf"
$TO "$TOLKD" -t -c "$T/f" >"$T/f.out" 2>&1
check "--check-config with a FIFO named x.conf: exit 1, no hang" [ $? -eq 1 ]
check "--check-config names the FIFO" grep -q "$T/f/x.conf: is a FIFO (named pipe), not a configuration file" "$T/f.out"

# --- the version comes from configure ---
version=$(sed -n 's/^#define PACKAGE_VERSION "\(.*\)"$/\1/p' "$B/config.h")
"$TOLKD" --version >"$T/version"
check "tolkd --version prints configure's version ($(cat "$T/version"))" grep -q "^tolkd $version[ (]" "$T/version"
"$B/tolk-translate" --version >"$T/tversion"
check "tolk-translate --version prints configure's version ($(cat "$T/tversion"))" \
    grep -q "^tolk-translate $version[ (]" "$T/tversion"

# --- a running tolkd: a reload of 20k endpoints while /healthz is polled ---
C="$T/live"
mkconf "$C"
"$TOLKD" -f -c "$C" -p "$T/tolkd.pid" 2>"$T/tolkd.log" &
pid=$!
PIDS="$PIDS $pid"
listening() { [ -n "$(port_of "$T/tolkd.log")" ]; }
check "tolkd starts and the exporter listens" wait_for 10 listening
U="http://127.0.0.1:$(port_of "$T/tolkd.log")"
check "pid file written" [ "$(cat "$T/tolkd.pid" 2>/dev/null)" = "$pid" ]

awk 'BEGIN { print "endpoints = ("; for (i = 0; i < 20000; i++)
    printf "  { name = \"ep%d\"; language = \"en\"; voice = \"v\"; }%s\n", i, i < 19999 ? "," : "";
    print ");" }' >"$C/80-endpoints.conf"
done_reload() { grep -q "reload applied\|reload rejected" "$T/tolkd.log"; }
kill -HUP $pid
# answers that came while the reload was still under way (a loop blocked
# by the reload answers only once it is over)
answered=0 polls=0 during=0
while ! done_reload && [ $polls -lt 100 ]; do
    t0=$(date +%s%N)
    code=$(get "$U/healthz")
    t1=$(date +%s%N)
    polls=$((polls + 1))
    [ "$code" = 200 ] && answered=$((answered + 1))
    [ "$code" = 200 ] && ! done_reload && during=$((during + 1))
    echo "# /healthz during the reload: $code in $(((t1 - t0) / 1000000)) ms"
done
check "20k endpoints: the reload is applied" wait_for 20 grep -q "reload applied" "$T/tolkd.log"
check "/healthz answered every time ($answered of $polls)" [ $answered -eq $polls ]
check "/healthz answered while the reload was under way ($during times)" [ $during -ge 1 ]
sed -n 's/.*\(conf.d read in [0-9.]* s\).*/# 20k endpoints: \1/p' "$T/tolkd.log" | tail -1

# a FIFO named x.conf: the reload is rejected with its name, nothing hangs
mkfifo "$C/x.conf"
kill -HUP $pid
check "FIFO x.conf: the reload is rejected" wait_for 10 grep -q "reload rejected" "$T/tolkd.log"
check "FIFO x.conf: the message names it" grep -q "$C/x.conf: is a FIFO (named pipe), not a configuration file" "$T/tolkd.log"
check "FIFO x.conf: /healthz still answers" [ "$(get "$U/healthz")" = 200 ]
rm -f "$C/x.conf"

# --- the exporter's port is taken ---
# by the running tolkd: a second one cannot serve metrics there, says so
# with the address and port, and exits 3 (an instance that cannot be
# created, tolkd(8)) rather than running without metrics
P1=$(port_of "$T/tolkd.log")
mkconf "$T/taken" "$P1"
$TO "$TOLKD" -f -c "$T/taken" >"$T/taken.out" 2>&1
check "the exporter's port taken at startup: exit 3" [ $? -eq 3 ]
check "...naming the address and port" grep -q "cannot listen on 127.0.0.1:$P1: Address already in use" "$T/taken.out"
# a reload onto a port another process holds: rejected with that message,
# and the running exporter stays
if command -v python3 >/dev/null; then
    python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1])); __import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)' "$T/holder.port" &
    holder=$!
    PIDS="$PIDS $holder"
    wait_for 10 [ -s "$T/holder.port" ]
    P2=$(cat "$T/holder.port")
    rejected_before=$(grep -c "reload rejected" "$T/tolkd.log")
    cp "$C/70-metrics.conf" "$T/70-metrics.conf.saved"
    sed -i "s/port = 0;/port = $P2;/" "$C/70-metrics.conf"
    kill -HUP $pid
    rejected() { [ "$(grep -c "reload rejected" "$T/tolkd.log")" -gt "$rejected_before" ]; }
    check "a reload onto a taken port is rejected" wait_for 10 rejected
    check "...naming the address and port" grep -q "cannot listen on 127.0.0.1:$P2: Address already in use" "$T/tolkd.log"
    check "...and the running exporter still answers" [ "$(get "$U/healthz")" = 200 ]
    check "...and tolkd still runs" alive $pid
    cp "$T/70-metrics.conf.saved" "$C/70-metrics.conf"
    kill $holder 2>/dev/null
else
    echo "# no python3: the reload onto a taken port is not checked"
fi

# a second tolkd with the same pid file refuses to start, and leaves it be
mkconf "$T/second"
$TO "$TOLKD" -f -c "$T/second" -p "$T/tolkd.pid" >"$T/second.out" 2>&1
check "a second tolkd on a locked pid file exits 3" [ $? -eq 3 ]
check "...saying who holds it" grep -q "pid file $T/tolkd.pid is locked by another tolkd (pid $pid)" "$T/second.out"
check "...and the pid file is the first one's still" [ "$(cat "$T/tolkd.pid" 2>/dev/null)" = "$pid" ]

# stray signals do not end the daemon; SIGUSR1 reopens the log file
mv "$T/tolkd.log" "$T/tolkd.log.1"
kill -USR1 $pid
kill -USR2 $pid
kill -ALRM $pid
sleep 0.5
check "SIGUSR1, SIGUSR2, SIGALRM: tolkd still runs" alive $pid
check "...and answers" [ "$(get "$U/healthz")" = 200 ]
check "SIGUSR1 reopened the log file (after logrotate)" \
    wait_for 5 grep -q "SIGUSR1 received: log file $T/tolkd.log reopened" "$T/tolkd.log"

kill -TERM $pid
check "SIGTERM still ends it" wait_for 15 dead $pid
alive $pid && kill -9 $pid
wait $pid
check "...with exit 0" [ $? -eq 0 ]
check "its pid file is removed" [ ! -e "$T/tolkd.pid" ]

$TO "$TOLKD" -f -c "$C" -p "$T/no/such/dir/tolkd.pid" >"$T/nopid.out" 2>&1
check "an unwritable pid file: exit 3" [ $? -eq 3 ]
check "...saying why" grep -q "cannot write pid file $T/no/such/dir/tolkd.pid" "$T/nopid.out"

# --- standard error into a pipe nobody reads, -l debug: the loop goes on ---
# The pipe is filled before tolkd starts, so its very first line would block
# a tolkd that wrote from the loop. The exporter takes the first tolkd's
# port, free again.
PORT=$(port_of "$T/tolkd.log.1")
mkconf "$T/pipe" "$PORT"
mkfifo "$T/errpipe"
sleep 600 <"$T/errpipe" &
reader=$!
PIDS="$PIDS $reader"
head -c 65536 /dev/zero >"$T/errpipe"
"$TOLKD" -f -l debug -c "$T/pipe" 2>"$T/errpipe" &
pid=$!
PIDS="$PIDS $pid"
U="http://127.0.0.1:$PORT"
check "stderr pipe full: /healthz answers" wait_for 10 healthy
answered=0
for i in 1 2 3 4 5; do
    [ "$(get "$U/healthz")" = 200 ] && answered=$((answered + 1))
    sleep 0.2
done
check "stderr pipe full: /healthz answers on ($answered of 5)" [ $answered -eq 5 ]
kill -TERM $pid
check "stderr pipe full: SIGTERM ends tolkd" wait_for 15 dead $pid
alive $pid && kill -9 $pid
wait $pid
check "...with exit 0" [ $? -eq 0 ]
kill $reader 2>/dev/null

# --- daemon mode with relative paths: SIGHUP re-reads the right conf.d ---
mkconf "$T/rel/conf" "$PORT"
ln -s "$B/plugins" "$T/rel/plugins"
(cd "$T/rel" && "$TOLKD" -c conf -P plugins -p rel.pid)
check "daemon mode: the parent exits 0" [ $? -eq 0 ]
check "daemon mode: the relative pid file is where it was named" wait_for 10 [ -s "$T/rel/rel.pid" ]
dpid=$(cat "$T/rel/rel.pid" 2>/dev/null)
PIDS="$PIDS $dpid"
U="http://127.0.0.1:$PORT"
check "daemon mode: the exporter answers" wait_for 10 healthy
sed -i 's/latency_ms = 20;/latency_ms = 25;/' "$T/rel/conf/30-mt.conf"
kill -HUP "$dpid"
applied() {
    curl -s -m 5 "$U/metrics" | grep -q '^config_reloads_total{result="applied"} 1'
}
check "daemon mode: SIGHUP re-read the relative conf.d" wait_for 10 applied
kill -TERM "$dpid"
check "daemon mode: SIGTERM ends it" wait_for 10 dead "$dpid"
check "daemon mode: its pid file is removed" [ ! -e "$T/rel/rel.pid" ]

check_summary
