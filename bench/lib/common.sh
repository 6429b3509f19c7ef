# What the bench scripts share; sourced, never run. Every figure a script prints as
# a comparison goes through `row`, which also appends it to $BENCH_ROWS when set, so
# `bench/compare` can print every script's rows as one table.

export PATH="$PATH:/usr/sbin"

# Installs the Debian packages behind the commands named: need CMD:PKG...
need() {
  local pair cmd pkg updated=""
  for pair in "$@"; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null; then
      echo "bench: installing $pkg" >&2
      [ -n "$updated" ] || { apt-get update -qq; updated=1; }
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    fi
  done
}

# The median of a space-separated list of numbers.
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# ours / peer, two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# row FIGURE PEER SCALEUP [RATIO]: prints one comparison; the ratio is scaleup/peer
# unless given (for figures where lower is better it is still scaleup/peer: read the
# figure's name).
row() {
  local r=${4:-$(ratio "$3" "$2")}
  printf '%-56s %12s %12s %8s\n' "$1" "$2" "$3" "$r"
  if [ -n "${BENCH_ROWS:-}" ]; then printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$r" >> "$BENCH_ROWS"; fi
}

row_header() { printf '\n%-56s %12s %12s %8s\n' "$1" "peer" "scaleup" "ratio"; }

# The machine, for tables.
machine() { echo "$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"; }

# wrk -> "req/s p99_ms"
wrk_rps_p99() {
  wrk "$@" --latency | awk '
    /^Requests\/sec/ {r=$2}
    $1 == "99%" {v=$2; if (v ~ /us$/) {sub("us","",v); v=v/1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v=v*1000}; p=v}
    END {print r, p}'
}

# Waits (bounded) until URL answers.
wait_up() {
  for _ in $(seq 1 200); do
    curl -kfsS -m 2 -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: $1 never answered" >&2; return 1
}

# Peak RSS in KiB summed over PIDs.
peak_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmHWM/ {print $2}' "/proc/$p/status"))); done; echo $t; }
