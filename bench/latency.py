#!/usr/bin/env python3
"""`make latency`: the offline chain (conf.d: stt_pocketsphinx -> mt_apertium
-> tts_espeak) over recorded English speech, fed in real time through
`tolk-translate --realtime --json`, one call per set.

Sets (each skipped, with the reason, when its package is not installed):
  librivox  pocketsphinx-testdata: 5 read sentences of "Sense and
            Sensibility" (LibriVox), 32 s in all, with their transcription.
  prompts   asterisk-core-sounds-en-g722 (16 kHz G.722, one speaker) with
            asterisk-core-sounds-en's transcript: every recorded prompt of
            at least 5 s whose transcript has no number above 9 and no
            [tone] markup, about 5 minutes: continuous read speech of 5-73 s
            per prompt (decoded with bench/g722dec, which needs spandsp).
The items of a set are joined into one call with 1.5 s of low noise (+-30)
between them and 0.5 s before the first.

Per set it prints, over the phrases tolk-translate reports (p50/p90/p99,
linear interpolation between the nearest ranks):
  end of phrase -> final transcript   stages_ms.stt: from the moment the last
        sample of the phrase's last word (the recogniser's end_sample) was
        fed, at the call's pace, to the moment the final transcript reached
        the core;
  end of phrase -> first translated frame   latency_ms: from the same moment
        to the first frame of the translation handed to the transport (it
        includes waiting for earlier phrases' audio to finish playing);
  lag   lag_ms of each phrase, printed when tolk-translate reports it, "n/a"
        when it does not;
and the word error rate of the final transcripts, concatenated in order,
against the set's reference transcript (bench/wer.py).

usage: latency.py --builddir DIR --srcdir DIR [--conf DIR] [--out DIR]
                  [--sets librivox,prompts] [--report-only]
"""
import argparse
import gzip
import json
import os
import random
import re
import struct
import subprocess
import sys
import wave

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wer  # noqa: E402

RATE = 16000
LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"
PROMPTS = "/usr/share/asterisk/sounds/en_US_f_Allison"
PROMPT_TEXT = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
DIGITS = "zero one two three four five six seven eight nine".split()


def noise(seconds, rng):
    return struct.pack("<%dh" % int(seconds * RATE),
                       *(rng.randint(-30, 30) for _ in range(int(seconds * RATE))))


def read_wav(path):
    with wave.open(path, "rb") as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit("%s: not 16 kHz mono 16-bit" % path)
        return w.readframes(w.getnframes())


def librivox_items():
    if not os.path.isdir(LIBRIVOX):
        return None, "pocketsphinx-testdata is not installed"
    refs = {}
    with open(os.path.join(LIBRIVOX, "transcription")) as f:
        for line in f:
            m = re.match(r"\s*(.*?)\s*\((\S+)\)\s*$", line)
            if m:
                refs[m.group(2)] = m.group(1)
    items = []
    for fid in sorted(refs):
        items.append((fid, read_wav(os.path.join(LIBRIVOX, fid + ".wav")), refs[fid]))
    return items, None


def prompt_items(g722dec, tmp):
    if not os.path.isdir(PROMPTS) or not os.path.exists(PROMPT_TEXT):
        return None, ("asterisk-core-sounds-en-g722 and asterisk-core-sounds-en are not installed "
                      "(make latency-deps, or apt-get install asterisk-core-sounds-en-g722 asterisk-core-sounds-en, 11 MB)")
    if not g722dec or not os.access(g722dec, os.X_OK):
        return None, "bench/g722dec was not built: it needs libspandsp-dev (make latency-deps)"
    items = []
    with gzip.open(PROMPT_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            name, text = name.strip(), text.strip()
            if name.startswith("silence/") or re.search(r"[\[\]]|\d\d|\d[.,]\d", text):
                continue
            path = os.path.join(PROMPTS, name + ".g722")
            if not os.path.exists(path) or os.path.getsize(path) < 5 * 8000:
                continue
            text = re.sub(r"\d", lambda m: " " + DIGITS[int(m.group(0))] + " ", text)
            out = os.path.join(tmp, name.replace("/", "_") + ".wav")
            subprocess.run([g722dec, path, out], check=True)
            items.append((name, read_wav(out), text))
    items.sort()
    return items, None


def build_call(items, path):
    rng = random.Random(12)
    pcm = [noise(0.5, rng)]
    for _, audio, _ in items:
        pcm.append(audio)
        pcm.append(noise(1.5, rng))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(pcm))
    return sum(len(p) for p in pcm) / 2 / RATE


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def fmt(values, unit="ms"):
    if not values:
        return "n/a"
    return "p50 %5.0f  p90 %5.0f  p99 %5.0f  max %5.0f %s (%d phrases)" % (
        pct(values, 50), pct(values, 90), pct(values, 99), max(values), unit, len(values))


FINAL_LOG = re.compile(r"final (\d+\.\d+)-(\d+\.\d+) s, end found at (\d+\.\d+) s, "
                       r"end_utt (\d+) ms \(CPU (\d+) ms\)")


def report(name, jsonl, reference, seconds):
    phrases, summary = [], None
    # stt_pocketsphinx's debug line per final: where the detector noticed
    # the end, and ps_end_utt()'s CPU time; their sum does not depend on
    # what else the machine runs
    est, end_cpu = [], []
    log = jsonl[:-len(".jsonl")] + ".log"
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            for line in f:
                m = FINAL_LOG.search(line)
                if m:
                    end, found, cpu = float(m.group(2)), float(m.group(3)), float(m.group(5))
                    est.append(max(0.0, found - end) * 1000.0 + cpu)
                    end_cpu.append(cpu)
    with open(jsonl) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            o = json.loads(line)
            if o.get("summary"):
                summary = o
            elif "phrase" in o:
                phrases.append(o)
    ok = [p for p in phrases if p.get("ok")]
    stt = [p["stages_ms"]["stt"] for p in ok if p.get("stages_ms", {}).get("stt") is not None]
    lat = [p["latency_ms"] for p in ok if p.get("latency_ms") is not None]
    lag = [p["lag_ms"] for p in ok if p.get("lag_ms") is not None]
    hyp = " ".join(p.get("text", "") for p in phrases)
    errors, nref = wer.wer(reference, hyp)
    print("== %s: %.0f s of audio, %d phrases (%d lost)" % (
        name, seconds, len(phrases), summary.get("lost", 0) if summary else -1))
    print("  end of phrase -> final transcript      %s" % fmt(stt))
    print("  end of phrase -> first translated frame %s" % fmt(lat))
    if est:
        print("    detector delay + ps_end_utt CPU      %s" % fmt(est))
        print("    of which ps_end_utt CPU              %s" % fmt(end_cpu))
    print("  lag                                     %s" % (fmt(lag) if lag else "n/a (no lag_ms in this tolk-translate's report)"))
    # does the recogniser's time grow with the phrase?
    for lo, hi in ((0, 3), (3, 8), (8, 15), (15, 1e9)):
        b = [p["stages_ms"]["stt"] for p in ok
             if p.get("stages_ms", {}).get("stt") is not None and lo <= p["end_s"] - p["start_s"] < hi]
        if b:
            print("    phrases %2.0f-%s s: end of phrase -> final p50 %4.0f  max %5.0f ms (%d)" % (
                lo, "%2.0f" % hi if hi < 1e9 else "  ", pct(b, 50), max(b), len(b)))
    longest = max((p["end_s"] - p["start_s"] for p in phrases), default=0)
    print("  longest phrase %.1f s" % longest)
    if nref:
        print("  word error rate %.1f %% (%d errors / %d words)" % (100.0 * errors / nref, errors, nref))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--builddir", required=True)
    ap.add_argument("--srcdir", required=True)
    ap.add_argument("--conf")
    ap.add_argument("--out", default="latency-out")
    ap.add_argument("--sets", default="librivox,prompts")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    conf = a.conf or os.path.join(a.srcdir, "conf.d")
    os.makedirs(a.out, exist_ok=True)
    load = os.getloadavg()
    print("# make latency: %s, conf %s, real time; load average %.1f %.1f %.1f "
          "(figures depend on what else runs on the machine)" % (
              os.path.join(a.builddir, "tolk-translate"), conf, *load))
    for name in a.sets.split(","):
        if name == "librivox":
            items, why = librivox_items()
        elif name == "prompts":
            items, why = prompt_items(os.path.join(a.builddir, "bench", "g722dec"), a.out)
        else:
            raise SystemExit("unknown set %s" % name)
        if items is None:
            print("== %s: skipped: %s" % (name, why))
            continue
        wav = os.path.join(a.out, name + ".wav")
        jsonl = os.path.join(a.out, name + ".jsonl")
        seconds = build_call(items, wav)
        reference = " ".join(t for _, _, t in items)
        with open(os.path.join(a.out, name + ".ref"), "w") as f:
            f.write(reference + "\n")
        if not a.report_only:
            with open(jsonl, "w") as f, open(jsonl[:-len(".jsonl")] + ".log", "w") as lf:
                r = subprocess.run([os.path.join(a.builddir, "tolk-translate"), "-c", conf,
                                    "-P", os.path.join(a.builddir, "plugins"), "--realtime", "--json",
                                    "-l", "debug", wav, os.path.join(a.out, name + ".out.wav")],
                                   stdout=f, stderr=lf)
            if r.returncode != 0:
                print("== %s: tolk-translate exited %d (see %s)" % (name, r.returncode, jsonl))
        report(name, jsonl, reference, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
