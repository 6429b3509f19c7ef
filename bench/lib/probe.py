#!/usr/bin/env python3
"""Failover probe for bench/failover: a bounded request stream with one action.

Run inside the client namespace. CLIENTS threads each open a fresh TCP connection
per request to HOST:PORT, send `GET PATH` (Connection: close) and count the request
as good when a `HTTP/1.x 200` status line arrives within the timeouts. Each client
sends at most one request every PERIOD seconds (missed slots are skipped, never
caught up), so the failed-request count is comparable across stacks: a refused
connection (RST) and a timed-out one both cost one slot.

At AT seconds after the start, ACTION runs with `sh -c` (stopping a load balancer,
cutting a link). The stream stops after DURATION seconds or MAX requests,
whichever comes first.

It prints one JSON line:
  gap_ms     from the completion of the last good request before the first failure
             to the completion of the first good request after the last failure
             (0 when nothing failed; to the end of the stream if nothing recovered)
  failed     failed requests;  sent: all requests
  recovered  whether a good request followed the last failure
  first_fail_ms / recover_ms   relative to the action
  kinds      failure reasons and counts
"""

import json
import socket
import subprocess
import sys
import threading
import time


def main():
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    host = args["host"]
    port = int(args.get("port", "80"))
    path = args.get("path", "/healthz")
    clients = int(args.get("clients", "4"))
    period = float(args.get("period", "0.004"))
    connect_timeout = float(args.get("connect_timeout", "0.1"))
    read_timeout = float(args.get("read_timeout", "0.3"))
    at = float(args.get("at", "0.5"))
    duration = float(args.get("duration", "3"))
    max_requests = int(args.get("max", "100000"))
    action = args.get("action", "")

    request = (
        f"GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n"
    ).encode()
    shots = []  # (t_start, t_end, ok, reason)
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + duration

    def one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            s.settimeout(connect_timeout)
            try:
                s.connect((host, port))
            except socket.timeout:
                return "connect timeout"
            except ConnectionRefusedError:
                return "refused"
            except OSError as e:
                return f"connect {e.strerror or e}"
            s.settimeout(read_timeout)
            try:
                s.sendall(request)
                data = b""
                while b"\r\n" not in data and len(data) < 4096:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except socket.timeout:
                return "read timeout"
            except ConnectionResetError:
                return "reset"
            except OSError as e:
                return f"read {e.strerror or e}"
            line = data.split(b"\r\n", 1)[0]
            if line.startswith(b"HTTP/1.") and line[9:12] == b"200":
                return None
            return "status " + (line[9:12].decode(errors="replace") or "none")
        finally:
            s.close()

    def client(k):
        next_slot = start + k * period / clients
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if now < next_slot:
                time.sleep(next_slot - now)
            with lock:
                if len(shots) >= max_requests:
                    return
            t0 = time.monotonic()
            reason = one()
            t1 = time.monotonic()
            with lock:
                shots.append((t0, t1, reason is None, reason))
            next_slot = max(next_slot + period, t1)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start + at - time.monotonic()))
    acted = time.monotonic()
    action_rc = None
    if action:
        action_rc = subprocess.call(["sh", "-c", action])
    action_done = time.monotonic()
    for t in threads:
        t.join(timeout=duration + 5)
    end = time.monotonic()

    with lock:
        shots.sort(key=lambda s: s[1])
        fails = [s for s in shots if not s[2]]
        kinds = {}
        for s in fails:
            kinds[s[3]] = kinds.get(s[3], 0) + 1
        out = {
            "sent": len(shots),
            "failed": len(fails),
            "ok_before": sum(1 for s in shots if s[2] and s[1] < acted),
            "kinds": kinds,
            "action_rc": action_rc,
            "action_ms": round((action_done - acted) * 1e3, 1),
        }
        if not fails:
            out.update(gap_ms=0.0, recovered=True)
        else:
            first_fail, last_fail = fails[0], fails[-1]
            before = [s for s in shots if s[2] and s[1] <= first_fail[1]]
            after = [s for s in shots if s[2] and s[1] > last_fail[1]]
            t_before = before[-1][1] if before else start
            t_after = after[0][1] if after else end
            out.update(
                gap_ms=round((t_after - t_before) * 1e3, 1),
                recovered=bool(after),
                first_fail_ms=round((first_fail[1] - acted) * 1e3, 1),
                recover_ms=round((t_after - acted) * 1e3, 1),
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
