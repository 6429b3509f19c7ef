#!/usr/bin/env python3
"""Memory per idle keep-alive client connection of a server.

Usage: idle.py PORT COUNT PID [PID ...]

Opens COUNT connections to 127.0.0.1:PORT, each from a loopback source address of
its own (127.0.X.Y, 200 to a /24: as many clients, under any per-client cap, each
counted in a server's per-address table if it keeps one), sends one `GET /healthz`
on each and reads its answer, keeps them all open and idle, and prints one line: the
summed resident memory of PIDs before and after, and the difference per connection
in KiB. Bounded: COUNT connections, one request each; everything is closed at exit.
"""

import socket
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
    return total


def main():
    port, count, pids = int(sys.argv[1]), int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    request = b"GET /healthz HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n"
    before = rss_kib(pids)
    socks = []
    for i in range(count):
        s = socket.socket()
        s.bind((f"127.0.{1 + i // 200}.{2 + i % 200}", 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            more = s.recv(4096)
            if not more:
                raise SystemExit(f"connection {i} closed before its answer")
            data += more
        socks.append(s)
    time.sleep(1)
    after = rss_kib(pids)
    print(f"{before} {after} {(after - before) / count:.2f}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
