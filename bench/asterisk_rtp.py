#!/usr/bin/env python3
"""Concurrent calls through the real local Asterisk, translated by tolkd
with transport_rtp and the mock engines (`make bench-asterisk`).

For each N: N callers (Local channels playing a 7.1 s LibriVox recording,
then 3 s of silence) enter tolkd's Stasis application at once; tolkd calls
N listening callees, bridges each party with an ExternalMedia channel, and
translates. Printed per N:
  - CPU seconds per call-minute of tolkd and of Asterisk over the same
    window (from /proc/PID/stat). Asterisk's figure includes everything it
    does for these calls: the scripted parties (Local channels, playback,
    MixMonitor), the four ExternalMedia channels and two bridges per call.
  - frames Asterisk's RTP lost on the way to tolk (lost, late, duplicate,
    foreign, malformed), from tolkd's per-call media counters;
  - pacing of the audio Asterisk receives from tolk: each packet's
    deviation from 20 ms after the previous one, measured at the sendto()
    on the loopback (mean of the calls' means, the worst call's max).
Usage: asterisk_rtp.py PREFIX SRCDIR BUILDDIR N...
"""
import os
import re
import sys
import tempfile
import time

PREFIX, SRC, BUILD = sys.argv[1:4]
COUNTS = [int(x) for x in sys.argv[4:]] or [10, 20]
sys.argv = sys.argv[:4]
sys.path.insert(0, os.path.join(SRC, "plugins/transport_rtp/tests"))
import asterisk_calls as ac  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except (OSError, ValueError, IndexError):
        return float("nan")


def asterisk_pid():
    for name in ("asterisk.pid.run", "asterisk.pid"):
        try:
            return int(open(os.path.join(PREFIX, "var/run/asterisk", name)).read().strip())
        except (OSError, ValueError):
            pass
    return 0


def run(n):
    tmp = tempfile.mkdtemp(prefix="tolk-bench-rtp-")
    t = ac.Tolkd(tmp)
    try:
        if not ac.wait(lambda: "Stasis application '%s' ready" % ac.APP in t.log(), 15):
            print("tolkd did not connect to ARI")
            return False
        apid = asterisk_pid()
        e0 = t.count(r"\[channel\] %s.*ended after" % ac.APP)
        c0t, c0a = cpu(t.p.pid), cpu(apid)
        tags = ["%s-b%d-%d" % (ac.APP, n, i) for i in range(n)]
        for tag in tags:
            ac.originate(tag, "tolkrtp_a", "l%s" % tag.replace("-", ""), {"TAIL_WAIT": "3"})
        ok = ac.wait(lambda: t.count(r"\[channel\] %s.*ended after" % ac.APP) >= e0 + n, 90, 0.5)
        c1t, c1a = cpu(t.p.pid), cpu(apid)
        ac.wait(lambda: not ac.ours_left(tags + [ac.APP]), 15)
    finally:
        t.stop()
    lg = t.log()
    durations = [float(x) for x in re.findall(r"\[channel\] %s\S*: ended after ([\d.]+) s" % ac.APP, lg)][-n:]
    call_min = sum(durations) / 60.0
    lost = {k: 0 for k in ("lost", "late", "dup", "foreign", "malformed")}
    rx = 0
    for m in re.finditer(r"media: rx (\d+) frames, lost (\d+), late (\d+), dup (\d+), foreign (\d+), "
                         r"malformed (\d+)", lg):
        rx += int(m.group(1))
        for i, k in enumerate(lost):
            lost[k] += int(m.group(i + 2))
    pace = [(float(a), float(b)) for a, b in
            re.findall(r"pacing deviation from 20 ms: mean ([\d.]+) ms, max ([\d.]+) ms", lg)]
    translated = len(set(re.findall(r"\[phrase\] (%s\S*) #\d+ en->es" % ac.APP, lg)))
    print("%4d calls: %s, %d translated, %.1f call-minutes" %
          (n, "all ended" if ok else "NOT all ended", translated, call_min))
    if call_min > 0:
        print("      CPU per call-minute: tolkd %.3f s, Asterisk %.3f s" %
              ((c1t - c0t) / call_min, (c1a - c0a) / call_min))
    print("      RTP from Asterisk: %d frames; lost %d, late %d, duplicate %d, foreign %d, malformed %d" %
          (rx, lost["lost"], lost["late"], lost["dup"], lost["foreign"], lost["malformed"]))
    if pace:
        print("      pacing of RTP to Asterisk (%d links): deviation from 20 ms mean %.2f ms, worst %.2f ms" %
              (len(pace), sum(p[0] for p in pace) / len(pace), max(p[1] for p in pace)))
    return ok


def main():
    if not os.path.exists(os.path.join(PREFIX, "sbin/asterisk")):
        print("no Asterisk at %s: nothing to measure" % PREFIX)
        return 0
    ac.start_asterisk()
    for name, clip in (("tolkrtp_a", "sense_and_sensibility_01_austen_64kb-0870.wav"),):
        os.makedirs(ac.SOUNDS, exist_ok=True)
        ac.wav_to_sln16(os.path.join(ac.LIBRIVOX, clip), os.path.join(ac.SOUNDS, name + ".sln16"))
    ac.install_dialplan()
    print("transport_rtp through Asterisk %s (mock engines)" % os.path.basename(PREFIX.rstrip("/")))
    ok = all([run(n) for n in COUNTS])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
