#!/usr/bin/env python3
"""A local HTTP/1.1 server for the HTTP client's tests (tests/test_http.c)
and the networked plugin skeleton's test (tests/sdk.sh).

Binds 127.0.0.1 on an ephemeral port and prints "PORT <n>" once it listens.
Keep-alive is on, so a client that reuses connections opens fewer than it
sends requests (/stats counts them). --cert/--key serve HTTPS instead.

Routes:
  /echo              JSON of what arrived: method, path, headers (names in
                     lower case), body
  /headers           429 with Retry-After and a mixed-case header
  /say?t=TEXT        TEXT as the body
  /bytes?n=N         N bytes of 'x'
  /stream?gate=G&n=N chunked: chunk i ("chunk-i;") is sent only after
                     /release?gate=G&i=(i-1) came in, so the client must
                     deliver each chunk before the next exists
  /release?gate=G&i=I
  /stall?hold=S      headers and 10 of 100 bytes, then nothing for S seconds
  /truncate          Content-Length 1000, 10 bytes, then the connection closes
  /truncate-chunked  one chunk, then the connection closes without the last
  /stats             {"connections": n}
  /translate         LibreTranslate-shaped: {"q","source","target"[,"api_key"]}
                     -> {"translatedText": "<target>: <q upper-cased>"};
                     403 when --api-key is set and does not match; q equal to
                     "FAIL500" gets a 503
"""
import argparse
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

lock = threading.Lock()
connections = 0
gates = {}
api_key = None


def gate(name, i):
    with lock:
        return gates.setdefault((name, i), threading.Event())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        global connections
        super().setup()
        with lock:
            connections += 1

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, ctype="text/plain", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def route(self):
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        p = u.path
        if p == "/echo":
            self.reply(200, json.dumps({
                "method": self.command, "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace")}), "application/json")
        elif p == "/headers":
            self.reply(429, "slow down", extra=[("Retry-After", "7"), ("X-Mixed-Case", "Yes")])
        elif p == "/say":
            self.reply(200, q.get("t", ""))
        elif p == "/bytes":
            self.reply(200, b"x" * int(q.get("n", "0")))
        elif p == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(q.get("n", "3"))):
                if i > 0 and not gate(q["gate"], i - 1).wait(20):
                    self.close_connection = True  # the client never asked: end badly
                    return
                self.chunk(b"chunk-%d;" % i)
            self.wfile.write(b"0\r\n\r\n")
        elif p == "/release":
            gate(q["gate"], int(q["i"])).set()
            self.reply(200, "released")
        elif p == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"y" * 10)
            time.sleep(float(q.get("hold", "10")))
            self.close_connection = True
        elif p == "/truncate":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"z" * 10)
            self.close_connection = True
        elif p == "/truncate-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.chunk(b"partial")
            self.close_connection = True
        elif p == "/stats":
            with lock:
                n = connections
            self.reply(200, json.dumps({"connections": n}), "application/json")
        elif p == "/translate":
            try:
                req = json.loads(body)
                text, target = req["q"], req["target"]
            except (ValueError, KeyError, TypeError):
                self.reply(400, json.dumps({"error": "bad request"}), "application/json")
                return
            if api_key is not None and req.get("api_key") != api_key:
                self.reply(403, json.dumps({"error": "Invalid API key"}), "application/json")
            elif text == "FAIL500":
                self.reply(503, json.dumps({"error": "overloaded"}), "application/json")
            else:
                out = {"translatedText": "%s: %s" % (target, text.upper())}
                self.reply(200, json.dumps(out, ensure_ascii=False), "application/json")
        else:
            self.reply(404, "no such route")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = route


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        pass  # clients that hang up (cancel, timeouts) are what the tests do


def main():
    global api_key
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--api-key")
    a = ap.parse_args()
    api_key = a.api_key
    srv = Server(("127.0.0.1", 0), Handler)
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("PORT %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
