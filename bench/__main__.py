"""`make bench`: every benchmark in its own process, then one table of medians.

Figures are medians of many runs; ratios compare runs made side by side in one process.
"""

import json
import os
import platform
import subprocess
import sys
from datetime import date

from bench.common import ROOT

RUNS = [
    ("bench.tracking", []),
    ("bench.ledger", ["sqlite"]),
    ("bench.ledger", ["postgres"]),
    ("bench.dashboard", []),
    ("bench.throughput", []),
    ("bench.streams", ["64"]),
    ("bench.streams", ["256"]),
]


def run(module, args) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if result.returncode or not lines:
        return {"bench": module, "error": (result.stderr or result.stdout).strip()[-300:]}
    return json.loads(lines[-1][6:])


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    results = []
    for module, args in RUNS:
        print(f"running {module} {' '.join(args)}...", file=sys.stderr, flush=True)
        results.append(run(module, args))
    by = {(r["bench"], r.get("db"), r.get("streams")): r for r in results}
    rows = []
    t = by.get(("tracking", "sqlite", None), {})
    if "overhead_ms" in t:
        rows.append(
            (
                "Tracking overhead per chat call (SQLite, demo transport)",
                f"bare {t['bare_ms']} ms ({t['bare_min_ms']}–{t['bare_max_ms']}) · "
                f"tracked {t['tracked_ms']} ms ({t['tracked_min_ms']}–{t['tracked_max_ms']}), "
                f"n={t['tracked_n']} each · **+{t['overhead_ms']} ms**",
                "≤ 2 ms",
            )
        )
    for db in ("sqlite", "postgres"):
        r = by.get(("ledger", db, None), {})
        if "reserve_settle_ms" in r:
            rows.append(
                (
                    f"reserve + settle per call ({db})",
                    f"{r['reserve_settle_ms']} ms ({r['min_ms']}–{r['max_ms']}, n={r['n']})",
                    "",
                )
            )
    d = by.get(("dashboard", "sqlite", None), {})
    if "ratio" in d:
        rows.append(
            (
                "/usage/ render, 10^4 vs 10^6 ledger rows (SQLite)",
                f"{d['ms_1e4']} ms vs {d['ms_1e6']} ms · ratio **{d['ratio']}** · "
                f"{d['queries_1e4']} vs {d['queries_1e6']} SQL queries",
                "ratio ≤ 1.5",
            )
        )
    g = by.get(("throughput", "postgres", None), {})
    if "rps" in g:
        rows.append(
            (
                f"Chat requests/s, production command (2 workers, PostgreSQL, {g['clients']} "
                "clients)",
                f"**{g['rps']}/s** ({g['ok']} answered, {g['non_200']} not 200)",
                "",
            )
        )
    for n in (64, 256):
        r = by.get(("streams", "postgres", n), {})
        if "p95_ratio" in r:
            rows.append(
                (
                    f"{n} streams at once (30 chunks over 3 s each), production command",
                    f"p95 {r['p95_s']} s vs lone {r['lone_s']} s: **{r['p95_ratio']}x** · "
                    f"first word p95 {r['first_word_p95_s']} s · model saw "
                    f"{r['model_most_at_once']} at once · ≤ {r['most_pg_connections']} "
                    f"PostgreSQL connections · /healthz ≤ {r['healthz_worst_s']} s · "
                    f"{r['done']}/{n} done",
                    "≤ 1.5x at 256",
                )
            )
    print(
        f"\nBenchmarks, {date.today().isoformat()}, {os.cpu_count()} cores, {cpu()}, "
        f"Python {platform.python_version()}\n"
    )
    print("| measure | median (min–max, n) | target |")
    print("|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")
    failures = [r for r in results if "error" in r]
    for failure in failures:
        print(f"\n{failure['bench']} failed: {failure['error']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
