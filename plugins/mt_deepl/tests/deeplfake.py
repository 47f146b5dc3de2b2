#!/usr/bin/env python3
"""A local stand-in for DeepL's REST API v2, for tests only (127.0.0.1).

It follows the public API (developers.deepl.com, DeepLcom/openapi, and the
behaviour of DeepL's own deepl-mock): POST /v2/translate with a JSON body,
GET /v2/usage, GET /v2/languages; `Authorization: DeepL-Auth-Key <key>`
(a missing key, an empty one or the key "invalid" get 403 with an empty
body, as deepl-mock does); 400 {"message": "Value for 'target_lang' not
supported."} for an unknown target, "Parameter 'text' not specified" without
text; 413 for a body over 128 KiB; 456 {"message": "Quota for this billing
period has been exceeded."}; 429 with or without Retry-After; 500/529.

It "translates" English to Spanish word by word with a small dictionary and
marks other words, so a test can tell its answers from anyone else's.

Test control (not part of DeepL's API, under /_fake/):
  POST /_fake/plan   {"responses": [ {"status": 429, "retry_after": 1}, ... ]}
                     the next requests to /v2/translate get these answers in
                     order (then normal service again); an entry may also be
                     {"delay_ms": N}, {"status": 200, "body": "not json"},
                     {"reset": true} (close the connection mid-answer) or
                     {"stall": true} (send headers, then nothing).
  POST /_fake/config {"delay_ms": N} every answer of /v2/translate comes N ms
                     after its request (a provider's latency, for benchmarks);
                     {"record": false} keeps only the counts, not the requests
  GET  /_fake/requests   every /v2/translate request seen: headers and body
  GET  /_fake/stats      {"requests": n, "texts": n, "max_texts": n}: requests
                     to /v2/translate, the texts they carried, the most in one
  POST /_fake/reset      forget the plan, the requests, the counts, the config

Usage: deeplfake.py PORTFILE [PORT]   (binds 127.0.0.1:PORT, default 0 = any, writes
       the port to PORTFILE)
"""
import json
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

DICT = {"hello": "hola", "world": "mundo", "thank": "gracias", "you": "amigo",
        "good": "buenos", "morning": "días", "please": "por favor", "one": "uno"}
TARGETS = {"AR", "BG", "CS", "DA", "DE", "EL", "EN", "EN-GB", "EN-US", "ES", "ES-419", "ET", "FI",
           "FR", "HE", "HU", "ID", "IT", "JA", "KO", "LT", "LV", "NB", "NL", "PL", "PT", "PT-BR",
           "PT-PT", "RO", "RU", "SK", "SL", "SV", "TH", "TR", "UK", "VI", "ZH", "ZH-HANS", "ZH-HANT"}
LOCK = threading.Lock()
PLAN = []
SEEN = []
CONFIG = {"delay_ms": 0, "record": True}
STATS = {"requests": 0, "texts": 0, "max_texts": 0}


def translate(text, target):
    if target.startswith("ES"):
        return " ".join(DICT.get(w.lower(), "<%s>" % w) for w in text.split())
    return "[%s] %s" % (target, text)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as DeepL's servers
    # headers and body go out in separate writes: without TCP_NODELAY the
    # body waits for the client's delayed ACK (40 ms on Linux)
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, obj=None, raw=None, headers=None):
        body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def key(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("DeepL-Auth-Key "):
            return None
        k = auth[len("DeepL-Auth-Key "):].strip()
        return None if not k or k == "invalid" else k

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/_fake/requests":
            with LOCK:
                return self.reply(200, SEEN)
        if self.path == "/_fake/stats":
            with LOCK:
                return self.reply(200, STATS)
        if self.path.startswith("/v2/usage"):
            if not self.key():
                return self.reply(403)
            return self.reply(200, {"character_count": 180118, "character_limit": 1250000})
        if self.path.startswith("/v2/languages"):
            if not self.key():
                return self.reply(403)
            return self.reply(200, [{"language": "ES", "name": "Spanish", "supports_formality": True}])
        if self.path.startswith("/v2/translate"):
            return self.reply(405, {"message": "Use POST"})
        return self.reply(404, {"message": "Not found"})

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
                CONFIG.update({"delay_ms": 0, "record": True})
                STATS.update({"requests": 0, "texts": 0, "max_texts": 0})
            return self.reply(200, {})
        if self.path != "/v2/translate":
            return self.reply(404, {"message": "Not found"})
        with LOCK:
            if CONFIG["record"]:
                SEEN.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": raw.decode("utf-8", "replace")})
            step = PLAN.pop(0) if PLAN else {}
            delay = step.get("delay_ms", CONFIG["delay_ms"])
        t0 = time.monotonic()
        if delay:
            time.sleep(max(0.0, delay / 1000.0 - (time.monotonic() - t0)))
        if step.get("reset"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "400")
            self.end_headers()
            self.wfile.write(b'{"translations":[{"detected_')
            self.wfile.flush()
            self.close_connection = True
            return
        if step.get("stall"):
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.flush()
            time.sleep(30)
            self.close_connection = True
            return
        status = step.get("status")
        if status == 200 and "body" in step:
            return self.reply(200, raw=step["body"].encode())
        if status:
            headers = {}
            if step.get("retry_after") is not None:
                headers["Retry-After"] = str(step["retry_after"])
            msg = {456: "Quota for this billing period has been exceeded.",
                   429: "Too many requests", 400: "Bad request"}.get(status)
            return self.reply(status, {"message": msg} if msg else None, headers=headers)
        if not self.key():
            return self.reply(403)
        if len(raw) > 128 * 1024:
            return self.reply(413, {"message": "Request Entity Too Large"})
        try:
            req = json.loads(raw)
        except ValueError:
            return self.reply(400, {"message": "Invalid request: expected JSON"})
        texts = req.get("text")
        if not texts:
            return self.reply(400, {"message": "Parameter 'text' not specified."})
        with LOCK:
            STATS["requests"] += 1
            STATS["texts"] += len(texts)
            STATS["max_texts"] = max(STATS["max_texts"], len(texts))
        target = str(req.get("target_lang", "")).upper()
        if target not in TARGETS:
            return self.reply(400, {"message": "Value for 'target_lang' not supported."})
        source = str(req.get("source_lang", "EN")).upper()
        out = {"translations": [{"detected_source_language": source, "text": translate(t, target)}
                                for t in texts]}
        if req.get("model_type"):
            for t in out["translations"]:
                t["model_type_used"] = req["model_type"].replace("prefer_", "")
        return self.reply(200, out)


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    srv = Server(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
