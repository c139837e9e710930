"""Long jobs as named, timed steps: each step is announced, timed, and summed up at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    """A step or a result: bold on a terminal, plain in logs."""
    if sys.stdout.isatty():
        print(f"\033[1m==> {message}\033[0m", flush=True)
    else:
        print(f"==> {message}", flush=True)


def detail(message: str) -> None:
    print(f"    {message}", flush=True)


class Steps:
    """Times the steps of one job, e.g. ``with steps("configure"): ...``; ``summary()`` tabulates them."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        say(f"{self.job}: {name}")
        start = time.monotonic()
        try:
            yield
        finally:
            self.times.append((name, time.monotonic() - start))

    def summary(self) -> str:
        width = max((len(name) for name, _ in self.times), default=4)
        lines = [f"{self.job}: step times"]
        lines += [f"  {name:<{width}}  {seconds:7.1f} s" for name, seconds in self.times]
        lines.append(f"  {'total':<{width}}  {sum(s for _, s in self.times):7.1f} s")
        return "\n".join(lines)
