#!/usr/bin/env python3
"""A fake Asterisk for test_transport_rtp.c: ARI (REST and the events
WebSocket, RFC 6455 by hand) and the Asterisk side of ExternalMedia RTP,
on 127.0.0.1 only. It follows what docs/protocols.md section 4 says a real
22.10.1 does (measured): the events socket at /ari/events?app=NAME with
Basic auth; externalMedia answers the Channel JSON with
channelvars.UNICASTRTP_LOCAL_ADDRESS/PORT and then sends StasisStart for the
channel; a channel originated into the app gets StasisStart when it
answers; addChannel wants channels that are in the app (422 otherwise);
DELETE of an unknown channel or bridge is 404; slin16 RTP is PT 118,
big-endian, 640 bytes per 20 ms, sent from UNICASTRTP_LOCAL_PORT; inbound
RTP with a dynamic payload type is dropped.

Usage: arifake.py PORTFILE. It writes its port into PORTFILE once it
listens. Control (HTTP, same port):
  POST /_fake/config  JSON: {"fail": {"externalMedia": 500, "originate": 404},
                       "fail_deletes": K (the next K DELETEs answer 503),
                       "stall": false (stop answering pings and sending)}
  POST /_fake/call    JSON: {"id": "A1", "args": [...], "rtp": PLAN} puts a
                       caller into the app; PLAN (optional) is what the fake
                       sends as the caller's voice once tolk bridged it:
                       {"frames": [[kind, ...], ...], "hangup": true} with
                       kind "tone" / "silence" (one packet, next seq),
                       "skip" (a seq never sent), "dup" (the last again),
                       "swap" (the next two in reverse order), "hold" (keep
                       the next packet back until "release"), "release",
                       "foreign" (the last from another socket),
                       "badversion", "truncated", "badpt" (a malformed packet)
  POST /_fake/hangup  JSON: {"id": ...}: that party hangs up
  POST /_fake/raw     a text message sent as is on every events socket
  GET  /_fake/state   JSON: channels, bridges, deletes, events sockets seen,
                       and what tolk sent each ExternalMedia channel
"""
import base64
import hashlib
import json
import math
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
AUTH = "Basic " + base64.b64encode(b"test:test").decode()
lock = threading.RLock()
state = {"channels": {}, "bridges": {}, "deletes": [], "ws_connects": 0, "requests": [],
         "rtp_in": {}}
config = {"fail": {}, "stall": False, "fail_deletes": 0}
sockets = []  # events sockets (socket objects)
app_name = [None]


def now_ts():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime())


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


def push_raw(text):
    data = ws_frame(0x1, text.encode())
    with lock:
        for s in list(sockets):
            try:
                s.sendall(data)
            except OSError:
                sockets.remove(s)


def chan_json(cid, name, st="Up", extra=None):
    c = {"id": cid, "name": name, "state": st, "caller": {"name": "", "number": ""},
         "connected": {"name": "", "number": ""}, "accountcode": "",
         "dialplan": {"context": "x", "exten": "s", "priority": 1, "app_name": "Stasis", "app_data": ""},
         "creationtime": now_ts(), "language": "en"}
    if extra:
        c.update(extra)
    return c


def push_event(typ, cid, **kw):
    with lock:
        ch = state["channels"].get(cid, {}).get("json") or chan_json(cid, "Fake/" + cid)
    ev = {"type": typ, "timestamp": now_ts(), "channel": ch, "asterisk_id": "00:00:00:00:00:01",
          "application": app_name[0]}
    ev.update(kw)
    push_raw(json.dumps(ev))


def hangup(cid, cause=16):
    with lock:
        if cid not in state["channels"]:
            return
        del state["channels"][cid]
        for b in state["bridges"].values():
            if cid in b:
                b.remove(cid)
    push_event("ChannelHangupRequest", cid, cause=cause)
    push_event("StasisEnd", cid)
    push_event("ChannelDestroyed", cid, cause=cause, cause_txt="Normal Clearing")


# ---- RTP: the Asterisk side of an ExternalMedia channel ----

class Media:
    def __init__(self, cid, peer):
        self.cid = cid
        self.peer = peer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stats = {"packets": 0, "bad": 0, "pts": [], "seq_breaks": 0, "ts_breaks": 0, "markers": 0,
                      "ssrcs": [], "sizes": [], "loud": 0}
        self.last = None
        self.alive = True
        threading.Thread(target=self.rx, daemon=True).start()

    def rx(self):
        while self.alive:
            try:
                d, src = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            st = self.stats
            if len(d) < 12 or d[0] >> 6 != 2:
                st["bad"] += 1
                continue
            pt = d[1] & 0x7F
            seq, ts, ssrc = struct.unpack("!HII", d[2:12])
            with lock:
                st["packets"] += 1
                if pt not in st["pts"]:
                    st["pts"].append(pt)
                if ssrc not in st["ssrcs"]:
                    st["ssrcs"].append(ssrc)
                if len(d) not in st["sizes"]:
                    st["sizes"].append(len(d))
                if d[1] & 0x80:
                    st["markers"] += 1
                if self.last:
                    if seq != (self.last[0] + 1) & 0xFFFF:
                        st["seq_breaks"] += 1
                    if ts != (self.last[1] + 160) & 0xFFFFFFFF:
                        st["ts_breaks"] += 1
                self.last = (seq, ts)
                if pt == 11 and len(d) == 332:
                    smp = struct.unpack("!160h", d[12:])
                    if max(abs(x) for x in smp) > 1000:
                        st["loud"] += 1

    def packet(self, seq, ts, kind, phase):
        if kind == "tone":
            pl = struct.pack("!320h", *[int(8000 * math.sin(2 * math.pi * 440 * (phase + i) / 16000))
                                        for i in range(320)])
        else:
            pl = bytes(640)
        return struct.pack("!BBHII", 0x80, 118, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x5EED) + pl

    def play(self, plan):
        seq, ts, held, last = 1000, 320, None, None
        swap = False
        pending = None
        foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        foreign.bind(("127.0.0.1", 0))
        t0 = time.time()
        n = 0
        for step in plan.get("frames", []):
            kind, count = step[0], (step[1] if len(step) > 1 else 1)
            for _ in range(count):
                while config["stall"]:
                    time.sleep(0.05)
                if kind in ("tone", "silence"):
                    p = self.packet(seq, ts, kind, n * 320)
                    seq += 1
                    ts += 320
                    n += 1
                    if held == "next":
                        held = p
                    elif swap:
                        if pending is None:
                            pending = p
                        else:
                            self.sock.sendto(p, self.peer)
                            self.sock.sendto(pending, self.peer)
                            pending, swap = None, False
                    else:
                        self.sock.sendto(p, self.peer)
                    last = p
                    # pace at 20 ms, as Asterisk does
                    time.sleep(max(0, t0 + 0.02 * n - time.time()))
                elif kind == "skip":
                    seq += 1
                    ts += 320
                    n += 1
                elif kind == "dup" and last:
                    self.sock.sendto(last, self.peer)
                elif kind == "swap":
                    swap = True
                elif kind == "hold":
                    held = "next"
                elif kind == "release" and isinstance(held, bytes):
                    self.sock.sendto(held, self.peer)
                    held = None
                elif kind == "foreign" and last:
                    foreign.sendto(last, self.peer)
                elif kind == "badversion" and last:
                    self.sock.sendto(bytes([0x40]) + last[1:], self.peer)
                elif kind == "truncated":
                    self.sock.sendto(b"\x80\x76\x00", self.peer)
                elif kind == "badpt" and last:
                    self.sock.sendto(bytes([last[0], 96]) + last[2:], self.peer)
        foreign.close()

    def close(self):
        self.alive = False
        self.sock.close()


media = {}  # channel id -> Media
plans = {}  # caller channel id -> RTP plan


def maybe_play(bridge_members):
    """Once a caller and its ExternalMedia channel share a bridge, the fake
    starts speaking as the caller."""
    for cid in bridge_members:
        plan = plans.get(cid)
        if not plan:
            continue
        for m in bridge_members:
            if m in media:
                plans.pop(cid)

                def run(mm=media[m], plan=plan, cid=cid):
                    time.sleep(0.2)
                    mm.play(plan)
                    if plan.get("hangup"):
                        time.sleep(plan.get("tail", 1.0))
                        hangup(cid)
                threading.Thread(target=run, daemon=True).start()
                return


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, obj=None):
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        if u.path == "/_fake/state":
            with lock:
                s = dict(state)
                s["channels"] = list(state["channels"].keys())
                s["bridges"] = {k: list(v) for k, v in state["bridges"].items()}
                s["rtp_in"] = {k: dict(m.stats) for k, m in media.items()}
                return self.reply(200, s)
        if self.headers.get("Authorization") != AUTH:
            return self.reply(401, {"message": "Authentication required"})
        if u.path == "/ari/events":
            return self.websocket(u)
        if u.path == "/ari/channels":
            with lock:
                return self.reply(200, [c["json"] for c in state["channels"].values()])
        return self.reply(404, {"message": "Not found"})

    def websocket(self, u):
        q = urllib.parse.parse_qs(u.query)
        app_name[0] = q.get("app", [""])[0]
        key = self.headers.get("Sec-WebSocket-Key", "")
        acc = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        sock = self.connection
        # registered under the lock that pushes events, before the client
        # can see the 101: an event pushed once it is open reaches it
        with lock:
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", acc)
            self.end_headers()
            self.wfile.flush()
            state["ws_connects"] += 1
            sockets.append(sock)
        try:
            while True:
                b0, b1 = self._read(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._read(8))[0]
                mask = self._read(4) if b1 & 0x80 else b"\0\0\0\0"
                pl = bytes(c ^ mask[i % 4] for i, c in enumerate(self._read(n)))
                op = b0 & 0x0F
                if op == 0x9 and not config["stall"]:
                    sock.sendall(ws_frame(0xA, pl))
                elif op == 0x8:
                    sock.sendall(ws_frame(0x8, pl[:2]))
                    break
        except (EOFError, OSError):
            pass
        with lock:
            if sock in sockets:
                sockets.remove(sock)
        self.close_connection = True

    def _read(self, n):
        d = self.rfile.read(n)
        if len(d) < n:
            raise EOFError
        return d

    def do_POST(self):
        u = urllib.parse.urlparse(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        body = self.body()
        p = u.path
        if p == "/_fake/config":
            config.update(json.loads(body or b"{}"))
            return self.reply(200, config)
        if p == "/_fake/hangup":
            hangup(json.loads(body)["id"])
            return self.reply(200, {})
        if p == "/_fake/raw":
            push_raw(body.decode())
            return self.reply(200, {})
        if p == "/_fake/call":
            c = json.loads(body)
            cid = c["id"]
            with lock:
                state["channels"][cid] = {"json": chan_json(cid, "PJSIP/caller-" + cid, "Ring"), "in_app": True}
            if c.get("rtp"):
                plans[cid] = c["rtp"]
            push_event("StasisStart", cid, args=c.get("args", []))
            return self.reply(200, {})
        if self.headers.get("Authorization") != AUTH:
            return self.reply(401, {"message": "Authentication required"})
        with lock:
            state["requests"].append("POST " + p)
        parts = p.split("/")
        if p == "/ari/channels/externalMedia":
            st = config["fail"].get("externalMedia")
            if st:
                return self.reply(st, {"message": "fake failure"})
            host, _, port = q.get("external_host", "").rpartition(":")
            if q.get("format") != "slin16" or not port or q.get("encapsulation", "rtp") != "rtp":
                return self.reply(400, {"message": "external_host must be <host>:<port>"})
            cid = q.get("channelId") or "em-%d" % time.time_ns()
            m = Media(cid, (host, int(port)))
            media[cid] = m
            cj = chan_json(cid, "UnicastRTP/%s:%s-0x1" % (host, port), "Up",
                           {"channelvars": {"UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1",
                                            "UNICASTRTP_LOCAL_PORT": str(m.port)}})
            with lock:
                state["channels"][cid] = {"json": cj, "in_app": False}
            self.reply(200, cj)

            def start():
                time.sleep(0.05)  # StasisStart after the reply, as Asterisk may
                with lock:
                    if cid not in state["channels"]:
                        return
                    state["channels"][cid]["in_app"] = True
                push_event("StasisStart", cid, args=[])
            threading.Thread(target=start, daemon=True).start()
            return
        if p == "/ari/channels":
            st = config["fail"].get("originate")
            if st:
                return self.reply(st, {"message": "fake failure"})
            cid = q.get("channelId") or "ch-%d" % time.time_ns()
            cj = chan_json(cid, "Local/callee-" + cid, "Down")
            with lock:
                state["channels"][cid] = {"json": cj, "in_app": False}
            self.reply(200, cj)

            def answer():
                time.sleep(0.1)
                push_event("ChannelStateChange", cid)
                with lock:
                    if cid not in state["channels"]:
                        return
                    state["channels"][cid]["in_app"] = True
                    state["channels"][cid]["json"]["state"] = "Up"
                push_event("StasisStart", cid, args=[q.get("appArgs", "")])
            threading.Thread(target=answer, daemon=True).start()
            return
        if len(parts) == 5 and parts[2] == "channels" and parts[4] in ("answer", "continue"):
            with lock:
                ok = parts[3] in state["channels"]
            return self.reply(204 if ok else 404, None if ok else {"message": "Channel not found"})
        if p == "/ari/bridges":
            bid = q.get("bridgeId")
            with lock:
                state["bridges"][bid] = []
            return self.reply(200, {"id": bid, "technology": "simple_bridge", "bridge_type": "mixing",
                                    "bridge_class": "stasis", "channels": []})
        if len(parts) == 5 and parts[2] == "bridges" and parts[4] == "addChannel":
            bid = parts[3]
            chans = q.get("channel", "").split(",")
            with lock:
                if bid not in state["bridges"]:
                    return self.reply(404, {"message": "Bridge not found"})
                for c in chans:
                    if c not in state["channels"]:
                        return self.reply(400, {"message": "Channel not found"})
                    if not state["channels"][c]["in_app"]:
                        return self.reply(422, {"message": "Channel not in Stasis application"})
                state["bridges"][bid].extend(chans)
                members = list(state["bridges"][bid])
            self.reply(204)
            maybe_play(members)
            return
        return self.reply(404, {"message": "Not found"})

    def do_DELETE(self):
        if self.headers.get("Authorization") != AUTH:
            return self.reply(401, {"message": "Authentication required"})
        parts = urllib.parse.urlparse(self.path).path.split("/")
        with lock:
            state["deletes"].append("/".join(parts[2:]))
            if config.get("fail_deletes", 0) > 0:
                config["fail_deletes"] -= 1
                return self.reply(503, {"message": "fake overload"})
        if len(parts) == 4 and parts[2] == "channels":
            cid = parts[3]
            with lock:
                known = cid in state["channels"]
            if not known:
                return self.reply(404, {"message": "Channel not found"})
            self.reply(204)
            hangup(cid)
            return
        if len(parts) == 4 and parts[2] == "bridges":
            with lock:
                known = state["bridges"].pop(parts[3], None) is not None
            return self.reply(204 if known else 404, None if known else {"message": "Bridge not found"})
        return self.reply(404, {"message": "Not found"})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a client that hangs up mid-request (tolkd shutting down) is normal
        if not isinstance(sys.exc_info()[1], (ConnectionError, EOFError)):
            super().handle_error(request, client_address)


def main():
    srv = Server(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    port = srv.server_address[1]
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    import os
    os.rename(tmp, sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
