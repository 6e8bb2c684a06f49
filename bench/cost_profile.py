#!/usr/bin/env python3
"""Where a process's CPU goes, by category: reads `perf report --stdio` output (flat profile,
one line per symbol: overhead, shared object, symbol) and sums the overhead of each symbol into
a category by its name (crate paths of demangled Rust symbols, the kernel's functions).
Usage: perf report -i perf.data --stdio --no-children --sort dso,sym | bench/cost_profile.py [ms per round]
With the CPU milliseconds per round, each category's share is also given in ms per round."""
import re
import sys

# First match wins: (category, pattern over the symbol, kernel's or not).
CATEGORIES = [
    ("kernel: TCP/IP and sockets", r"tcp|inet|^ip_|__ip|sock|skb|^net_|netif|napi|loopback|__dev_|dev_hard|udp|^sk_|nf_|__local_bh|do_softirq|__softirqentry|ipv4|ipv6", True),
    ("kernel: epoll, futex, scheduler, locks", r"epoll|^ep_|futex|schedul|sched|wake|enqueue|dequeue|pick_next|__switch|switch_|finish_task|update_curr|update_load|hrtimer|timerfd|clock|ktime|select_task|idle|rcu|spin|mutex|lock", True),
    ("kernel: syscalls, copies, other", r".", True),
    ("allocation (jemalloc, malloc)", r"_rjem_|jemalloc|^je_|^malloc|^free$|^realloc|^calloc|sdallocx|mallocx|rallocx|tcache|arena_|edata|extent_|^cfree", False),
    ("memcpy/memmove/memset", r"memcpy|memmove|memset|memcmp|bcmp", False),
    ("TLS to PostgreSQL (rustls, ring)", r"rustls|ring::|ring_core|aes_|gcm_|chacha|poly1305|x25519|sha256_block|sha512_block", False),
    ("HTTP/2 frames and HPACK (h2)", r"^h2::|<h2::", False),
    ("HTTP (hyper, http, http-body)", r"hyper|http::|http_body|axum|httparse", False),
    ("protobuf encode/decode (prost)", r"prost|encoded_len|encode_raw|merge_field", False),
    ("gRPC (tonic, tower)", r"tonic|tower", False),
    ("database client (sqlx, sea-orm)", r"sqlx|sea_orm|sea_query", False),
    ("Redis client (fred)", r"fred::|redis_protocol", False),
    ("tracing and logs", r"tracing|opentelemetry|\blog::", False),
    ("metrics", r"metrics", False),
    ("L1 caches (moka)", r"moka|crossbeam|quanta", False),
    ("JSON (serde_json)", r"serde_json", False),
    ("hashing and digests", r"sha2|hashbrown|siphash|ahash|foldhash|xxhash|Hasher|hash_one", False),
    ("async runtime (tokio, futures)", r"tokio|futures|parking_lot|std::sync|std::thread|mio::", False),
    ("bytes buffers", r"bytes::", False),
    ("Boardroom's own code", r"boardroom", False),
    ("uuid, chrono, time", r"uuid|chrono|time::", False),
    ("other (libc, future glue, small crates)", r".", False),
]


def main():
    per_round = float(sys.argv[1]) if len(sys.argv) > 1 else None
    totals = {}
    top = {}
    for line in sys.stdin:
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$", line)
        if not m:
            continue
        share, level, symbol = float(m.group(1)), m.group(3), m.group(4).strip()
        kernel = level == "k"
        for name, pattern, in_kernel in CATEGORIES:
            if in_kernel == kernel and re.search(pattern, symbol):
                totals[name] = totals.get(name, 0.0) + share
                top.setdefault(name, []).append((share, symbol[:90]))
                break
    print("| category | share of the process's CPU |" + (" ms per round |" if per_round else "") + " largest symbols |")
    print("|---|---|" + ("---|" if per_round else "") + "---|")
    for name, share in sorted(totals.items(), key=lambda kv: -kv[1]):
        if share < 0.05:
            continue
        biggest = ", ".join(f"`{s}` {p:.1f} %" for p, s in sorted(top[name], reverse=True)[:2])
        ms = f" {share / 100 * per_round:.2f} |" if per_round else ""
        print(f"| {name} | {share:.1f} % |{ms} {biggest} |")


main()
