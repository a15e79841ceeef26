"""Where the product's CPU goes under a bench's load: py-spy samples its workers.

    python -m bench.profile streams 256      # a burst of 256 streams (bench/streams.py)
    BENCH_TURNS=200 python -m bench.profile turn_cpu   # turns 8 at once (bench/turn_cpu.py)

Runs the bench and, between the marks it prints around its measured load (`profiled()` in
bench/common.py), has py-spy (`record --subprocesses --nonblocking`, 100 Hz) sample the
product's workers (not the bare relay's); then prints, for each measured load, the share of
the samples of running code (waits on sockets, locks and the event loop's select left out)
in each phase of a turn and in each package. A sampling profiler slows the server a little
(a deterministic one, yappi, slowed a burst tenfold): read shares, not the bench's figures.
py-spy is not a dependency (`pip install py-spy`) and needs ptrace: root, or
CAP_SYS_PTRACE in a container.
"""

import collections
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT

RATE = 100
# Phases of a turn: (what, a frame of it as py-spy names it).
PHASES = [
    ("beginning a turn (user, body, rate limit, reservation, prompt)", "_begin (chat/views.py"),
    ("  session and user rows", "get_user (django/contrib/auth/__init__.py"),
    ("  rate limit (Redis)", "_check_rate (chat/services.py"),
    ("  reservation and prompt", "reserve_with (usage/limits.py"),
    ("a plain call to the model (SDK, wrapper, capture)", "complete (chat/llm.py"),
    ("reading a streamed answer", "__anext__ (chat/llm.py"),
    ("  PostHog's per-chunk processing", "process_chunk (posthog/"),
    ("  the SDK building chunks", "_process_response_data (chat/llm.py"),
    ("sending the events (Django, uvicorn)", "send_response (django/core/handlers/asgi.py"),
    ("settling and saving the answer", "_finish (chat/services.py"),
    ("the pool's health check at checkout", "check_quiet (chatusage/postgresql/base.py"),
    ("PostHog's capture thread", "posthog/consumer.py"),
    ("/healthz", "healthz (chatusage/views.py"),
]
PACKAGES = {
    "OpenAI's SDK (openai, pydantic, typing)": ("openai", "pydantic", "typing", "inspect"),
    "HTTP client (httpx2, httpcore2, h11, anyio)": (
        "httpx2",
        "httpcore2",
        "h11",
        "anyio",
        "sniffio",
    ),
    "Django": ("django", "asgiref", "axes", "csp"),
    "psycopg": ("psycopg", "psycopg_pool"),
    "PostHog": ("posthog",),
    "Redis": ("redis",),
    "uvicorn, asyncio": ("uvicorn", "asyncio", "httptools"),
    "threads": ("concurrent", "threading", "queue"),
    "our code": ("chat", "chatusage", "usage", "billing", "accounts"),
}
WAITS = (
    "wait (psycopg/connection.py",
    "_worker (concurrent/futures/thread.py",
    "run (asyncio/runners.py",
    "wait (threading.py",
    "select (selectors.py",
    "_read_from_socket (redis/",
)


def package(frame: str) -> str:
    path = frame[frame.rfind("(") + 1 :]
    top = path.split("/", 1)[0].removesuffix(".py").split(".", 1)[0]
    for name, tops in PACKAGES.items():
        if top in tops:
            return name
    return "other"


def summary(files: list[Path]) -> str:
    phases, packages, running = collections.Counter(), collections.Counter(), 0
    for file in files:
        for line in file.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            if any(wait in frames[-1] for wait in WAITS):
                continue
            running += int(count)
            packages[package(frames[-1])] += int(count)
            for name, frame in PHASES:
                if frame in stack:
                    phases[name] += int(count)
    if not running:
        return "no samples (is py-spy allowed to attach? it needs ptrace)"
    lines = [f"{running} samples of running code; by phase (a phase includes its lines below):"]
    lines += [f"{100 * phases[name] / running:5.1f}%  {name}" for name, _ in PHASES]
    lines.append("by package (the sampled frame's):")
    lines += [f"{100 * n / running:5.1f}%  {name}" for name, n in packages.most_common()]
    return "\n".join(lines)


def main(bench: str, *args: str) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(tempfile.mkdtemp(prefix="chatusage-profile-"))
    run = subprocess.Popen(
        [sys.executable, "-m", f"bench.{bench}", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    spies, runs = {}, 0
    for line in run.stdout:
        mark = line.split()
        if mark[:2] == ["PROFILE", "start"]:
            master, name = mark[2], "-".join(mark[3:]) or "run"
            command = [spy, "record", "--pid", master, "--subprocesses", "--nonblocking"]
            command += ["--rate", str(RATE), "--format", "raw"]
            command += ["--output", str(out / f"{runs}-{name}.txt")]
            spies[master] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            runs += 1
        elif mark[:2] == ["PROFILE", "stop"] and mark[2] in spies:
            spies[mark[2]].send_signal(signal.SIGINT)  # py-spy writes what it has, then ends
            spies.pop(mark[2]).wait()
        else:
            print(line, end="", flush=True)
    run.wait()
    loads = collections.defaultdict(list)  # a bench measuring a load in several runs
    for file in sorted(out.iterdir()):
        loads[file.stem.split("-", 1)[1]].append(file)
    for name, files in loads.items():
        print(f"\n{name} ({len(files)} run(s)):\n{summary(files)}")
    print(f"\nraw stacks (flamegraph.pl and speedscope read them): {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
