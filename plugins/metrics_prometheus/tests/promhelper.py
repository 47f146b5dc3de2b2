#!/usr/bin/python3
"""HTTP helpers for prometheus.sh, standard library only (Debian's python3).

  freeport                      a free TCP port on 127.0.0.1
  get URL OUT                   GET URL into file OUT; prints the status code
  wait-query BASE EXPR MIN SECS poll Prometheus at BASE until EXPR has a
                                sample >= MIN; prints the value, exit 1 on timeout
  rules BASE                    names of the alerting and recording rules loaded
  dashboard-exprs FILE          every PromQL expression of a Grafana dashboard,
                                one per line, with its variables filled in
  query-ok BASE                 reads expressions on stdin, runs each at BASE;
                                prints the failing ones, exit 1 if any
"""
import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def fetch(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def query(base, expr):
    status, body = fetch(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return status, json.loads(body.decode() or "{}")


def main(argv):
    cmd = argv[1]
    if cmd == "freeport":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
    elif cmd == "get":
        try:
            status, body = fetch(argv[2])
        except (OSError, urllib.error.URLError):
            status, body = 0, b""
        with open(argv[3], "wb") as f:
            f.write(body)
        print(status)
    elif cmd == "wait-query":
        base, expr, least, secs = argv[2], argv[3], float(argv[4]), float(argv[5])
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            try:
                status, j = query(base, expr)
                for r in j.get("data", {}).get("result", []):
                    v = float(r["value"][1])
                    if v >= least:
                        print(v)
                        return 0
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        return 1
    elif cmd == "rules":
        try:
            status, body = fetch(argv[2] + "/api/v1/rules")
        except (OSError, urllib.error.URLError):
            return 1
        for g in json.loads(body)["data"]["groups"]:
            for r in g["rules"]:
                print(r["name"])
    elif cmd == "dashboard-exprs":
        d = json.load(open(argv[2]))
        fill = {"$job": "tolk", "$instance": ".*", "$__rate_interval": "1m"}
        def walk(panels):
            for p in panels:
                yield from walk(p.get("panels", []))
                for t in p.get("targets", []):
                    e = t["expr"]
                    for k, v in fill.items():
                        e = e.replace(k, v)
                    yield " ".join(e.split())
        for e in walk(d["panels"]):
            print(e)
        for v in d["templating"]["list"]:
            if v.get("type") == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                # label_values(SELECTOR, label) -> SELECTOR
                inner = q[len("label_values("):q.rindex(",")]
                for k, val in fill.items():
                    inner = inner.replace(k, val)
                print(inner)
    elif cmd == "query-ok":
        bad = 0
        for e in sys.stdin.read().splitlines():
            status, j = query(argv[2], e)
            if status != 200 or j.get("status") != "success":
                print("FAILED: %s: %s" % (e, j.get("error")))
                bad += 1
        return 1 if bad else 0
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
