#!/usr/bin/env python3
"""A fake Asterisk for the AudioSocket and chan_websocket encapsulations of
transport_rtp (plugins/transport_rtp/tests/test_media.c), written from the
public protocol (protocols.md 4.0, 4.2, 4.6, 8 "10.4 Asterisk"; Asterisk
22.10.1 res/ari/resource_channels.c, res/res_audiosocket.c,
channels/chan_websocket.c).

It listens on 127.0.0.1 (an ephemeral port, written to the file named by
its only argument) and serves, on one HTTP port as Asterisk does:

  POST /ari/channels/externalMedia?app=..&channelId=..&...
      encapsulation=audiosocket&transport=tcp&data=UUID&external_host=H:P:
        connects to H:P *during* the request (as Asterisk does), sends the
        UUID (kind 0x01, 16 bytes binary), answers with the Channel JSON
        (channelvars AUDIOSOCKET_UUID, AUDIOSOCKET_SERVICE), then plays the
        scenario's "audiosocket" steps on that connection.
      encapsulation=none&transport=websocket&connection_type=server:
        answers with channelvars MEDIA_WEBSOCKET_CONNECTION_ID; the client
        then upgrades GET /media/<id> (subprotocol "media"): 404 for an
        unknown id, 409 for a second connection. Then MEDIA_START (plain
        text, or JSON with transport_data=f(json)), and the scenario's
        "websocket" steps. Binary messages are cut in 640-byte frames, a
        trailing partial frame is discarded (as chan_websocket does outside
        buffering mode), frames are "played" one per 20 ms, and MARK_MEDIA
        is answered with MEDIA_MARK_PROCESSED once the frames before it are
        played.
      Validation errors answer 400 with Asterisk's messages.
  POST /_fake/reset, POST /_fake/scenario (JSON), GET /_fake/report.

Scenario steps (lists, run in order on each media connection):
  {"op": "audio", "ms": N, "amp": A, "freq": F, "kind": K, "split": true}
      N ms of a sine, one 20 ms frame every 20 ms (AudioSocket: kind K,
      default 0x12; split: each message written in three pieces)
  {"op": "silence", "ms": N}       zero frames every 20 ms
  {"op": "dtmf", "digit": "5"}     AudioSocket kind 0x03 / DTMF_END
  {"op": "raw", "hex": "..."}      bytes as they are (AudioSocket)
  {"op": "text", "text": "..."}    a TEXT message (WebSocket)
  {"op": "binary", "bytes": N}     a BINARY message of N bytes of 0x11
  {"op": "error", "code": C}       AudioSocket kind 0xff
  {"op": "xoff"} / {"op": "xon"}   MEDIA_XOFF / MEDIA_XON
  {"op": "wait_rx", "loud": N, "timeout": S}  until N loud frames came back
  {"op": "sleep", "ms": N}
  {"op": "close"}                  hang up: close the socket (WebSocket: a
                                   close frame first, as chan_websocket does)
Scenario keys besides the steps: "uuid": "ours" | "unknown" | "none";
"rogue": a list of first messages ("unknown_uuid", "audio", "absurd",
"short") sent on extra connections made before the real one;
"reply_id": "unknown" | "occupied", "long_start": true (WebSocket).
"""
import base64
import hashlib
import json
import math
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid as uuidlib

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FRAME = 640
lock = threading.Lock()
state = {}


def reset():
    with lock:
        state.clear()
        state.update({"scenario": {}, "ari": [], "audiosocket": [], "websocket": [],
                      "rogue": [], "ws_ids": {}, "upgrades": [], "meters": []})


reset()


def sine_frame(amp, freq, t0):
    return b"".join(struct.pack("<h", int(amp * math.sin(2 * math.pi * freq * (t0 + i) / 16000.0)))
                    for i in range(320))


class Meter:
    """What came back from tolk: frames, level, the tone's frequency."""

    def __init__(self):
        self.frames = 0
        self.loud = 0
        self.peak = 0
        self.crossings = 0
        self.loud_samples = 0
        self.sign = 0

    def frame(self, data):
        self.frames += 1
        s = struct.unpack("<%dh" % (len(data) // 2), data)
        rms = math.sqrt(sum(x * x for x in s) / len(s))
        if rms > 300:
            self.loud += 1
            self.peak = max(self.peak, max(abs(x) for x in s))
            # sign changes between samples clearly away from zero, so the
            # near-silence between words does not count as a tone
            for x in s:
                if abs(x) > 1000:
                    sg = 1 if x > 0 else -1
                    if self.sign and sg != self.sign:
                        self.crossings += 1
                    self.sign = sg
            self.loud_samples += len(s)

    def report(self):
        hz = self.crossings * 16000.0 / 2 / self.loud_samples if self.loud_samples else 0
        return {"rx_frames": self.frames, "rx_loud": self.loud, "rx_peak": self.peak,
                "rx_tone_hz": round(hz, 1)}


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


# ---------------------------------------------------------------- AudioSocket

def audiosocket_rogue(host, port, what, rep):
    """An extra connection whose first message is wrong: tolk must close it."""
    try:
        s = socket.create_connection((host, port), timeout=3)
        if what == "unknown_uuid":
            s.sendall(b"\x01\x00\x10" + uuidlib.uuid4().bytes)
        elif what == "audio":
            s.sendall(b"\x12\x02\x80" + b"\x00" * FRAME)
        elif what == "absurd":
            s.sendall(b"\x01\xff\xff")
        elif what == "short":
            s.sendall(b"\x01\x00\x04abcd")
        s.settimeout(3)
        closed = False
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    closed = True
                    break
        except ConnectionResetError:
            closed = True  # closed with our bytes unread: a reset
        except (socket.timeout, OSError):
            pass
        s.close()
        rep["rogue"].append({"what": what, "closed_by_tolk": closed})
    except OSError as e:
        rep["rogue"].append({"what": what, "error": str(e)})


def audiosocket_reader(s, rep, meter):
    kinds = rep["rx_kinds"]
    try:
        while True:
            kind, n = struct.unpack("!BH", read_exact(s, 3))
            payload = read_exact(s, n) if n else b""
            kinds["0x%02x" % kind] = kinds.get("0x%02x" % kind, 0) + 1
            if kind in (0x10, 0x12):
                if n != FRAME:
                    rep["rx_bad_len"] += 1
                else:
                    with lock:
                        meter.frame(payload)
            elif kind == 0x00:
                rep["rx_hangup_msg"] += 1
    except (EOFError, OSError):
        with lock:
            if not rep["closed_by"]:
                rep["closed_by"] = "tolk"


def audiosocket_run(s, steps, rep, meter):
    t = 0
    try:
        for st in steps:
            op = st.get("op")
            if op in ("audio", "silence"):
                kind = st.get("kind", 0x12)
                for _ in range(st.get("ms", 1000) // 20):
                    if op == "audio":
                        data = sine_frame(st.get("amp", 6000), st.get("freq", 300), t)
                    else:
                        data = b"\x00" * FRAME
                    t += 320
                    msg = struct.pack("!BH", kind, FRAME) + data
                    if st.get("split"):
                        for a, b in ((0, 1), (1, 200), (200, len(msg))):
                            s.sendall(msg[a:b])
                            time.sleep(0.002)
                    else:
                        s.sendall(msg)
                    rep["tx_frames"] += 1
                    time.sleep(0.02)
            elif op == "dtmf":
                s.sendall(b"\x03\x00\x01" + st["digit"].encode())
            elif op == "raw":
                s.sendall(bytes.fromhex(st["hex"]))
            elif op == "error":
                s.sendall(b"\xff\x00\x01" + bytes([st.get("code", 2)]))
            elif op == "wait_rx":
                end = time.time() + st.get("timeout", 10)
                while time.time() < end and meter.loud < st.get("loud", 1):
                    time.sleep(0.02)
            elif op == "sleep":
                time.sleep(st.get("ms", 100) / 1000.0)
            elif op == "close":
                with lock:
                    if not rep["closed_by"]:
                        rep["closed_by"] = "fake"
                s.shutdown(socket.SHUT_RDWR)
                s.close()
                return
            rep["steps_done"] += 1
    except OSError as e:
        rep["send_error"] = str(e)


def audiosocket_session(s, steps, rep, meter):
    r = threading.Thread(target=audiosocket_reader, args=(s, rep, meter), daemon=True)
    r.start()
    audiosocket_run(s, steps, rep, meter)
    r.join(timeout=30)
    try:
        s.close()
    except OSError:
        pass


def ari_audiosocket(q, chan_id):
    sc = state["scenario"].get("audiosocket", {})
    data = q.get("data", "")
    host_port = q.get("external_host", "")
    if not data:
        return 400, {"message": "data can not be empty"}
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return 400, {"message": "external_host must be <host>:<port> for all transports other than websocket"}
    host = host.strip("[]")
    try:
        uu = uuidlib.UUID(data)
    except ValueError:
        return 500, {"message": "An internal error prevented this request from being handled"}
    rep = {"uuid": data, "closed_by": None, "rx_bad_len": 0, "rx_hangup_msg": 0, "tx_frames": 0,
           "steps_done": 0, "rogue": [], "format": q.get("format"), "rx_kinds": {}}
    for what in sc.get("rogue", []):
        audiosocket_rogue(host, int(port), what, rep)
    try:
        s = socket.create_connection((host, int(port)), timeout=2)
    except OSError:
        return 500, {"message": "An internal error prevented this request from being handled"}
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(None)
    how = sc.get("uuid", "ours")
    if how == "ours":
        s.sendall(b"\x01\x00\x10" + uu.bytes)
    elif how == "unknown":
        s.sendall(b"\x01\x00\x10" + uuidlib.uuid4().bytes)
    with lock:
        state["audiosocket"].append(rep)
    meter = Meter()
    with lock:
        state["meters"].append((rep, meter))
    threading.Thread(target=audiosocket_session, args=(s, sc.get("steps", []), rep, meter),
                     daemon=True).start()
    return 200, {"id": chan_id, "name": "AudioSocket/%s-%s" % (host_port, data), "state": "Up",
                 "channelvars": {"AUDIOSOCKET_UUID": data, "AUDIOSOCKET_SERVICE": host_port}}


# ---------------------------------------------------------------- WebSocket

def ws_frame(opcode, payload=b""):
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def ws_read(sock):
    """One whole message: (opcode, payload); control frames are returned too."""
    parts, first = [], None
    while True:
        b0, b1 = read_exact(sock, 2)
        fin, op = b0 & 0x80, b0 & 0x0F
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", read_exact(sock, 2))[0]
        elif n == 127:
            n = struct.unpack("!Q", read_exact(sock, 8))[0]
        mask = read_exact(sock, 4) if b1 & 0x80 else None
        p = read_exact(sock, n)
        if mask:
            p = bytes(c ^ mask[i % 4] for i, c in enumerate(p))
        if op >= 0x8:
            return op, p
        if op:
            first = op
        parts.append(p)
        if fin:
            return first, b"".join(parts)


class WsConn:
    def __init__(self, sock, cid, rep, json_fmt):
        self.s = sock
        self.cid = cid
        self.rep = rep
        self.json = json_fmt
        self.wlock = threading.Lock()
        self.meter = Meter()
        self.queue = 0
        self.queued_total = 0
        self.played = 0
        self.marks = []
        self.xoff = False
        self.closed = False

    def send(self, opcode, payload):
        with self.wlock:
            if not self.closed:
                self.s.sendall(ws_frame(opcode, payload))

    def event(self, name, **kw):
        if self.json:
            d = {"event": name, "channel_id": "fake-" + self.cid}
            d.update(kw)
            self.send(0x1, json.dumps(d).encode())
        elif name == "DTMF_END":
            self.send(0x1, ("DTMF_END digit:%s channel_id:fake-%s" % (kw["digit"], self.cid)).encode())
        elif name == "MEDIA_MARK_PROCESSED":
            self.send(0x1, ("MEDIA_MARK_PROCESSED %s" % kw["correlation_id"]).encode())
        else:
            self.send(0x1, name.encode())

    def player(self):
        """Asterisk's channel timer: one queued frame per 20 ms."""
        while not self.closed:
            time.sleep(0.02)
            with lock:
                if self.queue > 0:
                    self.queue -= 1
                    self.played += 1
                due = [m for m in self.marks if m[0] <= self.played]
                self.marks = [m for m in self.marks if m[0] > self.played]
            for _, cid in due:
                try:
                    self.event("MEDIA_MARK_PROCESSED", correlation_id=cid)
                    self.rep["processed"].append(cid)
                except OSError:
                    return

    def reader(self):
        rep = self.rep
        try:
            while True:
                op, p = ws_read(self.s)
                if op == 0x2:
                    rep["rx_msgs"] += 1
                    whole = len(p) // FRAME
                    if len(p) % FRAME:
                        rep["partial_discarded"] += 1
                    with lock:
                        if self.xoff:
                            rep["rx_during_xoff"] += whole
                        for i in range(whole):
                            self.meter.frame(p[i * FRAME:(i + 1) * FRAME])
                        self.queue += whole
                        self.queued_total += whole
                elif op == 0x1:
                    text = p.decode("utf-8", "replace")
                    rep["texts"].append(text[:200])
                    cmd, _, arg = text.partition(" ")
                    if text.startswith("{"):
                        try:
                            j = json.loads(text)
                            cmd, arg = j.get("command", ""), j.get("correlation_id", "")
                        except ValueError:
                            cmd = ""
                    if cmd == "MARK_MEDIA":
                        with lock:
                            self.marks.append((self.queued_total, arg))
                        rep["marks"].append(arg)
                elif op == 0x8:
                    code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
                    rep["close_code"] = code
                    with lock:
                        if not rep["closed_by"]:
                            rep["closed_by"] = "tolk"
                    self.send(0x8, p[:2])
                    break
                elif op == 0x9:
                    self.send(0xA, p)
        except (EOFError, OSError):
            with lock:
                if not rep["closed_by"]:
                    rep["closed_by"] = "tolk"
        self.closed = True

    def run(self, steps):
        rep = self.rep
        t = 0
        try:
            for st in steps:
                op = st.get("op")
                if op in ("audio", "silence"):
                    for _ in range(st.get("ms", 1000) // 20):
                        if op == "audio":
                            data = sine_frame(st.get("amp", 6000), st.get("freq", 300), t)
                        else:
                            data = b"\x00" * FRAME
                        t += 320
                        self.send(0x2, data)
                        rep["tx_frames"] += 1
                        time.sleep(0.02)
                elif op == "dtmf":
                    self.event("DTMF_END", digit=st["digit"])
                elif op == "text":
                    self.send(0x1, st["text"].encode())
                elif op == "binary":
                    self.send(0x2, b"\x11" * st.get("bytes", 3))
                elif op == "xoff":
                    with lock:
                        self.xoff = True
                    self.event("MEDIA_XOFF")
                elif op == "xon":
                    with lock:
                        self.xoff = False
                    self.event("MEDIA_XON")
                elif op == "wait_rx":
                    end = time.time() + st.get("timeout", 10)
                    while time.time() < end and self.meter.loud < st.get("loud", 1):
                        time.sleep(0.02)
                elif op == "sleep":
                    time.sleep(st.get("ms", 100) / 1000.0)
                elif op == "close":
                    with lock:
                        if not rep["closed_by"]:
                            rep["closed_by"] = "fake"
                    self.send(0x8, struct.pack("!H", 1000))
                    time.sleep(0.2)
                    self.closed = True
                    self.s.shutdown(socket.SHUT_RDWR)
                    return
                rep["steps_done"] += 1
        except OSError as e:
            rep["send_error"] = str(e)


def ari_websocket(q, chan_id):
    sc = state["scenario"].get("websocket", {})
    if q.get("encapsulation") != "none":
        return 400, {"message": "encapsulation must be 'none' for websocket transport"}
    ctype = q.get("connection_type", "client")
    host = q.get("external_host")
    if ctype == "server" and host not in (None, "", "INCOMING"):
        # Asterisk looks a websocket_client.conf entry up by that name and fails
        return 500, {"message": "An internal error prevented this request from being handled"}
    if ctype != "server":
        return 400, {"message": "external_host must be a valid websocket_client connection id."}
    cid = str(uuidlib.uuid4())
    td = q.get("transport_data", "")
    with lock:
        state["ws_ids"][cid] = {"connected": sc.get("reply_id") == "occupied",
                                "json": "f(json)" in td, "chan_id": chan_id}
    reply = cid if sc.get("reply_id") != "unknown" else str(uuidlib.uuid4())
    return 200, {"id": chan_id, "name": "WebSocket/INCOMING/0x1", "state": "Down",
                 "channelvars": {"MEDIA_WEBSOCKET_CONNECTION_ID": reply,
                                 "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "640"}}


def sc_long_start():
    """A MEDIA_START of over 1 KiB: a channel with many variables."""
    return state["scenario"].get("websocket", {}).get("long_start", False)


def serve_media(sock, path, headers):
    cid = path[len("/media/"):]
    rec = {"path": path, "subprotocol": headers.get("sec-websocket-protocol"),
           "authorization": headers.get("authorization")}
    with lock:
        state["upgrades"].append(rec)
        inst = state["ws_ids"].get(cid)
        if inst is None:
            rec["status"] = 404
        elif inst["connected"]:
            rec["status"] = 409
        else:
            inst["connected"] = True
            rec["status"] = 101
    if rec["status"] != 101:
        reason = {404: "Not found", 409: "Conflict"}[rec["status"]]
        body = b"WebSocket instance not found" if rec["status"] == 404 else \
            b"Another websocket connection exists for this connection id"
        sock.sendall(("HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      "Connection: close\r\n\r\n" % (rec["status"], reason, len(body))).encode() + body)
        return
    key = headers.get("sec-websocket-key", "")
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                  "Sec-WebSocket-Protocol: media\r\n\r\n" % accept).encode())
    rep = {"connection_id": cid, "closed_by": None, "rx_msgs": 0, "partial_discarded": 0,
           "rx_during_xoff": 0, "texts": [], "marks": [], "processed": [], "tx_frames": 0,
           "steps_done": 0, "json": inst["json"], "close_code": None}
    with lock:
        state["websocket"].append(rep)
    c = WsConn(sock, cid, rep, inst["json"])
    with lock:
        state["meters"].append((rep, c.meter))
    if inst["json"]:
        c.send(0x1, json.dumps({"event": "MEDIA_START", "connection_id": cid,
                                "channel": "WebSocket/INCOMING/0x1", "channel_id": inst["chan_id"],
                                "format": "slin16", "optimal_frame_size": 640, "ptime": 20,
                                "channel_variables": dict(
                                    {"MEDIA_WEBSOCKET_CONNECTION_ID": cid},
                                    **({"VAR%d" % i: "x" * 40 for i in range(40)}
                                       if sc_long_start() else {}))}).encode())
    else:
        c.send(0x1, ("MEDIA_START connection_id:%s channel:WebSocket/INCOMING/0x1 channel_id:%s "
                     "format:slin16 optimal_frame_size:640 ptime:20" % (cid, inst["chan_id"])).encode())
    threading.Thread(target=c.player, daemon=True).start()
    r = threading.Thread(target=c.reader, daemon=True)
    r.start()
    c.run(state["scenario"].get("websocket", {}).get("steps", []))
    r.join(timeout=30)
    rep["played"] = c.played


# ---------------------------------------------------------------- HTTP

def respond(sock, status, body, ctype="application/json"):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
              500: "Internal Server Error", 501: "Not Implemented"}.get(status, "X")
    sock.sendall(("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                  "Connection: close\r\n\r\n" % (status, reason, ctype, len(body))).encode() + body)


def serve(sock):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0") or 0)
        while len(rest) < n:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        url = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path.startswith("/media/") and headers.get("upgrade", "").lower() == "websocket":
            serve_media(sock, url.path, headers)
        elif url.path == "/_fake/reset":
            reset()
            respond(sock, 200, {})
        elif url.path == "/_fake/scenario":
            with lock:
                state["scenario"] = json.loads(rest[:n] or b"{}")
            respond(sock, 200, {})
        elif url.path == "/_fake/report":
            time.sleep(0.05)
            with lock:
                for rep, meter in state["meters"]:
                    rep.update(meter.report())
                r = {k: state[k] for k in ("ari", "audiosocket", "websocket", "upgrades")}
                respond(sock, 200, json.loads(json.dumps(r)))
        elif url.path == "/ari/channels/externalMedia" and method == "POST":
            with lock:
                state["ari"].append({"query": q})
            if not q.get("app"):
                respond(sock, 400, {"message": "app cannot be empty"})
                return
            if not q.get("format"):
                respond(sock, 400, {"message": "format cannot be empty"})
                return
            chan_id = q.get("channelId") or str(time.time())
            if q.get("encapsulation") == "audiosocket":
                if q.get("transport") != "tcp":
                    status, body = 400, {"message": "transport must be 'tcp' for audiosocket encapsulation"}
                else:
                    status, body = ari_audiosocket(q, chan_id)
            elif q.get("transport") == "websocket":
                status, body = ari_websocket(q, chan_id)
            else:
                status, body = 501, {"message": "The encapsulation and/or transport is not supported"}
            respond(sock, status, body)
        else:
            respond(sock, 404, {"message": "Resource not found"})
    except (OSError, EOFError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
