#!/usr/bin/env python3
"""Side-by-side Markdown tables of CKKS primitive timings: hecnn vs peers.

Reads JSON lines (files given as arguments, "-" or no argument = stdin) with
the schema written by tenseal_ops.py / orion_ops.py and by hecnn's own
benchmark ("library": "hecnn"):

  {"library", "op", "log_n", "log_qp", "q_limbs", "p_limbs", "dnum",
   "threads", "ms", "min_ms", "reps"}

Lines that are not JSON objects with at least library/op/log_n/threads/ms are
skipped (so raw command output can be piped in). For each (log_n, threads)
it prints one table:

  op | hecnn ms | <peer> ms | hecnn/<peer> | ...

matching records by op, log_n and threads. A ratio below 1 means hecnn is
faster. A ratio marked with † compares rows whose log_qp differ; the
parameters of every library are listed under each table. When one library has
several records for the same (op, log_n, threads), the last one read wins.
Standard library only; never fails on missing peers or ops.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict

OP_ORDER = ("mul_relin", "rescale", "rotate", "hoisted_rotate8", "encrypt", "decrypt")
REQUIRED = ("library", "op", "log_n", "threads", "ms")


def _lines(path: str):
    if path == "-":
        yield from sys.stdin
        return
    try:
        with open(path, encoding="utf-8") as fh:
            yield from fh
    except OSError as exc:
        print(f"compare.py: cannot read {path}: {exc}", file=sys.stderr)


def read_records(paths: list[str]) -> list[dict]:
    records: list[dict] = []
    for path in paths or ["-"]:
        for lineno, line in enumerate(_lines(path), 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"compare.py: {path}:{lineno}: not JSON, skipped", file=sys.stderr)
                continue
            if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
                print(f"compare.py: {path}:{lineno}: missing fields, skipped", file=sys.stderr)
                continue
            try:
                rec["log_n"] = int(rec["log_n"])
                rec["threads"] = int(rec["threads"])
                rec["ms"] = float(rec["ms"])
            except (TypeError, ValueError):
                print(f"compare.py: {path}:{lineno}: bad numbers, skipped", file=sys.stderr)
                continue
            records.append(rec)
    return records


def fmt_ms(ms) -> str:
    if ms is None:
        return "–"
    if ms >= 100:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def params_of(rec: dict) -> str:
    parts = []
    for key, label in (("log_qp", "logQP"), ("q_limbs", "|Q|"), ("p_limbs", "|P|"), ("dnum", "dnum")):
        if rec.get(key) is not None:
            parts.append(f"{label}={rec[key]}")
    return ", ".join(parts) if parts else "parameters not recorded"


def render(records: list[dict], baseline: str) -> str:
    # (log_n, threads) -> library -> op -> record (last wins)
    groups: dict[tuple[int, int], OrderedDict] = {}
    libraries: list[str] = []
    for rec in records:
        lib = str(rec["library"])
        if lib not in libraries:
            libraries.append(lib)
        groups.setdefault((rec["log_n"], rec["threads"]), OrderedDict()).setdefault(lib, {})[
            str(rec["op"])
        ] = rec

    if not groups:
        return "_No benchmark records found._\n"

    peers = [lib for lib in libraries if lib != baseline]
    out: list[str] = []
    for (log_n, threads) in sorted(groups):
        by_lib = groups[(log_n, threads)]
        ops_seen = {op for recs in by_lib.values() for op in recs}
        ops = [op for op in OP_ORDER if op in ops_seen] + sorted(ops_seen - set(OP_ORDER))
        base = by_lib.get(baseline, {})

        out.append(f"### logN = {log_n}, threads = {threads}")
        out.append("")
        header = ["op", f"{baseline} ms"]
        for peer in peers:
            header += [f"{peer} ms", f"{baseline}/{peer}"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")

        mismatch = False
        for op in ops:
            b = base.get(op)
            row = [op, fmt_ms(b["ms"] if b else None)]
            for peer in peers:
                p = by_lib.get(peer, {}).get(op)
                row.append(fmt_ms(p["ms"] if p else None))
                if b and p and p["ms"] > 0:
                    ratio = f"{b['ms'] / p['ms']:.2f}"
                    if b.get("log_qp") != p.get("log_qp"):
                        ratio += " †"
                        mismatch = True
                    row.append(ratio)
                else:
                    row.append("–")
            out.append("| " + " | ".join(row) + " |")

        out.append("")
        for lib in [baseline] + peers:
            recs = by_lib.get(lib)
            if not recs:
                out.append(f"- {lib}: no records")
                continue
            distinct = OrderedDict()
            for rec in recs.values():
                distinct.setdefault(params_of(rec), []).append(str(rec["op"]))
            if len(distinct) == 1:
                out.append(f"- {lib}: {next(iter(distinct))}")
            else:
                desc = "; ".join(f"{k} ({', '.join(v)})" for k, v in distinct.items())
                out.append(f"- {lib}: {desc}")
        if mismatch:
            out.append(f"- † log_qp differs between the {baseline} row and the peer row.")
        out.append("")
    out.append(f"Ratios are {baseline} ms / peer ms (median of reps): below 1 means {baseline} is faster.")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="JSON-lines files ('-' or none = stdin)")
    ap.add_argument("--baseline", default="hecnn", help="library the ratios are taken for")
    args = ap.parse_args()
    sys.stdout.write(render(read_records(args.files), args.baseline))


if __name__ == "__main__":
    main()
