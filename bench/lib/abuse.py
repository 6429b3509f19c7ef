#!/usr/bin/env python3
"""Replays the front-door attacks against a running `scaleup up` site on loopback.

Usage: abuse.py BASE_PORT STATE_DIR

Every attack is bounded in count and time and targets 127.0.0.0/8 only. Attackers
use 127.0.0.2; a bystander on 127.0.0.4 checks after each attack (and during the
long ones) that the site still answers other people: 10 HTTPS requests for the home
page through the floating address. Prints one table row per attack: what was done,
what the site did, and whether the bystander was served.
"""

import json
import os
import select
import socket
import ssl
import statistics
import sys
import threading
import time

BASE = int(sys.argv[1])
STATE = sys.argv[2]
FLOAT_HTTP = BASE
FLOAT_HTTPS = BASE + 5
LB1 = BASE + 1
WEB1_TLS = BASE + 8
LB1_ADMIN, WEB1_ADMIN, APP1_ADMIN = BASE + 11, BASE + 13, BASE + 14
LB1_HEARTBEAT = BASE + 21
ATTACKER, BYSTANDER, REAL_USER = "127.0.0.2", "127.0.0.4", "127.0.0.5"

TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE


def connect(port, source=ATTACKER, timeout=3.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def request(port, raw, source=ATTACKER, tls=False, timeout=10.0, body_chunks=()):
    """Sends a raw request (and body chunks) and returns (status, headers, body)."""
    s = connect(port, source, timeout)
    if tls:
        s = TLS.wrap_socket(s, server_hostname="www.foobar.com")
    try:
        s.sendall(raw)
        for chunk in body_chunks:
            s.sendall(chunk)
    except OSError:
        pass  # a server that answers early may close before the body is in
    data = b""
    try:
        while True:
            more = s.recv(65536)
            if not more:
                break
            data += more
            if len(data) > 4 * 1024 * 1024:
                break
    except OSError:
        pass
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        status = 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status, headers, body


def https(method, path, headers=None, body=b"", source=ATTACKER):
    h = {"Host": "www.foobar.com", "Connection": "close"}
    h.update(headers or {})
    if body:
        h["Content-Length"] = str(len(body))
    raw = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return request(FLOAT_HTTPS, raw.encode() + body, source=source, tls=True)


def plain(port, raw, source=ATTACKER):
    return request(port, raw.encode(), source=source)


def admin(port, path="/status"):
    status, _, body = request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), source="127.0.0.1")
    return json.loads(body) if status == 200 else {}


def bystander(n=10):
    """How many of `n` HTTPS home-page requests from another address got 200."""
    good = 0
    for _ in range(n):
        try:
            status, _, _ = https("GET", "/", source=BYSTANDER)
            good += status == 200
        except OSError:
            pass
    return good


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_now(s):
    """Whether the server has closed `s` (EOF or reset), without waiting."""
    poller = select.poll()
    poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    if not poller.poll(0):
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def cookie_jar(headers, jar):
    for line in headers.get("set-cookie", []):
        name, _, rest = line.partition("=")
        jar[name] = rest.split(";", 1)[0]


def cookie_header(jar):
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def csrf_field(body):
    marker = b'name="csrf" value="'
    at = body.find(marker)
    if at < 0:
        return ""
    rest = body[at + len(marker):]
    return rest[: rest.find(b'"')].decode()


def form(fields):
    from urllib.parse import urlencode
    return urlencode(fields).encode()


def sign_up(username, password, source=ATTACKER):
    jar = {}
    _, h, body = https("GET", "/signup", source=source)
    cookie_jar(h, jar)
    token = csrf_field(body)
    status, h, _ = https(
        "POST", "/signup",
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie_header(jar)},
        form({"username": username, "password": password, "csrf": token}),
        source=source,
    )
    cookie_jar(h, jar)
    return status, jar


def api_login(username, password, source):
    body = json.dumps({"username": username, "password": password}).encode()
    started = time.monotonic()
    status, h, _ = https("POST", "/api/login", {"Content-Type": "application/json"}, body, source=source)
    return status, time.monotonic() - started, h


ROWS = []


def row(attack, did, served=None):
    served = bystander() if served is None else served
    ROWS.append((attack, did, f"yes ({served}/10)" if served == 10 else f"NO ({served}/10)"))
    print(f"  {attack}: {did}; bystander {served}/10", file=sys.stderr, flush=True)


def access_line(rid):
    path = os.path.join(STATE, "web1-access.log")
    for _ in range(50):
        for line in open(path, errors="replace"):
            if f"rid={rid}" in line:
                return line
        time.sleep(0.1)
    return ""


# ---------------------------------------------------------------------------------

def idle_sockets():
    socks = []
    for _ in range(3000):
        try:
            socks.append(connect(FLOAT_HTTP, timeout=2))
        except OSError:
            break
    time.sleep(1.0)
    closed = sum(closed_now(s) for s in socks)
    served = bystander()
    time.sleep(3.5)  # past `fall` health-check intervals
    lb = admin(LB1_ADMIN)
    up = all(s["up"] for s in lb.get("backend", {}).get("servers", []))
    role = lb.get("cluster", {}).get("role")
    for s in socks:
        s.close()
    row("3,000 idle sockets from one address",
        f"kept {len(socks) - closed}, closed {closed} at once; web1 {'up' if up else 'DOWN'}, lb1 {role}",
        served)


def heartbeat_garbage():
    pid = admin(LB1_ADMIN).get("pid")
    before = fds(pid)
    socks = []
    for i in range(200):
        try:
            s = connect(LB1_HEARTBEAT)
            s.sendall(os.urandom(64))
            if i % 2:  # half of them reset instead of closing
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            socks.append(s)
        except OSError:
            pass
    for s in socks:
        s.close()
    time.sleep(1.5)
    row("200 garbage heartbeat-link connections", f"lb1 descriptors {before} before, {fds(pid)} after")


def proxy_openers():
    pid = admin(WEB1_ADMIN).get("pid")
    cpu = cpu_seconds(pid)
    started = time.monotonic()
    socks = []
    for _ in range(1000):
        s = connect(WEB1_TLS)
        s.sendall(b"\r")
        socks.append(s)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(closed_now(s) for s in socks):
        time.sleep(0.05)
    took = time.monotonic() - started
    for s in socks:
        s.close()
    time.sleep(1)
    row("1,000 connections opening with '\\r' on web1's TLS port",
        f"all closed in {took:.2f} s, web1 CPU {cpu_seconds(pid) - cpu:.2f} s")


def forged_forwarding():
    plain(LB1, "GET /healthz HTTP/1.1\r\nHost: www.foobar.com\r\nX-Request-Id: abuse-xff\r\n"
               "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.7\r\nForwarded: for=6.6.6.8\r\n"
               "Connection: close\r\n\r\n")
    line = access_line("abuse-xff")
    plain(LB1, "GET /healthz HTTP/1.1\r\nHost: www.foobar.com\r\nX-Request-Id: abuse-conn\r\n"
               "Connection: close, X-Forwarded-For, X-Real-IP, Host\r\n\r\n")
    line2 = access_line("abuse-conn")
    row("forged X-Forwarded-For / X-Real-IP / Forwarded",
        f"web1 logged {line.split(' ', 1)[0] or '?'}")
    row("Connection: X-Forwarded-For, X-Real-IP, Host",
        f"web1 logged {line2.split(' ', 1)[0] or '?'}")


def malformed_heads():
    a, _, _ = plain(LB1, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    b, _, _ = plain(LB1, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n")
    c, _, _ = plain(LB1, "CONNECT www.foobar.com:443 HTTP/1.1\r\nHost: www.foobar.com:443\r\n\r\n")
    row("no Host / two Hosts / CONNECT", f"{a} / {b} / {c}")


def web_failures():
    servers = admin(WEB1_ADMIN).get("upstream", {}).get("servers", [])
    return sum(s.get("failures", 0) for s in servers)


def chunked_bodies(jar, token):
    before = web_failures()
    chunk = 64 * 1024
    pieces = [f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n" for _ in range(48)] + [b"0\r\n\r\n"]
    raw = ("POST /posts HTTP/1.1\r\nHost: www.foobar.com\r\nTransfer-Encoding: chunked\r\n"
           "Content-Type: application/x-www-form-urlencoded\r\n"
           f"Cookie: {cookie_header(jar)}\r\nConnection: close\r\n\r\n").encode()
    prefix = f"csrf={token}&body=".encode()
    raw += f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n"
    s413, _, body = request(FLOAT_HTTPS, raw, tls=True, body_chunks=pieces)
    echoed = b"xxxxxxxxxxxxxxxx" in body
    row("3 MB chunked POST /posts",
        f"{s413}, {'ECHOED' if echoed else 'not echoed'}, app1 blamed {web_failures() - before} times")
    before = web_failures()
    raw = ("POST /posts HTTP/1.1\r\nHost: www.foobar.com\r\nTransfer-Encoding: chunked\r\n"
           "Connection: close\r\n\r\n5\r\nhello\r\nZZZ\r\n\r\n").encode()
    s400, _, _ = request(FLOAT_HTTPS, raw, tls=True)
    row("malformed chunked body", f"{s400}, app1 blamed {web_failures() - before} times")


def forged_csrf(jar):
    forged = dict(jar)
    for name in list(forged):
        if name.endswith("csrf"):
            forged[name] = "made-up-value"
    status, _, _ = https(
        "POST", "/posts",
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie_header(forged)},
        form({"body": "forged", "csrf": "made-up-value"}),
    )
    row("forged CSRF pair (cookie and field)", f"{status}")


def password_guessing(user, password):
    statuses = {}
    retry_after = None
    for i in range(40):
        status, _, h = api_login(user, f"wrong-{i}", ATTACKER)
        statuses[status] = statuses.get(status, 0) + 1
        retry_after = retry_after or (h.get("retry-after") or [None])[0]
    real, _, _ = api_login(user, password, REAL_USER)
    row("40 wrong passwords for one account",
        ", ".join(f"{n}x {s}" for s, n in sorted(statuses.items()))
        + f", Retry-After {retry_after}; the real user from elsewhere: {real}")


def guessers_vs_user(user, password):
    quiet = [api_login(user, password, REAL_USER)[1] for _ in range(5)]
    stop = time.monotonic() + 8
    counts = {}
    lock = threading.Lock()

    def guess(k):
        victim = f"victim{k % 4}"
        i = 0
        while time.monotonic() < stop and i < 400:
            status, _, _ = api_login(victim, f"guess-{k}-{i}", f"127.0.1.{k + 1}")
            with lock:
                counts[status] = counts.get(status, 0) + 1
            i += 1

    threads = [threading.Thread(target=guess, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    time.sleep(1)
    busy = []
    while time.monotonic() < stop - 0.5:
        status, took, _ = api_login(user, password, REAL_USER)
        if status == 200:
            busy.append(took)
        time.sleep(0.2)
    for t in threads:
        t.join()
    row("16 parallel guessers (16 addresses)",
        f"real user's login {statistics.median(quiet) * 1000:.0f} ms quiet, "
        f"{statistics.median(busy) * 1000:.0f} ms median under attack ({len(busy)} logins); "
        + ", ".join(f"{n}x {s}" for s, n in sorted(counts.items())))


def huge_password():
    body = json.dumps({"username": "nobody", "password": "p" * (1536 * 1024)}).encode()
    started = time.monotonic()
    status, _, _ = https("POST", "/api/login", {"Content-Type": "application/json"}, body)
    row("1.5 MiB password", f"{status} in {(time.monotonic() - started) * 1000:.0f} ms")


def sneaky_text(jar, token):
    s1, _ = sign_up("evil\u202egnp", "long-enough-password")
    status, _, _ = https(
        "POST", "/posts",
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie_header(jar)},
        form({"body": "hi\u200bthere", "csrf": token}),
    )
    row("bidi override in a username / zero-width in a post", f"{s1} / {status}")


def slowloris():
    socks = []
    for _ in range(200):
        s = connect(FLOAT_HTTP)
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\n")
        socks.append(s)
    started = time.monotonic()
    served = bystander()
    # Each head is left unfinished: the load balancer's head timeout (30 s) ends it.
    answers = {}
    for s in socks:
        s.settimeout(max(0.1, 40 - (time.monotonic() - started)))
        try:
            first = s.recv(64).split(b"\r\n", 1)[0].decode("latin-1") or "closed"
        except OSError as e:
            first = type(e).__name__
        answers[first] = answers.get(first, 0) + 1
        s.close()
    took = time.monotonic() - started
    row("200 slow request heads",
        ", ".join(f"{n}x {a}" for a, n in sorted(answers.items())) + f" within {took:.0f} s",
        served)


def main():
    print(f"abuse: attacking the site on 127.0.0.1:{BASE} from {ATTACKER}", file=sys.stderr)
    password = "correct horse battery staple"
    user = f"real{int(time.time()) % 100000}"
    status, jar = sign_up(user, password, source=REAL_USER)
    assert status in (200, 303), f"sign-up failed: {status}"
    for k in range(4):
        sign_up(f"victim{k}", password, source=REAL_USER)
    _, h, body = https("GET", "/", {"Cookie": cookie_header(jar)}, source=REAL_USER)
    token = csrf_field(body)

    idle_sockets()
    heartbeat_garbage()
    proxy_openers()
    forged_forwarding()
    malformed_heads()
    chunked_bodies(jar, token)
    forged_csrf(jar)
    password_guessing(user, password)
    guessers_vs_user(user, password)
    huge_password()
    sneaky_text(jar, token)
    slowloris()

    w = max(len(r[0]) for r in ROWS)
    print(f"| {'attack':<{w}} | what the site did | others served |")
    print(f"| {'-' * w} | --- | --- |")
    for attack, did, served in ROWS:
        print(f"| {attack:<{w}} | {did} | {served} |")


if __name__ == "__main__":
    main()
