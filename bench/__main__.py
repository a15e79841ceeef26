"""`make bench`: every benchmark in its own process, then one table.

Each figure is a median with its min, max and n; a ratio or difference compares runs made
side by side in one process, interleaved one by one.
"""

import json
import os
import platform
import subprocess
import sys
from datetime import date

from bench.common import ROOT

RUNS = [
    ("bench.tracking", ["call", "sqlite"]),
    ("bench.tracking", ["request", "sqlite"]),
    ("bench.tracking", ["request", "postgres"]),
    ("bench.ledger", ["sqlite"]),
    ("bench.ledger", ["postgres"]),
    ("bench.dashboard", []),
    ("bench.throughput", []),
    ("bench.throughput", ["no-preload"]),
    ("bench.streams", ["64"]),
    ("bench.streams", ["256"]),
    ("bench.turn_cpu", []),
    ("bench.sdk_floor", []),
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


def spread(r: dict, prefix: str = "") -> str:
    """median ms (min–max, n) from a spread_ms() group."""
    return (
        f"{r[prefix + 'ms']} ms ({r[prefix + 'min_ms']}–{r[prefix + 'max_ms']}, "
        f"n={r[prefix + 'n']})"
    )


def rows(by: dict) -> list[tuple[str, str, str]]:
    table = []
    t = by.get(("tracking", "sqlite", "call"))
    if t:
        table.append(
            (
                "Tracking per chat call, SQLite: reserve + wrapped call + settle vs bare client",
                f"bare {spread(t, 'bare_')} · tracked {spread(t, 'tracked_')} · "
                f"**+{t['overhead_ms']} ms**",
                "≤ +1.0 ms",
            )
        )
    for db, target in (("sqlite", ""), ("postgres", "≤ +2.0 ms")):
        t = by.get(("tracking", db, "request"))
        if t:
            table.append(
                (
                    f"Tracking per non-streamed chat request (POST /api/chat/), {db}: ledger "
                    "and capture on vs off",
                    f"off {spread(t, 'bare_')} · on {spread(t, 'tracked_')} · "
                    f"**+{t['overhead_ms']} ms**",
                    target,
                )
            )
    for db in ("sqlite", "postgres"):
        r = by.get(("ledger", db, None))
        if r:
            table.append(
                (
                    f"reserve + settle per call, {db}",
                    f"with a budget (alerts watching) **{spread(r, 'alerting_')}** · no cap "
                    f"{spread(r, 'uncapped_')} · one round trip {spread(r, 'round_trip_')}",
                    "≤ 1.5 ms on PostgreSQL" if db == "postgres" else "",
                )
            )
    outbox = [(db, by.get(("ledger", db, None))) for db in ("postgres", "sqlite")]
    if all(r for _, r in outbox):
        table.append(
            (
                "What the meter-event outbox adds to a settle, in the answer's transaction as a "
                "chat turn settles (`bench/ledger.py`, reserve + settle, metered on vs off, "
                "interleaved)",
                " · ".join(
                    f"{db} {r['chat_settle_billing_off_ms']} → {r['chat_settle_metered_ms']} ms: "
                    f"**{r['metered_outbox_added_ms']:+} ms**, of which the app's CPU "
                    f"**{r['metered_outbox_added_cpu_ms']:+} ms** (n={r['chat_settle_metered_n']})"
                    for db, r in outbox
                ),
                "≤ +0.3 ms",
            )
        )
    d = by.get(("dashboard", "postgres", None))
    if d:
        table.append(
            (
                f"/usage/ render, heavy user ({d['heavy_user_generations']:,} generations, "
                f"every day, 8 models; {d['heavy_user_cycle_rows']} rollup rows this cycle), "
                "PostgreSQL",
                f"ledger, 10^4 rows {spread(d, 'ledger_1e4_')} vs 10^6 rows "
                f"{spread(d, 'ledger_1e6_')}: ratio **{d['ratio']}**, {d['queries_1e4']} vs "
                f"{d['queries_1e6']} SQL queries · PostHog ({d['posthog_rows']} rows) cold "
                f"{spread(d, 'posthog_cold_')}, cached {spread(d, 'posthog_warm_')}",
                "ratio ≤ 1.5",
            )
        )
    for mode in ("default", "no-preload"):
        g = by.get(("throughput", "postgres", mode))
        preload = ", without preload_app" if mode == "no-preload" else ""
        if g:
            table.append(
                (
                    f"Chat requests/s, production command (2 workers, PostgreSQL direct, "
                    f"{g['clients']} clients{preload})",
                    f"**{g['rps']}/s** ({g['ok']} answered, {g['non_200']} not 200), latency "
                    f"{spread(g, 'latency_')} · per worker after load: RSS "
                    f"{g['worker_rss_mb']} MB, PSS {g['worker_pss_mb']} MB, USS "
                    f"{g['worker_uss_mb']} MB; master PSS {g['master_pss_mb']} MB; all "
                    f"{g['total_pss_mb']} MB",
                    "",
                )
            )
    for n in (64, 256):
        r = by.get(("streams", "postgres", n))
        if r:
            table.append(
                (
                    f"{n} streams at once (30 chunks over 3 s each), production command",
                    f"p95 {r['p95_s']} s (p50 {r['p50_s']}, {r['min_s']}–{r['max_s']} s) vs "
                    f"lone {r['lone_s']} s: **{r['p95_ratio']}x** · first word p95 "
                    f"{r['first_word_p95_s']} s vs the relay's {r['relay_first_word_p95_s']} s "
                    f"(same burst): **{r['first_word_ratio']}x** · the workers' CPU to it "
                    f"{r['cpu_to_first_words_ms']} ms a stream on {r['cores_to_first_words']} "
                    f"cores vs the relay's {r['relay_cpu_to_first_words_ms']} ms on "
                    f"{r['relay_cores_to_first_words']} · model saw "
                    f"{r['model_most_at_once']} at once · ≤ {r['most_pg_connections']} "
                    f"PostgreSQL connections · /healthz p99 **{r['healthz_p99_s']} s** (slowest "
                    f"{r['healthz_worst_s']} s, n={r['healthz_n']}) · {r['done']}/{n} done",
                    "at 256: ≤ 1.6x a lone stream; first word ≤ 2x the relay's; /healthz p99 "
                    "≤ 0.5 s",
                )
            )
    c = by.get(("turn_cpu", None, None))
    if c:
        for kind, target in (("streamed", "≤ 3x the relay"), ("plain", "≤ 6 ms")):
            r = c[kind]
            table.append(
                (
                    f"CPU per {kind} turn, production command (2 workers, PostgreSQL, Redis, "
                    f"capture on; {c['chunks']} chunks; {c['turns']} turns, {c['at_once']} at "
                    "once) vs a bare ASGI relay under the same command",
                    f"**{r['product_ms']} ms** (runs {r['product_all_ms']}; event loops "
                    f"{r['product_loop_ms']} ms, threads the rest) vs relay "
                    f"{r['relay_ms']} ms (runs {r['relay_all_ms']}): **{r['ratio']}x**",
                    target,
                )
            )
        r = c["continued"]
        table.append(
            (
                f"CPU per plain turn in a conversation ({c['conversation_turns']} turns each; "
                "the rows above each start one), the same",
                f"**{r['product_ms']} ms** (runs {r['product_all_ms']}; event loops "
                f"{r['product_loop_ms']} ms) vs a new conversation's {c['plain']['product_ms']} ms",
                "",
            )
        )
        plain, streamed = c["plain"], c["streamed"]
        table.append(
            (
                "What metered billing adds to a turn's CPU, the same (loopback Stripe)",
                "outbox writes only (`STRIPE_SEND_AFTER_COMMIT=false`): plain "
                f"**{plain['metered_outbox_writes_added_ms']:+} ms** (runs "
                f"{plain['metered_outbox_writes_all_ms']}), streamed "
                f"{streamed['metered_outbox_writes_added_ms']:+} ms · writes and sending in the "
                f"worker: plain **{plain['metered_outbox_and_sending_added_ms']:+} ms**, "
                f"streamed {streamed['metered_outbox_and_sending_added_ms']:+} ms",
                "writes ≤ +0.3 ms",
            )
        )
    f = by.get(("sdk_floor", None, None))
    if f:
        for kind in ("plain", "streamed"):
            table.append(
                (
                    f"CPU per {kind} call in one process ({f['chunks']} chunks, {f['at_once']} "
                    "in flight, 2 messages): httpx2 alone vs the OpenAI SDK vs PostHog's wrapper "
                    "around it vs the product's client (chat/llm.py: the SDK's chat objects "
                    "built by pydantic's validator), messages as `messages`, and as the product "
                    "sends them (`extra_body`, privacy mode): the floor under a turn",
                    f"raw {f[kind + '_raw_ms']} ms · SDK {f[kind + '_sdk_ms']} ms · wrapped "
                    f"{f[kind + '_wrapped_ms']} ms · the product's client "
                    f"{f[kind + '_validated_ms']} ms · product's form "
                    f"**{f[kind + '_product_ms']} ms** (rounds {f[kind + '_product_all_ms']}): "
                    f"the SDK and wrapper add **{f[kind + '_product_added_ms']} ms** "
                    f"({f[kind + '_added_ms']} ms as PostHog's wrapper comes)",
                    "",
                )
            )
        table.append(
            (
                "The same, plain, with 20 messages (a conversation's history)",
                f"wrapped, `messages`: {f['plain_wrapped_20_messages_ms']} ms · product's form: "
                f"**{f['plain_product_20_messages_ms']} ms**",
                "",
            )
        )
    return table


def main():
    results = []
    for module, args in RUNS:
        print(f"running {module} {' '.join(args)}...", file=sys.stderr, flush=True)
        results.append(run(module, args))
    by = {
        (r["bench"], r.get("db"), r.get("kind") or r.get("mode") or r.get("streams")): r
        for r in results
    }
    print(
        f"\nBenchmarks, {date.today().isoformat()}, {os.cpu_count()} cores, {cpu()}, "
        f"Python {platform.python_version()}\n"
    )
    print("| measure | median (min–max, n) | target |")
    print("|---|---|---|")
    for name, value, target in rows(by):
        print(f"| {name} | {value} | {target} |")
    failures = [r for r in results if "error" in r]
    for failure in failures:
        print(f"\n{failure['bench']} failed: {failure['error']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
