#!/usr/bin/env python3
"""dgfast (C, for load) against dgfake.py (Python, the faithful fake): the
same audio and the same text messages through both must bring back the same
messages, field for field and in the same order (the request ids and the
Metadata's creation time aside), the same close codes and reasons, and the
same refusals. Audio goes as fast as the socket takes it: both fakes hear
in audio time, so the messages do not depend on the machine's speed.

Exit 77 (skipped) when dgfast was not built."""
import base64
import json
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

SRC = os.environ.get("top_srcdir") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
BUILD = os.environ.get("top_builddir") or "."
FAST = os.path.join(BUILD, "plugins", "stt_deepgram", "tests", "dgfast")
IDLE = 0.6  # the inactivity close, shortened for the test
RATE = 16000


def start(cmd):
    d = tempfile.mkdtemp()
    portfile = os.path.join(d, "port")
    p = subprocess.Popen(cmd + [portfile])
    for _ in range(300):
        if os.path.exists(portfile):
            with open(portfile) as f:
                return p, int(f.read())
        time.sleep(0.02)
    p.kill()
    raise SystemExit("%s did not start" % cmd)


def tone(ms, amp=3000):
    n = RATE * ms // 1000
    return struct.pack("<%dh" % n, *(int(amp * math.sin(2 * math.pi * 440 * i / RATE)) for i in range(n)))


def quiet(ms):
    return b"\0\0" * (RATE * ms // 1000)


def ws_frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Client:
    def __init__(self, port, path, key="twin-key"):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" %
               (path, port, base64.b64encode(os.urandom(16)).decode()))
        if key is not None:
            req += "Authorization: Token %s\r\n" % key
        self.s.sendall((req + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, self.buf = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        if self.status != 101:
            n = int(self.headers.get("content-length", 0))
            while len(self.buf) < n:
                chunk = self.s.recv(4096)
                if not chunk:
                    break
                self.buf += chunk
            self.body = json.loads(self.buf[:n])

    def audio(self, pcm, chunk_ms):
        step = RATE * chunk_ms // 1000 * 2
        for i in range(0, len(pcm), step):
            self.s.sendall(ws_frame(0x2, pcm[i:i + step]))

    def text(self, obj):
        self.s.sendall(ws_frame(0x1, json.dumps(obj).encode()))

    def read_all(self):
        """Every message until the server's close: (messages, close code, reason)."""
        msgs = []
        while True:
            while len(self.buf) < 2:
                self.buf += self.recv()
            n, off = self.buf[1] & 0x7F, 2
            if n == 126:
                while len(self.buf) < 4:
                    self.buf += self.recv()
                n, off = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                while len(self.buf) < 10:
                    self.buf += self.recv()
                n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
            while len(self.buf) < off + n:
                self.buf += self.recv()
            op, payload, self.buf = self.buf[0] & 0x0F, self.buf[off:off + n], self.buf[off + n:]
            if op == 0x1:
                msgs.append(json.loads(payload, object_pairs_hook=list))
            elif op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.s.sendall(ws_frame(0x8, payload[:2]))
                self.s.close()
                return msgs, code, payload[2:].decode()

    def recv(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("the connection went without a close frame")
        return chunk


def normalise(msgs):
    """The fields that differ by nature (ids, the clock) blanked, keys kept in order."""
    def walk(v):
        if isinstance(v, list) and v and all(isinstance(p, tuple) and len(p) == 2 for p in v):
            return [(k, "*" if k in ("request_id", "created") else walk(x)) for k, x in v]
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v
    return [walk(m) for m in msgs]


V1 = ("/v1/listen?model=nova-3&language=en&encoding=linear16&sample_rate=16000&channels=1"
      "&interim_results=true&endpointing=300&utterance_end_ms=1000&vad_events=true")
V1_NOEP = ("/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000&channels=1"
           "&interim_results=true&endpointing=false&utterance_end_ms=1000&vad_events=false")
V1_8K = "/v1/listen?encoding=linear16&sample_rate=8000&channels=1&interim_results=false&endpointing=150"
V2 = "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000&eager_eot_threshold=0.5"
V2_PLAIN = "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000"


def session_v1(port):
    c = Client(port, V1)
    c.audio(quiet(200) + tone(1200) + quiet(600), 20)
    c.text({"type": "KeepAlive"})
    c.audio(tone(900), 30)  # chunks that are not whole frames
    c.text({"type": "Finalize"})
    c.audio(tone(300) + quiet(1400) + tone(140), 20)
    c.text({"type": "CloseStream"})
    return c.read_all()


def session_v1_no_endpointing(port):
    c = Client(port, V1_NOEP)
    for _ in range(3):
        c.audio(tone(600) + quiet(1200), 20)
    c.text({"type": "Finalize"})
    c.text({"type": "CloseStream"})
    return c.read_all()


def session_v1_8k(port):
    global RATE
    RATE = 8000
    try:
        c = Client(port, V1_8K)
        c.audio(tone(1000) + quiet(400) + tone(420), 20)
        c.text({"type": "CloseStream"})
        return c.read_all()
    finally:
        RATE = 16000


def session_flux(port):
    c = Client(port, V2)
    c.audio(tone(600) + quiet(200) + tone(500) + quiet(500), 80)  # EagerEndOfTurn, TurnResumed, EndOfTurn
    c.audio(tone(700), 80)
    c.text({"type": "ForceEndTurn"})
    c.text({"type": "ForceEndTurn"})  # no turn open: an empty one
    c.audio(tone(400) + quiet(120), 80)
    c.text({"type": "CloseStream"})
    return c.read_all()


def session_flux_plain(port):
    c = Client(port, V2_PLAIN)
    c.audio(tone(600) + quiet(400) + tone(300), 20)
    c.text({"type": "CloseStream"})
    return c.read_all()


def session_odd(port):
    c = Client(port, V1)
    c.audio(tone(100), 20)
    c.s.sendall(ws_frame(0x2, b"\1\2\3"))
    return c.read_all()


def session_idle(port):
    c = Client(port, V1)
    c.text({"type": "KeepAlive"})  # does not count: no audio yet
    return c.read_all()


def session_idle_after_audio(port):
    c = Client(port, V2)
    c.audio(tone(300), 80)
    return c.read_all()


def refusals(port):
    out = []
    for key, path in ((None, V1), ("invalid", V1), ("", V2), ("k", "/v3/listen")):
        c = Client(port, path, key)
        out.append((c.status, c.headers.get("content-type"), "dg-request-id" in c.headers,
                    c.headers.get("dg-error"), normalise([[(k, v) for k, v in c.body.items()]])))
        c.s.close()
    return out


SESSIONS = [session_v1, session_v1_no_endpointing, session_v1_8k, session_flux, session_flux_plain, session_odd,
            session_idle, session_idle_after_audio]


def main():
    if not os.access(FAST, os.X_OK):
        print("SKIP: %s not built (make check builds it)" % FAST)
        return 77
    py, py_port = start([sys.executable, os.path.join(SRC, "plugins", "stt_deepgram", "tests", "dgfake.py")])
    fast, fast_port = start([FAST, "--idle-timeout", str(IDLE)])
    failed = 0
    try:
        req = urllib.request.Request("http://127.0.0.1:%d/_fake/config" % py_port,
                                     data=json.dumps({"idle_timeout": IDLE}).encode(), method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        for s in SESSIONS:
            a, b = s(py_port), s(fast_port)
            a = (normalise(a[0]), a[1], a[2])
            b = (normalise(b[0]), b[1], b[2])
            kinds = [dict(m).get("event", dict(m)["type"]) for m in a[0]]
            if a == b:
                print("ok   %s: %d messages (%s), close %d" % (s.__name__, len(a[0]), " ".join(kinds), a[1]))
            else:
                failed += 1
                print("FAIL %s: close %s/%s %r/%r" % (s.__name__, a[1], b[1], a[2], b[2]))
                for i in range(max(len(a[0]), len(b[0]))):
                    x = a[0][i] if i < len(a[0]) else None
                    y = b[0][i] if i < len(b[0]) else None
                    if x != y:
                        print("  message %d\n    dgfake.py: %s\n    dgfast:    %s" % (i, x, y))
        a, b = refusals(py_port), refusals(fast_port)
        if a == b:
            print("ok   refusals: %s" % [r[0] for r in a])
        else:
            failed += 1
            print("FAIL refusals:\n  dgfake.py: %s\n  dgfast:    %s" % (a, b))
    finally:
        for p in (py, fast):
            p.terminate()
            p.wait()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
