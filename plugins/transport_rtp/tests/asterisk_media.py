#!/usr/bin/env python3
"""ARI driver for test_media's real-Asterisk group (see asterisk_media.sh).

  asterisk_media.py --prefix PREFIX --app APP --channel ID --sound NAME --dtmf DIGITS

Connects the events WebSocket of APP (the Stasis app exists only while it
is connected) and prints "ready". Then it waits for the ExternalMedia
channel ID that the probe creates, puts it in a mixing bridge with a
scripted party (Local/NAME@tolk-media-party/n, asterisk_media.conf: plays sounds/tolk/NAME, sends DIGITS,
waits, hangs up, records what it heard), waits for the party to hang up,
deletes the ExternalMedia channel and the bridge, checks that none of them
is left (GET /channels, GET /bridges), measures the party's recording of
what it heard, and prints one JSON line with the findings. Standard library
only (the events WebSocket is written out by hand).
"""
import argparse
import base64
import json
import math
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.request

ARI = "http://127.0.0.1:8088/ari"
AUTH = "Basic " + base64.b64encode(b"test:test").decode()


def ari(method, path, body=None):
    req = urllib.request.Request(ARI + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
            return r.status, json.loads(data) if data else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


class Events:
    def __init__(self, app):
        self.s = socket.create_connection(("127.0.0.1", 8088), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(("GET /ari/events?app=%s&api_key=test:test HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n" % (app, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            c = self.s.recv(1)
            if not c:
                raise RuntimeError("events socket closed during the upgrade")
            head += c
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError("events upgrade refused: %r" % head[:100])
        self.buf = b""
        self.log = []

    def _exact(self, n):
        while len(self.buf) < n:
            c = self.s.recv(65536)
            if not c:
                raise EOFError
            self.buf += c
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def next(self, timeout):
        self.s.settimeout(timeout)
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            p = self._exact(n)
            op = b0 & 0x0F
            if op == 0x9:
                mask = os.urandom(4)
                self.s.sendall(bytes([0x8A, 0x80 | len(p)]) + mask +
                               bytes(c ^ mask[i % 4] for i, c in enumerate(p)))
                continue
            if op == 0x1:
                ev = json.loads(p)
                self.log.append(ev.get("type"))
                return ev

    def wait(self, pred, timeout):
        end = time.time() + timeout
        while time.time() < end:
            try:
                ev = self.next(max(0.05, end - time.time()))
            except socket.timeout:
                break
            if pred(ev):
                return ev
        return None


def measure(path):
    """Frames that carry a tone (over 100 of 320 samples beyond +-1000: not
    the short clicks this Asterisk's recordings have every 20 ms), their
    strongest frequency and RMS, and the loud
    frames in general."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        return {"error": str(e)}
    n = len(data) // 2
    s = struct.unpack("<%dh" % n, data[:2 * n])
    loud = tone = 0
    sumsq = 0.0
    first_tone = None
    # power per frequency (a DFT bin every 5 Hz), summed over the tone
    # frames: the clicks spread over all frequencies, a tone stands out
    freqs = list(range(100, 1000, 5))
    power = [0.0] * len(freqs)
    tables = [[(math.cos(2 * math.pi * f * i / 16000.0), math.sin(2 * math.pi * f * i / 16000.0))
               for i in range(320)] for f in freqs]
    for f in range(n // 320):
        fr = s[f * 320:(f + 1) * 320]
        if math.sqrt(sum(x * x for x in fr) / 320.0) > 300:
            loud += 1
        if sum(1 for x in fr if abs(x) > 1000) < 100:
            continue
        tone += 1
        if first_tone is None:
            first_tone = round(f * 0.02, 2)
        sumsq += sum(x * x for x in fr)
        for k, t in enumerate(tables):
            re_ = sum(x * c for x, (c, _) in zip(fr, t))
            im_ = sum(x * s_ for x, (_, s_) in zip(fr, t))
            power[k] += re_ * re_ + im_ * im_
    return {"seconds": round(n / 16000.0, 2), "loud_frames": loud, "tone_frames": tone,
            "tone_hz": freqs[power.index(max(power))] if tone else 0,
            "tone_rms": round(math.sqrt(sumsq / (tone * 320)), 1) if tone else 0,
            "first_tone_s": first_tone}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--app", required=True)
    ap.add_argument("--channel", required=True)
    ap.add_argument("--sound", required=True)
    ap.add_argument("--dtmf", default="")
    ap.add_argument("--members", type=int, default=3)
    a = ap.parse_args()
    res = {"ok": False, "steps": []}
    ev = Events(a.app)
    print("ready", flush=True)
    party, party2, bridge = a.channel + "-party", a.channel + "-party2", None
    listener = a.channel + "-listener"
    try:
        st = ev.wait(lambda e: e.get("type") == "StasisStart" and e["channel"]["id"] == a.channel, 15)
        if not st:
            res["error"] = "the probe's ExternalMedia channel never entered the app"
            return res
        res["media_channel"] = st["channel"].get("name")
        code, b = ari("POST", "/bridges?type=mixing&name=%s" % a.app)
        bridge = b["id"]
        code, _ = ari("POST", "/bridges/%s/addChannel?channel=%s" % (bridge, a.channel))
        res["steps"].append(["add media", code])
        # A third member, as in a real call (caller, callee, media): with two
        # members Asterisk bridges them simply and sends audio only while the
        # other side produces some; with three it mixes and sends every 20 ms.
        if a.members == 3:
            code, _ = ari("POST", "/channels?endpoint=Local/s@listener/n&app=%s&channelId=%s"
                          % (a.app, listener), {"variables": {"_LISTEN": "30"}})
            res["steps"].append(["originate listener", code])
            if ev.wait(lambda e: e.get("type") == "StasisStart" and e["channel"]["id"] == listener, 10):
                code, _ = ari("POST", "/bridges/%s/addChannel?channel=%s" % (bridge, listener))
                res["steps"].append(["add listener", code])
        code, _ = ari("POST", "/channels?endpoint=Local/%s@tolk-media-party/n&app=%s&channelId=%s&otherChannelId=%s"
                      % (a.sound, a.app, party, party2),
                      {"variables": {"SEND_DTMF": a.dtmf, "TAIL_WAIT": "5"}})
        res["steps"].append(["originate party", code])
        if not ev.wait(lambda e: e.get("type") == "StasisStart" and e["channel"]["id"] == party, 10):
            res["error"] = "the party never entered the app"
            return res
        code, _ = ari("POST", "/bridges/%s/addChannel?channel=%s" % (bridge, party))
        res["steps"].append(["add party", code])
        t0 = time.time()
        if not ev.wait(lambda e: e.get("type") in ("StasisEnd", "ChannelDestroyed")
                       and e["channel"]["id"] == party, 40):
            res["error"] = "the party did not hang up"
            return res
        res["party_seconds"] = round(time.time() - t0, 1)
        code, _ = ari("DELETE", "/channels/%s" % a.channel)
        res["steps"].append(["delete media", code])
        if a.members == 3:
            code, _ = ari("DELETE", "/channels/%s" % listener)
            res["steps"].append(["delete listener", code])
        ev.wait(lambda e: e.get("type") == "ChannelDestroyed" and e["channel"]["id"] == a.channel, 5)
        code, _ = ari("DELETE", "/bridges/%s" % bridge)
        res["steps"].append(["delete bridge", code])
        time.sleep(0.5)
        _, chans = ari("GET", "/channels")
        _, bridges = ari("GET", "/bridges")
        res["left_channels"] = [c["name"] for c in chans
                                if c["id"] in (a.channel, party, party2, listener) or a.sound in c["name"]]
        res["left_bridges"] = [b["id"] for b in bridges if b["id"] == bridge]
        base = os.path.join(a.prefix, "var/spool/asterisk/recording",
                            "tolkmedia-%s-%s" % (a.sound, party2))
        time.sleep(0.5)
        res["heard"] = measure(base + "-heard.sln16")
        res["said"] = measure(base + "-said.sln16")
        res["ok"] = True
        return res
    finally:
        res["events"] = ev.log[:60]
        if not res["ok"]:
            ari("DELETE", "/channels/%s" % party)
            ari("DELETE", "/channels/%s" % a.channel)
            ari("DELETE", "/channels/%s" % listener)
            if bridge:
                ari("DELETE", "/bridges/%s" % bridge)


if __name__ == "__main__":
    try:
        out = main()
    except Exception as e:  # the C side reports it; never a traceback only
        out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out), flush=True)
