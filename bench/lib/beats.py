#!/usr/bin/env python3
"""Counts cluster heartbeat packets seen on one interface for a while.

Run inside a load balancer's namespace (it sees what its peer sends it and what it
sends): `beats.py IFACE SECONDS HB_PORT`. Counts, per source IP, VRRP packets (IP
protocol 112) and packets to or from the heartbeat port (UDP and TCP separately),
and prints one JSON line of packets per second. Bounded by SECONDS.
"""

import json
import socket
import struct
import sys
import time


def main():
    iface, seconds, port = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    s.settimeout(0.2)
    counts = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame = s.recv(2048)
        except socket.timeout:
            continue
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src = socket.inet_ntoa(ip[12:16])
        kind = None
        if proto == 112:
            kind = "vrrp"
        elif proto in (6, 17) and len(ip) >= ihl + 4:
            sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
            if port in (sport, dport):
                kind = "udp" if proto == 17 else "tcp"
        if kind:
            key = f"{src} {kind}"
            counts[key] = counts.get(key, 0) + 1
    print(json.dumps({k: round(v / seconds, 1) for k, v in sorted(counts.items())}))


if __name__ == "__main__":
    main()
