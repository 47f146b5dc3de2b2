#!/usr/bin/env python3
"""A local stand-in for Deepgram's live recognition API (v1/listen), for
tests only (127.0.0.1). RFC 6455 framing written out by hand (as
tests/wsfake.py), so the tests control every byte.

What it follows (Deepgram's docs and deepgram-python-sdk's types; see
/work/shared/docs/protocols.md sections 1 and 8):
  - GET /v1/listen?<query> upgrade with `Authorization: Token <key>` (or
    `Sec-WebSocket-Protocol: token, <key>`); a missing or empty key, or the
    key "invalid", gets HTTP 401 with dg-request-id and dg-error headers
    and {"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.",...}.
  - Audio: binary frames of linear16 at the query's sample_rate. A frame of
    an odd number of bytes cannot be linear16: close 1008 "DATA-0000".
  - Text: {"type":"KeepAlive"} (no reply), {"type":"Finalize"} (the words
    heard so far come back in a Results with from_finalize true; nothing
    when no speech is buffered), {"type":"CloseStream"} (the last results,
    then Metadata, then close 1000).
  - Inactivity: no audio within idle_timeout of opening (KeepAlive does not
    count), or no frame at all for idle_timeout later: Metadata, then close
    1011 "NET-0001". Deepgram's is about 10 s; tests set it shorter.
  - Messages: Results {type, channel_index, duration, start, is_final,
    speech_final, from_finalize, channel.alternatives[{transcript,
    confidence, words[{word,start,end,confidence,punctuated_word}]}],
    metadata}, SpeechStarted {channel, timestamp} (vad_events=true),
    UtteranceEnd {channel, last_word_end} (utterance_end_ms set),
    Metadata {transaction_key, request_id, sha256, created, duration,
    channels, ...}.

Recognition, in audio time (deterministic however fast the audio comes):
an energy detector (20 ms frames, RMS above 300) cuts the audio into
bursts; each burst is "heard" as the next line of the script. While it
lasts, an interim Results every interim_ms of speech holds the words heard
so far (one more per 200 ms). When `endpointing` ms of silence follow it,
its words come as two is_final segments, the second with speech_final true.
With endpointing=false the segments come after 100 ms of silence without
speech_final, and UtteranceEnd after utterance_end_ms.

Flux (/v2/listen, model flux-general-*): Connected on open; a turn starts
with the first burst (StartOfTurn), Update every 240 ms of its audio; with
eager_eot_threshold in the query, EagerEndOfTurn after eager_ms of silence
(TurnResumed if speech comes back first: the next burst joins the turn);
EndOfTurn after eot_ms of silence, or at once on {"type":"ForceEndTurn"}
(an empty one when no turn is open); CloseStream ends the open turn and
closes 1000. Every message carries sequence_id.

Test control (not Deepgram's API), HTTP on the same port, under /_fake/:
  POST /_fake/reset    forget the plan, the connections, the config
  POST /_fake/config   {"idle_timeout": s, "interim_ms": ms, "script": [..],
                        "eager_ms": ms, "eot_ms": ms}
  POST /_fake/plan     {"connections": [step, ...]}: the next upgrades take
                       these steps in order, then normal service. A step:
                       {"refuse": 429}            refuse the upgrade
                       {"close_after_ms": N, "code": 1011}
                                                  close after N ms of audio
                       {"error_after_ms": N}      Flux: an Error message after
                                                  N ms of audio, then close 1011
                       {"drop_after_ms": N}       drop the TCP connection
                                                  after N ms of audio
                       {"stall": true}            take audio, answer nothing
                       {"script_from": K}         hear the first burst as
                                                  script line K (a stream
                                                  reopened after a failure)
                       {"malformed": true}        a non-JSON text message and
                                                  a message of an unknown type
                                                  before each Results
  GET  /_fake/connections   every upgrade seen: path, query (lists), headers
                       (names lower-cased), controls (types in order),
                       audio_bytes, audio_messages, server_close, client_close

Usage: dgfake.py PORTFILE [PORT]   (binds 127.0.0.1:PORT, default 0 = any, writes
       the port to PORTFILE)
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
import uuid
from array import array

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LOCK = threading.Lock()
DEFAULT_CONFIG = {"idle_timeout": 10.0, "interim_ms": 200, "eager_ms": 100, "eot_ms": 300,
                  "script": ["hello world", "thank you", "good morning"]}
CONFIG = dict(DEFAULT_CONFIG)
PLAN = []
CONNECTIONS = []
FRAME_MS = 20
VOICED_RMS = 300
WORD_MS = 200
SEGMENT_SILENCE_MS = 100


try:  # C speed where the standard library still has it (Python < 3.13)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
except ImportError:
    audioop = None


def frame_rms(pcm):
    """RMS of a frame of int16 samples (an array("h"))."""
    if not len(pcm):
        return 0
    if audioop is not None:
        return audioop.rms(pcm.tobytes(), 2)
    return math.sqrt(sum(x * x for x in pcm) / len(pcm))


def unmask(payload, mask):
    """RFC 6455 5.3, as one big-integer XOR (byte by byte in Python is too
    slow for hundreds of streams in a benchmark)."""
    n = len(payload)
    if not n:
        return payload
    key = (bytes(mask) * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def frame(opcode, payload=b"", fin=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def read_request(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    n = int(headers.get("content-length") or 0)
    while len(rest) < n:
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return method, target, headers, rest[:n]


def http_reply(sock, status, obj=None, extra=None):
    body = json.dumps(obj).encode() if obj is not None else b""
    head = "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n" % (
        status, {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}.get(status, "Error"),
        len(body))
    for k, v in (extra or {}).items():
        head += "%s: %s\r\n" % (k, v)
    sock.sendall(head.encode() + b"\r\n" + body)


def control(sock, method, path, body):
    global CONFIG
    with LOCK:
        if path == "/_fake/reset":
            PLAN.clear()
            CONNECTIONS.clear()
            CONFIG = dict(DEFAULT_CONFIG)
            return http_reply(sock, 200, {})
        if path == "/_fake/config":
            CONFIG.update(json.loads(body))
            return http_reply(sock, 200, {})
        if path == "/_fake/plan":
            PLAN.extend(json.loads(body)["connections"])
            return http_reply(sock, 200, {})
        if path == "/_fake/connections":
            return http_reply(sock, 200, CONNECTIONS)
    return http_reply(sock, 404, {"err_msg": "no such control"})


def api_key(headers):
    auth = headers.get("authorization", "")
    if auth.startswith("Token "):
        return auth[6:].strip()
    proto = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    if len(proto) == 2 and proto[0] == "token":
        return proto[1]
    return None


class Stream:
    """One /v1/listen connection: the recogniser and the protocol."""

    def __init__(self, sock, query, step, record, config):
        self.sock = sock
        self.q = query
        self.step = step
        self.rec = record
        self.request_id = str(uuid.uuid4())
        self.script = config["script"]
        self.interim_ms = int(config["interim_ms"])
        self.idle_timeout = float(config["idle_timeout"])
        self.rate = int(self.q.get("sample_rate", ["16000"])[0])
        self.frame_bytes = self.rate * FRAME_MS // 1000 * 2
        ep = self.q.get("endpointing", ["10"])[0]
        self.endpointing = None if ep == "false" else int(ep)
        ue = self.q.get("utterance_end_ms", [None])[0]
        self.utterance_end_ms = int(ue) if ue else None
        self.interim = self.q.get("interim_results", ["false"])[0] == "true"
        self.vad_events = self.q.get("vad_events", ["false"])[0] == "true"
        self.pending = b""
        self.frames = 0          # 20 ms frames heard
        self.audio_ms = 0
        self.line = int(step.get("script_from", 0))  # next script line
        self.seg = None          # the burst being heard
        self.utterance = None    # last word end awaiting UtteranceEnd
        self.silence_ms = 0
        self.closed = False
        # Flux (/v2/listen)
        self.flux = record["path"] == "/v2/listen"
        self.sequence_id = 0
        self.turn = None         # the turn being heard: words of its finished bursts
        self.turn_index = 0
        self.eager = "eager_eot_threshold" in self.q
        self.eager_ms = int(config["eager_ms"])
        self.eot_ms = int(config["eot_ms"])

    # ---- sending ----
    def send_json(self, obj):
        if self.step.get("stall") or self.closed:
            return
        if self.step.get("malformed") and obj.get("type") == "Results":
            self.sock.sendall(frame(0x1, b'{"type":"Results","channel":'))
            self.sock.sendall(frame(0x1, b'{"type":"Wibble","note":"a type nobody knows yet"}'))
        if self.flux:
            obj["sequence_id"] = self.sequence_id
            self.sequence_id += 1
        self.sock.sendall(frame(0x1, json.dumps(obj).encode()))
        with LOCK:
            self.rec["messages_sent"] += 1

    def close(self, code, reason):
        if self.closed or self.step.get("stall"):
            return
        self.closed = True
        with LOCK:
            self.rec["server_close"] = code
        self.sock.sendall(frame(0x8, struct.pack("!H", code) + reason.encode()))

    def metadata(self):
        self.send_json({"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                        "sha256": "incomplete", "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                        "duration": self.frames * FRAME_MS / 1000.0, "channels": 1,
                        "models": ["40bd3654-e622-47c4-a111-63a61b23bfe8"],
                        "model_info": {"40bd3654-e622-47c4-a111-63a61b23bfe8":
                                       {"name": "general-nova-3", "version": "2025-04-17.21547", "arch": "nova-3"}}})

    def results(self, words, start, end, is_final, speech_final, from_finalize=False):
        ws = []
        if words:
            step = (end - start) / len(words)
            for i, w in enumerate(words):
                ws.append({"word": w, "start": round(start + i * step, 4), "end": round(start + (i + 1) * step, 4),
                           "confidence": 0.98, "punctuated_word": w})
        self.send_json({"type": "Results", "channel_index": [0, 1], "duration": round(end - start, 6),
                        "start": round(start, 6), "is_final": is_final, "speech_final": speech_final,
                        "from_finalize": from_finalize,
                        "channel": {"alternatives": [{"transcript": " ".join(words),
                                                      "confidence": 0.98 if words else 0.0, "words": ws}]},
                        "metadata": {"request_id": self.request_id,
                                     "model_info": {"name": "general-nova-3", "version": "2025-04-17.21547",
                                                    "arch": "nova-3"},
                                     "model_uuid": "40bd3654-e622-47c4-a111-63a61b23bfe8"}})

    # ---- the recogniser ----
    def heard(self):
        s = self.seg
        return min(len(s["words"]), 1 + (s["voiced_ms"] - FRAME_MS) // WORD_MS)

    def word_times(self, a, b):
        """Start and end of words a..b of the burst, spread over its speech."""
        s = self.seg
        span = (s["end"] - s["start"]) / max(len(s["words"]), 1)
        return s["start"] + a * span, s["start"] + b * span

    def finish_segment(self, speech_final):
        s = self.seg
        rest = s["words"][s["done"]:]
        if not rest:
            if speech_final:
                t = s["end"]
                self.results([], t, t, True, True)
        elif len(rest) == 1:
            a, b = self.word_times(s["done"], len(s["words"]))
            self.results(rest, a, b, True, speech_final)
        else:
            half = s["done"] + len(rest) // 2
            a, b = self.word_times(s["done"], half)
            self.results(s["words"][s["done"]:half], a, b, True, False)
            a, b = self.word_times(half, len(s["words"]))
            self.results(s["words"][half:], a, b, True, speech_final)
        self.utterance = s["end"]
        self.seg = None

    # ---- Flux: turns ----
    def turn_words(self):
        words = list(self.turn["words"])
        if self.seg is not None:
            words += self.seg["words"][self.seg["done"]:self.heard()]
        return words

    def turn_info(self, event, confidence):
        t = self.turn
        self.send_json({"type": "TurnInfo", "request_id": self.request_id, "event": event,
                        "turn_index": self.turn_index, "audio_window_start": round(t["start"], 6),
                        "audio_window_end": round(self.frames * FRAME_MS / 1000.0, 6),
                        "transcript": " ".join(self.turn_words()),
                        "words": [{"word": w, "confidence": 0.98} for w in self.turn_words()],
                        "end_of_turn_confidence": confidence})

    def end_turn(self):
        # a burst still being heard goes on in the next turn with its other words
        self.turn["words"] = self.turn_words()
        if self.seg is not None:
            self.seg["done"] = max(self.seg["done"], self.heard())
        self.turn_info("EndOfTurn", 0.9)
        self.turn = None
        self.turn_index += 1

    def on_frame_flux(self, pcm):
        t = self.frames * FRAME_MS / 1000.0
        self.frames += 1
        rms = frame_rms(pcm)
        if rms > VOICED_RMS:
            if self.turn is None:
                self.turn = {"words": [], "start": t, "eager": False, "since_update": 0}
                self.turn_info("StartOfTurn", 0.01)
            if self.seg is None:
                line = self.script[self.line % len(self.script)]
                self.line += 1
                self.seg = {"words": line.split(), "start": t, "end": t, "voiced_ms": 0, "done": 0}
                if self.turn["eager"]:
                    self.turn["eager"] = False
                    self.turn_info("TurnResumed", 0.2)
            self.silence_ms = 0
            self.seg["voiced_ms"] += FRAME_MS
            self.seg["end"] = t + FRAME_MS / 1000.0
        elif self.turn is not None:
            self.silence_ms += FRAME_MS
            if self.seg is not None and self.silence_ms >= SEGMENT_SILENCE_MS:
                self.turn["words"] += self.seg["words"][self.seg["done"]:]
                self.seg = None
            if self.eager and not self.turn["eager"] and self.silence_ms >= self.eager_ms:
                self.turn["eager"] = True
                self.turn_info("EagerEndOfTurn", 0.6)
            if self.silence_ms >= self.eot_ms:
                self.end_turn()
                return
        if self.turn is not None:
            self.turn["since_update"] += FRAME_MS
            if self.turn["since_update"] >= 240:
                self.turn["since_update"] = 0
                self.turn_info("Update", 0.1)

    def on_frame(self, pcm):
        if self.flux:
            return self.on_frame_flux(pcm)
        t = self.frames * FRAME_MS / 1000.0
        self.frames += 1
        rms = frame_rms(pcm)
        if rms > VOICED_RMS:
            self.silence_ms = 0
            self.utterance = None
            if self.seg is None:
                line = self.script[self.line % len(self.script)]
                self.line += 1
                self.seg = {"words": line.split(), "start": t, "end": t, "voiced_ms": 0, "done": 0}
                if self.vad_events:
                    self.send_json({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(t, 4)})
            s = self.seg
            s["voiced_ms"] += FRAME_MS
            s["end"] = t + FRAME_MS / 1000.0
            if self.interim and s["voiced_ms"] % self.interim_ms == 0:
                n = self.heard()
                if n > s["done"]:
                    a, _ = self.word_times(s["done"], n)
                    self.results(s["words"][s["done"]:n], a, s["end"], False, False)
            return
        self.silence_ms += FRAME_MS
        if self.seg is not None:
            if self.endpointing is not None and self.silence_ms >= max(self.endpointing, FRAME_MS):
                self.finish_segment(True)
            elif self.endpointing is None and self.silence_ms >= SEGMENT_SILENCE_MS:
                self.finish_segment(False)
        if (self.utterance is not None and self.utterance_end_ms and self.interim
                and self.silence_ms >= self.utterance_end_ms):
            self.send_json({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(self.utterance, 4)})
            self.utterance = None

    def on_audio(self, data):
        with LOCK:
            self.rec["audio_bytes"] += len(data)
            self.rec["audio_messages"] += 1
        if len(data) % 2:
            self.close(1008, "DATA-0000")
            return
        self.pending += data
        while len(self.pending) >= self.frame_bytes:
            chunk, self.pending = self.pending[:self.frame_bytes], self.pending[self.frame_bytes:]
            pcm = array("h")
            pcm.frombytes(chunk)
            if sys.byteorder == "big":
                pcm.byteswap()
            self.on_frame(pcm)
            self.audio_ms += FRAME_MS
            if self.step.get("drop_after_ms") is not None and self.audio_ms >= self.step["drop_after_ms"]:
                self.sock.shutdown(socket.SHUT_RDWR)  # no close frame: the network died
                raise EOFError
            if self.flux and self.step.get("error_after_ms") is not None and self.audio_ms >= self.step["error_after_ms"]:
                self.send_json({"type": "Error", "code": "INTERNAL_SERVER_ERROR",
                                "description": "the fake was told to fail"})
                self.close(1011, "INTERNAL_SERVER_ERROR")
                return
            after = self.step.get("close_after_ms")
            if after is not None and self.audio_ms >= after:
                self.close(int(self.step.get("code", 1011)), self.step.get("reason", "NET-0000"))
                return

    def on_text(self, data):
        try:
            msg = json.loads(data)
            kind = msg.get("type")
        except (ValueError, AttributeError):
            kind = "(not json)"
        with LOCK:
            self.rec["controls"].append(kind)
        if self.flux and kind == "ForceEndTurn":
            if self.turn is None:
                self.turn = {"words": [], "start": self.frames * FRAME_MS / 1000.0, "eager": False, "since_update": 0}
            self.end_turn()
        elif self.flux and kind == "CloseStream":
            if self.turn is not None:
                self.end_turn()
            self.close(1000, "")
        elif kind == "Finalize":
            s = self.seg
            if s is not None:
                n = self.heard()
                if n > s["done"]:
                    a, b = self.word_times(s["done"], n)
                    self.results(s["words"][s["done"]:n], a, b, True, False, from_finalize=True)
                    s["done"] = n
        elif kind == "CloseStream":
            if self.seg is not None:
                self.finish_segment(True)
            self.metadata()
            self.close(1000, "")

    # ---- the connection ----
    def run(self):
        opened = last_frame = time.monotonic()
        had_audio = False
        self.sock.settimeout(0.05)
        buf = b""
        parts, first_op = [], None
        while True:
            now = time.monotonic()
            if not self.closed and (now - (last_frame if had_audio else opened)) >= self.idle_timeout:
                self.metadata()
                self.close(1011, "Deepgram did not receive audio data or a text message within the "
                                 "timeout window. See https://dpgr.am/net0001")
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return
            buf += chunk
            while True:
                if len(buf) < 2:
                    break
                b0, b1 = buf[0], buf[1]
                n, off = b1 & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, off = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, off = struct.unpack("!Q", buf[2:10])[0], 10
                masked = b1 & 0x80
                if len(buf) < off + (4 if masked else 0) + n:
                    break
                mask = buf[off:off + 4] if masked else None
                off += 4 if masked else 0
                payload = buf[off:off + n]
                buf = buf[off + n:]
                if mask:
                    payload = unmask(payload, mask)
                fin, opcode = b0 & 0x80, b0 & 0x0F
                if opcode == 0x9:
                    self.sock.sendall(frame(0xA, payload))
                    continue
                if opcode == 0xA:
                    continue
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    with LOCK:
                        self.rec["client_close"] = code
                    if not self.closed:
                        self.closed = True
                        self.sock.sendall(frame(0x8, payload[:2]))
                    return
                if opcode != 0x0:
                    first_op = opcode
                parts.append(payload)
                if not fin:
                    continue
                data, parts = b"".join(parts), []
                last_frame = time.monotonic()
                if self.closed:
                    continue
                if first_op == 0x2:
                    had_audio = True
                    self.on_audio(data)
                else:
                    self.on_text(data)


def serve(sock):
    try:
        method, target, headers, body = read_request(sock)
        url = urllib.parse.urlsplit(target)
        if url.path.startswith("/_fake/"):
            return control(sock, method, url.path, body)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        rec = {"path": url.path, "query": query, "headers": headers, "controls": [], "audio_bytes": 0,
               "audio_messages": 0, "messages_sent": 0, "server_close": None, "client_close": None,
               "refused": None}
        with LOCK:
            CONNECTIONS.append(rec)
            step = PLAN.pop(0) if PLAN else {}
            config = dict(CONFIG)
        request_id = str(uuid.uuid4())
        if url.path not in ("/v1/listen", "/v2/listen"):
            rec["refused"] = 404
            return http_reply(sock, 404, {"err_code": "NOT_FOUND", "err_msg": "Not found", "request_id": request_id})
        key = api_key(headers)
        if not key or key == "invalid":
            rec["refused"] = 401
            return http_reply(sock, 401, {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.",
                                          "request_id": request_id},
                              {"dg-request-id": request_id, "dg-error": "Invalid credentials."})
        if step.get("refuse"):
            status = int(step["refuse"])
            rec["refused"] = status
            return http_reply(sock, status, {"err_code": "TOO_MANY_REQUESTS", "err_msg": "Too many requests.",
                                             "request_id": request_id},
                              {"dg-request-id": request_id, "dg-error": "Too many requests."})
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
        reply = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Accept: %s\r\ndg-request-id: %s\r\n" % (accept, request_id))
        offered = headers.get("sec-websocket-protocol")
        if offered:
            reply += "Sec-WebSocket-Protocol: %s\r\n" % offered.split(",")[0].strip()
        sock.sendall((reply + "\r\n").encode())
        stream = Stream(sock, query, step, rec, config)
        if stream.flux:
            stream.send_json({"type": "Connected", "request_id": request_id})
        stream.run()
    except (EOFError, ConnectionError, OSError, ValueError, KeyError):
        pass
    finally:
        sock.close()


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # an optional second argument: the port (a test restarts a fake where
    # its clients expect it)
    listener.bind(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0))
    listener.listen(256)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    while True:
        conn, _ = listener.accept()
        # Deepgram's servers (and any WebSocket server that streams results)
        # send at once: without TCP_NODELAY a message right after another
        # waits for the client's next packet (the next audio frame, 20 ms)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
