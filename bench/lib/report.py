#!/usr/bin/env python3
"""Prints bench/failover's table from its results file (one JSON object a line)."""

import json
import statistics
import sys

STACKS = [("ours", "ours"), ("kd", "keepalived default"), ("kf", "keepalived fastest")]
SCENARIOS = [
    ("kill", "SIGKILL active LB"),
    ("link", "link down (host gone)"),
    ("term", "graceful stop (SIGTERM)"),
]


def med(values):
    return statistics.median(values) if values else None


def drill_line(r):
    print(
        f"  {r['stack']:<4} {r['scenario']:<4} #{r['drill']}: gap {r['gap_ms']:7.1f} ms, "
        f"failed {r['failed']:5}/{r['sent']:<5} recovered={r['recovered']} "
        f"arp->{r['arp']} vip on [{r['holder']}] {r['kinds']}"
    )


def main():
    if sys.argv[1] == "--line":
        return drill_line(json.loads(sys.argv[2]))
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    by = {}
    for r in rows:
        by.setdefault((r["stack"], r["scenario"]), []).append(r)
    stacks = [s for s in STACKS if any(k[0] == s[0] for k in by)]
    scenarios = [s for s in SCENARIOS if any(k[1] == s[0] for k in by)]

    def cell(stack, scenario):
        runs = by.get((stack, scenario), [])
        if not runs:
            return "-", None
        gap = med([r["gap_ms"] for r in runs])
        failed = med([r["failed"] for r in runs])
        unrec = sum(1 for r in runs if not r["recovered"])
        text = f"{gap:8.1f} ms /{failed:6.0f}"
        if unrec:
            text += f" ({unrec} unrecovered)"
        return text, gap

    def ratio(a, b):
        if a is None or b is None:
            return "-"
        if b == 0:
            return "inf" if a > 0 else "1"
        return f"{a / b:.1f}x"

    n = min(len(v) for v in by.values())
    print(f"\nFailover: median over {n}+ drills of  gap (ms) / failed requests")
    print("  gap: last good answer before the first failure -> first good answer after the last failure")
    head = f"{'scenario':<26}" + "".join(f"{name:>26}" for _, name in stacks)
    ours_present = stacks and stacks[0][0] == "ours"
    others = [s for s in stacks if s[0] != "ours"]
    if ours_present:
        head += "".join(f"{('gap ' + k + '/ours'):>14}" for k, _ in others)
    print(head)
    print("-" * len(head))
    for key, title in scenarios:
        cells = [cell(s, key) for s, _ in stacks]
        line = f"{title:<26}" + "".join(f"{c[0]:>26}" for c in cells)
        if ours_present:
            ours_gap = cells[0][1]
            line += "".join(f"{ratio(cell(s, key)[1], ours_gap):>14}" for s, _ in others)
        print(line)

    print("\nPer drill (gap ms / failed, where the client's ARP entry for the VIP pointed after the drill):")
    for s, name in stacks:
        for key, title in scenarios:
            runs = by.get((s, key), [])
            if runs:
                detail = "  ".join(f"{r['gap_ms']:.0f}/{r['failed']}@{r['arp']}" for r in runs)
                print(f"  {name:<19} {key:<5} {detail}")
    kinds = {}
    for r in rows:
        for k, v in r.get("kinds", {}).items():
            kinds.setdefault((r["stack"], r["scenario"]), {}).setdefault(k, 0)
            kinds[(r["stack"], r["scenario"])][k] += v
    print("\nFailure kinds (summed over drills):")
    for (s, key), ks in sorted(kinds.items()):
        print(f"  {s:<4} {key:<5} " + ", ".join(f"{v} {k}" for k, v in sorted(ks.items())))


if __name__ == "__main__":
    main()
