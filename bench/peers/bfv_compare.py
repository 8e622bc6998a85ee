#!/usr/bin/env python3
"""Reads BFV benchmark JSON lines (files or stdin; other lines are ignored) and
prints one Markdown table per (log_n, threads): op | hecnn | each peer |
hecnn / fastest peer. Standard library only.

Where a library has several variants of an op (hecnn and SEAL mul_plain), the
fastest variant is used and named in a footnote. Peers whose records say
"threads_applied": false run single-threaded whatever --threads says: their
column header says so.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict

OPS = ("encrypt", "decrypt", "mul_plain", "mul_relin", "rotate")
LABEL = {
    "encrypt": "encrypt (pk)",
    "decrypt": "decrypt",
    "mul_plain": "ct × pt",
    "mul_relin": "mul+relin",
    "rotate": "rotate rows 1",
}


def load(paths):
    recs = []
    streams = [open(p, encoding="utf-8") for p in paths] if paths else [sys.stdin]
    for fh in streams:
        for line in fh:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "ms" in r and r.get("op") in OPS:
                recs.append(r)
    return recs


def fmt(ms):
    return "–" if ms is None else (f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}")


def main() -> None:
    recs = load(sys.argv[1:])
    groups = OrderedDict()
    for r in recs:
        groups.setdefault((r["log_n"], r["threads"]), []).append(r)
    for (log_n, threads), rs in sorted(groups.items()):
        libs = list(OrderedDict.fromkeys(r["library"] for r in rs))
        if "hecnn" in libs:
            libs.remove("hecnn")
            libs.insert(0, "hecnn")
        peers = [l for l in libs if l != "hecnn"]
        best = {}  # (lib, op) -> record with the smallest median
        for r in rs:
            k = (r["library"], r["op"])
            if k not in best or r["ms"] < best[k]["ms"]:
                best[k] = r
        variants = {r["variant"] for r in rs if r.get("variant")}
        notes = []

        def head(lib):
            r0 = next(r for r in rs if r["library"] == lib)
            h = f"{lib} ms"
            if not r0.get("threads_applied", True) and threads > 1:
                h += " (1 thread: no thread control)"
            return h

        print(f"\n### log N = {log_n}, threads = {threads}\n")
        print("| op | " + " | ".join(head(l) for l in libs) + " | hecnn / fastest peer |")
        print("|---|" + "---:|" * (len(libs) + 1))
        for op in OPS:
            cells, peer_ms = [], []
            for lib in libs:
                r = best.get((lib, op))
                cell = fmt(r["ms"] if r else None)
                n_var = len({x.get("variant") for x in rs if x["library"] == lib and x["op"] == op})
                if r and n_var > 1:
                    cell += f" ({r.get('variant')})"
                cells.append(cell)
                if r and lib != "hecnn":
                    peer_ms.append(r["ms"])
            h = best.get(("hecnn", op))
            ratio = f"**{h['ms'] / min(peer_ms):.2f}**" if h and peer_ms else "–"
            print(f"| {LABEL[op]} | " + " | ".join(cells) + f" | {ratio} |")
        print()
        for lib in libs:
            r0 = next(r for r in rs if r["library"] == lib)
            extra = f", log QP {r0['log_qp']}, dnum {r0['dnum']}" if "log_qp" in r0 else ""
            pl = r0.get("p_limbs")
            pl = "P chosen by the library" if pl is None else f"{pl} special primes"
            if "depth" in r0:
                extra += f", depth {r0['depth']}"
            print(
                f"- {lib}: log Q {r0.get('log_q')} ({r0.get('q_limbs')} primes), "
                f"{pl}{extra}, t = {r0.get('t')}, "
                f"reps {r0.get('reps')}, threads applied: {r0.get('threads_applied')}"
            )
        del variants, notes, peers


if __name__ == "__main__":
    main()
