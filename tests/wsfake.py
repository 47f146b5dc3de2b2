#!/usr/bin/env python3
"""A WebSocket server for tests/test_ws.c, RFC 6455 written out by hand so
the tests control every byte, including the misbehaviour a real server
library would not allow.

It listens on 127.0.0.1 (an ephemeral port), prints "port N", and serves
until its stdin closes. With "--tls CERT KEY" it speaks TLS (wss://). The request path picks the behaviour:

  /echo                 echoes every message (same type), answers pings
  /headers              first sends a text message: JSON of the request's
                        headers (names lower-cased) and path, then echoes
  /fragments?n=K        sends one text message in K frames, then one binary
                        message in K frames, then echoes
  /close?code=C&reason=R  closes with C and R at once
  /big?n=N              sends one binary message of N bytes, then echoes
  /noping               echoes, but never answers a ping
  /silent               answers pings, never sends a message
  /drop                 closes the TCP connection right after the upgrade
  /stall                reads nothing until SIGUSR1; then counts the bytes
                        of data messages, and answers a text "count?" with
                        "got N"
  /refuse?status=S      answers the upgrade with HTTP S and closes
  /hang                 reads the request, never answers

Events the tests check are printed on stdout, one line each:
  "close C R"   the client's close frame (C = 1005 when it had no code)
  "ping"        a ping from the client
"""
import base64
import hashlib
import json
import signal
import socket
import ssl
import struct
import sys
import threading
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
resume = threading.Event()
out_lock = threading.Lock()


def say(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    fin, opcode = b0 & 0x80, b0 & 0x0F
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    mask = read_exact(sock, 4) if b1 & 0x80 else None
    payload = read_exact(sock, n)
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return bool(fin), opcode, payload


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


def close_payload(code, reason):
    return struct.pack("!H", code) + reason.encode()


def read_request(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def messages(sock, answer_pings=True):
    """Yields (opcode, payload) of whole data messages; handles control
    frames; returns after the close handshake."""
    parts, first_op = [], None
    while True:
        fin, opcode, payload = read_frame(sock)
        if opcode == 0x9:
            say("ping")
            if answer_pings:
                sock.sendall(frame(0xA, payload))
            continue
        if opcode == 0xA:
            continue
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            say("close %d %s" % (code, payload[2:].decode("utf-8", "replace")))
            sock.sendall(frame(0x8, payload[:2]))
            return
        if opcode != 0x0:
            first_op = opcode
        parts.append(payload)
        if fin:
            yield first_op, b"".join(parts)
            parts = []


def echo(sock, answer_pings=True):
    for opcode, data in messages(sock, answer_pings):
        if opcode == 0x1 and len(data) < 64:
            say("got " + data.decode("utf-8", "replace"))
        sock.sendall(frame(opcode, data))


def serve(sock, tls):
    try:
        if tls:
            sock = tls.wrap_socket(sock, server_side=True)
        method, target, headers = read_request(sock)
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query))
        path = url.path
        if path == "/hang":
            while sock.recv(4096):
                pass
            return
        if path == "/refuse":
            status = int(query.get("status", "401"))
            body = b'{"err_code":"refused","err_msg":"by the test"}'
            sock.sendall(b"HTTP/1.1 %d Refused\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (status, len(body), body))
            return
        accept = base64.b64encode(hashlib.sha1(
            (headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
        reply = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n" % accept)
        offered = headers.get("sec-websocket-protocol")
        if offered:
            reply += "Sec-WebSocket-Protocol: %s\r\n" % offered.split(",")[0].strip()
        sock.sendall((reply + "\r\n").encode())

        if path == "/headers":
            sock.sendall(frame(0x1, json.dumps({"headers": headers, "path": target}).encode()))
            echo(sock)
        elif path == "/fragments":
            k = int(query.get("n", "3"))
            for opcode, unit in ((0x1, b"fragment;"), (0x2, b"\x00\x01\x02")):
                for i in range(k):
                    sock.sendall(frame(opcode if i == 0 else 0x0, unit * (i + 1), fin=i == k - 1))
            echo(sock)
        elif path == "/close":
            sock.sendall(frame(0x8, close_payload(int(query["code"]), query.get("reason", ""))))
            for _ in messages(sock):
                pass
        elif path == "/big":
            sock.sendall(frame(0x2, b"x" * int(query["n"])))
            echo(sock)
        elif path == "/noping":
            echo(sock, answer_pings=False)
        elif path == "/silent":
            for _ in messages(sock):
                pass
        elif path == "/drop":
            return
        elif path == "/stall":
            resume.wait()
            total = 0
            for opcode, data in messages(sock):
                if opcode == 0x1 and data == b"count?":
                    sock.sendall(frame(0x1, b"got %d" % total))
                else:
                    total += len(data)
        else:
            echo(sock)
    except (EOFError, ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        sock.close()


def main():
    tls = None
    if len(sys.argv) == 4 and sys.argv[1] == "--tls":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[2], sys.argv[3])
    signal.signal(signal.SIGUSR1, lambda *_: resume.set())
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    say("port %d" % listener.getsockname()[1])

    def accept_loop():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn, tls), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    # the test ends us by closing our stdin (or by dying)
    while sys.stdin.buffer.read(4096):
        pass


if __name__ == "__main__":
    main()
