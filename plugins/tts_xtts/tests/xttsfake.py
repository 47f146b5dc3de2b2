#!/usr/bin/env python3
"""A local stand-in for coqui-ai/xtts-streaming-server, for tests only (127.0.0.1).

It follows the server's API (server/main.py, protocols.md section 3.1 and 10.3):
  POST /tts_stream   JSON {"speaker_embedding": [512 floats], "gpt_cond_latent":
                     [[1024 floats] x N], "text", "language", "add_wav_header" (bool,
                     default true), "stream_chunk_size" (string, default "20")};
                     200 audio/wav, chunked: if add_wav_header, first a separate
                     44-byte WAV header whose data size is 0, then int16 24 kHz mono
                     little-endian PCM in chunks of any length (here odd byte counts,
                     so a client must carry a byte across chunks). Missing or
                     ill-typed fields, or a language outside the server's Literal
                     list: 422 {"detail": [...]} as FastAPI answers.
  POST /clone_speaker  multipart/form-data, file field wav_file ->
                     {"gpt_cond_latent": [[1024] x 32], "speaker_embedding": [512]}
  GET  /studio_speakers  {"<name>": {"speaker_embedding", "gpt_cond_latent"}, ...}
  GET  /languages    the model's languages (JSON array)

One stream at a time, as protocols.md 10.3 says of the stock server: main.py
has one model and no lock; its endpoint is a plain `def` whose generator
Starlette runs in a worker thread, so a second request is accepted and waits
for the GPU rather than being refused. Here a second /tts_stream is accepted
and waits (no byte of it is sent) until the first has finished or its client
went away, then streams. The audio is a deterministic tone per word of the text, WORD_MS long,
so a test can count what it gets.

Test control (not part of the server's API, under /_fake/):
  POST /_fake/plan    {"responses": [...]} the next /tts_stream requests get these,
                      in order: {"status": 500}, {"delay_ms": N} (before the first
                      audio), {"stall_after_words": K} (K words, then nothing until
                      the client hangs up), {"reset_after_words": K} (K words, then
                      the connection is closed mid-body)
  POST /_fake/config  {"force_header": true} header even with add_wav_header false
                      (an old server); {"down": true} every API request is answered by
                      closing the connection, /languages included, until down is false;
                      {"delay_ms": N} every stream's first audio N ms after its start
                      (the model's time to first chunk, for benchmarks); {"streams": K}
                      K streams at once (a server per GPU behind one address, for
                      benchmarks; the stock server is 1); {"record": false} keeps
                      only the counts
  GET  /_fake/state   {"requests": [...], "clones": [...], "max_active": n, "waited": n,
                      "active": streams in progress}; a request's "cond_digest" is a
                      SHA-256 of the conditioning's values as parsed (recorded
                      requests only), so a test can tell two conditionings apart
  POST /_fake/reset   forget plan, config and what was seen

Usage: xttsfake.py PORTFILE [PORT]   (binds 127.0.0.1:PORT, default 0 = any, writes
       the port to PORTFILE)
"""
import functools
import hashlib
import json
import math
import os
import select
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

RATE = 24000
WORD_MS = 300
WORD_SAMPLES = RATE * WORD_MS // 1000
CHUNK_BYTES = 4801  # odd on purpose
LANGUAGES = ["en", "de", "fr", "es", "it", "pl", "pt", "tr", "ru", "nl", "cs", "ar", "zh", "ja", "hu", "ko"]

LOCK = threading.Lock()
PLAN = []
SEEN = []
CLONES = []
CONFIG = {"force_header": False, "down": False, "delay_ms": 0, "streams": 1, "record": True}
SLOTS = threading.Condition()  # streams in progress, at most CONFIG["streams"]
INUSE = [0]
ACTIVE = [0, 0, 0]  # active, max_active, waited


def conditioning(marker):
    """Conditioning of the real shapes; speaker_embedding[0] identifies it
    (a multiple of 1/64: exact in float16, as the server sends)."""
    return {"gpt_cond_latent": [[round(marker / 2, 6)] + [0.0] * 1023 for _ in range(32)],
            "speaker_embedding": [marker] + [0.03125] * 511}


STUDIO = {"Claribel Dervla": conditioning(0.75), "Daisy Studious": conditioning(0.8125)}


def wav_header():
    # what wave.open() writes for zero frames: RIFF size 36, data size 0
    return (b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16) + b"data" + struct.pack("<I", 0))


@functools.lru_cache(maxsize=4096)  # a Python loop per sample: at 100 calls, most of the fake's CPU
def tone(word):
    freq = 200 + (sum(word.encode()) % 60) * 10
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / RATE)))
                    for i in range(WORD_SAMPLES))


def validate(req):
    errs = []
    if not isinstance(req, dict):
        return [{"type": "model_attributes_type", "loc": ["body"], "msg": "Input should be a valid dictionary"}]
    se, gl = req.get("speaker_embedding"), req.get("gpt_cond_latent")
    if not isinstance(se, list) or not all(isinstance(x, (int, float)) for x in se):
        errs.append({"type": "list_type", "loc": ["body", "speaker_embedding"], "msg": "Input should be a valid list"})
    elif len(se) != 512:
        errs.append({"loc": ["body", "speaker_embedding"], "msg": "the model needs 512 values"})
    if not isinstance(gl, list) or not all(isinstance(r, list) for r in gl):
        errs.append({"type": "list_type", "loc": ["body", "gpt_cond_latent"], "msg": "Input should be a valid list"})
    elif sum(len(r) for r in gl) % 1024 or not gl:
        errs.append({"loc": ["body", "gpt_cond_latent"], "msg": "cannot reshape to (-1, 1024)"})
    if not isinstance(req.get("text"), str):
        errs.append({"type": "missing", "loc": ["body", "text"], "msg": "Field required"})
    if req.get("language") not in LANGUAGES:
        errs.append({"type": "literal_error", "loc": ["body", "language"], "msg": "Input should be one of ..."})
    if "stream_chunk_size" in req and not isinstance(req["stream_chunk_size"], str):
        errs.append({"type": "string_type", "loc": ["body", "stream_chunk_size"], "msg": "Input should be a valid string"})
    if "add_wav_header" in req and not isinstance(req["add_wav_header"], bool):
        errs.append({"type": "bool_type", "loc": ["body", "add_wav_header"], "msg": "Input should be a valid boolean"})
    return errs


def multipart_file(ctype, body, field):
    if "boundary=" not in ctype:
        return None
    boundary = ctype.split("boundary=", 1)[1].strip().strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if b'name="%s"' % field.encode() in head:
            return data[:-2] if data.endswith(b"\r\n") else data
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # uvicorn keeps connections alive
    # uvicorn sets TCP_NODELAY; without it each chunk after the first waits
    # for the client's delayed ACK (40 ms on Linux)
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, obj=None, ctype="application/json", raw=None):
        body = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def refuse(self):
        """down: the connection closes without an answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self):
        if self.path == "/_fake/state":
            with LOCK:
                return self.reply(200, {"requests": SEEN, "clones": CLONES, "max_active": ACTIVE[1],
                                        "waited": ACTIVE[2], "active": ACTIVE[0]})
        if CONFIG["down"]:
            return self.refuse()
        if self.path == "/languages":
            return self.reply(200, LANGUAGES)
        if self.path == "/studio_speakers":
            return self.reply(200, STUDIO)
        if self.path in ("/tts_stream", "/clone_speaker"):
            return self.reply(405, {"detail": "Method Not Allowed"})
        return self.reply(404, {"detail": "Not Found"})

    def do_POST(self):
        raw = self.body()
        if self.path == "/_fake/plan":
            with LOCK:
                PLAN.extend(json.loads(raw)["responses"])
            return self.reply(200, {})
        if self.path == "/_fake/config":
            with LOCK:
                CONFIG.update(json.loads(raw))
            return self.reply(200, CONFIG)
        if self.path == "/_fake/reset":
            with LOCK:
                PLAN.clear()
                SEEN.clear()
                CLONES.clear()
                CONFIG.update({"force_header": False, "down": False, "delay_ms": 0, "streams": 1,
                               "record": True})
                ACTIVE[1] = ACTIVE[2] = 0
            return self.reply(200, {})
        if CONFIG["down"]:
            return self.refuse()
        if self.path == "/clone_speaker":
            return self.clone_speaker(raw)
        if self.path == "/tts_stream":
            return self.tts_stream(raw)
        return self.reply(404, {"detail": "Not Found"})

    def clone_speaker(self, raw):
        wav = multipart_file(self.headers.get("Content-Type", ""), raw, "wav_file")
        if wav is None:
            return self.reply(422, {"detail": [{"type": "missing", "loc": ["body", "wav_file"],
                                                "msg": "Field required"}]})
        if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
            return self.reply(500, ctype="text/plain", raw=b"Internal Server Error")
        rate = struct.unpack("<I", wav[24:28])[0]
        with LOCK:
            marker = (len(CLONES) + 1) / 64.0
            CLONES.append({"bytes": len(wav), "rate": rate, "speaker_embedding0": marker})
        return self.reply(200, conditioning(marker))

    def tts_stream(self, raw):
        try:
            req = json.loads(raw)
        except ValueError:
            return self.reply(422, {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]})
        errs = validate(req)
        if errs:
            return self.reply(422, {"detail": errs})
        with SLOTS:
            waited = INUSE[0] >= CONFIG["streams"]
            while INUSE[0] >= CONFIG["streams"]:
                SLOTS.wait()
            INUSE[0] += 1
        try:
            with LOCK:
                ACTIVE[0] += 1
                ACTIVE[1] = max(ACTIVE[1], ACTIVE[0])
                ACTIVE[2] += waited
                step = PLAN.pop(0) if PLAN else {}
                seen = {"text": req["text"], "language": req["language"],
                        "add_wav_header": req.get("add_wav_header", True),
                        "stream_chunk_size": req.get("stream_chunk_size", "20"),
                        "speaker_embedding0": req["speaker_embedding"][0],
                        "latent_rows": len(req["gpt_cond_latent"]),
                        "gpt_cond_latent00": req["gpt_cond_latent"][0][0],
                        "waited": waited, "pcm_bytes": 0, "header": False}
                if CONFIG["record"]:
                    seen["cond_digest"] = hashlib.sha256(json.dumps(
                        [req["speaker_embedding"], req["gpt_cond_latent"]]).encode()).hexdigest()
                    SEEN.append(seen)
                if "delay_ms" not in step and CONFIG["delay_ms"]:
                    step = dict(step, delay_ms=CONFIG["delay_ms"])
            self.stream(req, step, seen)
        finally:
            with LOCK:
                ACTIVE[0] -= 1
            with SLOTS:
                INUSE[0] -= 1
                SLOTS.notify_all()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def client_gone(self, wait=0.05):
        r, _, _ = select.select([self.connection], [], [], max(0.0, wait))
        if not r:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def stream(self, req, step, seen):
        if step.get("status"):
            return self.reply(step["status"], ctype="text/plain", raw=b"Internal Server Error")
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        # the model thinks; a client that hangs up meanwhile frees the model
        deadline = time.time() + step.get("delay_ms", 0) / 1000.0
        while time.time() < deadline:
            if self.client_gone(min(0.05, deadline - time.time())):
                self.close_connection = True
                return
        try:
            if req.get("add_wav_header", True) or CONFIG["force_header"]:
                self.chunk(wav_header())  # a chunk of its own, as the server yields it
                seen["header"] = True
            words = req["text"].split()
            pcm = b"".join(tone(w) for w in words)
            cut = None
            if "stall_after_words" in step:
                cut = step["stall_after_words"] * WORD_SAMPLES * 2
            if "reset_after_words" in step:
                cut = step["reset_after_words"] * WORD_SAMPLES * 2
            end = len(pcm) if cut is None else min(cut, len(pcm))
            for i in range(0, end, CHUNK_BYTES):
                part = pcm[i:min(i + CHUNK_BYTES, end)]
                self.chunk(part)
                seen["pcm_bytes"] += len(part)
                time.sleep(0.005)
            if "stall_after_words" in step:
                deadline = time.time() + 20
                while time.time() < deadline and not self.client_gone():
                    pass
                self.close_connection = True
                return
            if "reset_after_words" in step:
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    srv = Server(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
