"""Summarises bench/run's rounds: per scale, each contender's median time,
its ratio to pgcopydb and to the floor, godwit's phases and peak RSS, and
across scales how godwit's time and memory grow with the data."""
import json
import statistics
import sys

results, out, dataset, jobs, pgcopydb_version, verification = sys.argv[1:7]
rows = []
for line in open(results):
    scale, size, rnd, contender, seconds, extra = line.rstrip("\n").split("\t")
    rows.append({"scale": int(scale), "bytes": int(size), "round": int(rnd), "contender": contender,
                 "seconds": None if seconds == "failed" else float(seconds), "extra": extra})

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

print(f"dataset {dataset}, parallelism {jobs}, {pgcopydb_version}")
summary = []
for scale in sorted({r["scale"] for r in rows}):
    at = [r for r in rows if r["scale"] == scale]
    size = at[0]["bytes"]
    names = list(dict.fromkeys(r["contender"] for r in at))
    med = {n: median([r["seconds"] for r in at if r["contender"] == n]) for n in names}
    rounds = max(r["round"] for r in at)
    print(f"\nscale {scale}: {size / 2**20:.0f} MiB, median of {rounds} rounds")
    print(f"{'contender':<15} {'median s':>9} {'MiB/s':>7} {'vs pgcopydb':>12} {'vs floor':>9}  rounds")
    for n in names:
        s = med[n]
        each = " ".join("failed" if r["seconds"] is None else f"{r['seconds']:.2f}"
                        for r in at if r["contender"] == n)
        def ratio(base):
            return s / med[base] if s and med.get(base) else None
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"
        print(f"{n:<15} {fmt(s, '9.2f'):>9} {fmt(size / 2**20 / s if s else None, '7.1f'):>7} "
              f"{fmt(ratio('pgcopydb'), '12.2f'):>12} {fmt(ratio('floor'), '9.2f'):>9}  {each}")
    if med.get("godwit") and med.get("godwit+traces"):
        print(f"tracing and OTLP export cost: godwit+traces / godwit = {med['godwit+traces'] / med['godwit']:.3f}")
    godwit = [r for r in at if r["contender"] == "godwit" and r["seconds"] is not None]
    rss = None
    if godwit:
        mid = sorted(godwit, key=lambda r: r["seconds"])[len(godwit) // 2]
        parts = [p for p in mid["extra"].split("|") if p]
        rss = max(int(p.split("=")[1]) for r in godwit for p in r["extra"].split("|") if p.startswith("rss_kib="))
        print(f"godwit peak RSS {rss / 1024:.0f} MiB; its median round:")
        for p in parts:
            if not p.startswith("rss_kib="):
                print("  " + p)
    summary.append({"scale": scale, "bytes": size, "median_seconds": med, "godwit_peak_rss_kib": rss,
                    "ratios_to_pgcopydb": {n: (med[n] / med["pgcopydb"] if med[n] and med.get("pgcopydb") else None) for n in names},
                    "ratios_to_floor": {n: (med[n] / med["floor"] if med[n] and med.get("floor") else None) for n in names}})

if len(summary) > 1:
    first, last = summary[0], summary[-1]
    size_ratio = last["bytes"] / first["bytes"]
    print(f"\nscaling {first['scale']} -> {last['scale']}: size x{size_ratio:.2f}")
    for n in first["median_seconds"]:
        a, b = first["median_seconds"][n], last["median_seconds"].get(n)
        if a and b:
            print(f"  {n:<15} time x{b / a:.2f} ({(b / a) / size_ratio:.2f} of the size ratio)")
    if first["godwit_peak_rss_kib"] and last["godwit_peak_rss_kib"]:
        print(f"  godwit peak RSS {first['godwit_peak_rss_kib'] / 1024:.0f} -> {last['godwit_peak_rss_kib'] / 1024:.0f} MiB")

document = {"dataset": dataset, "parallelism": int(jobs), "pgcopydb_version": pgcopydb_version,
            "rounds": rows, "summary": summary}
if verification:
    document["verification"] = json.loads(verification)
    print(f"\ngodwit verify on its copy: {verification}")
json.dump(document, open(out, "w"), indent=2)
print(f"results written to {out}")
