"""Progress on stderr while a job reads and sends: a bar on a terminal, a line a minute in a log.

The library only calls back (``on_progress``, ``on_read``); how that is shown is the CLI's.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import click

from importer.cli.output import print_summary
from importer.options import human_duration


def progress_bar(
    quiet: bool,
    *,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    every: float = 60.0,
    tick: float = 1.0,
) -> tuple[Any, Any]:
    """Show the library's progress callbacks on stderr (the library never imports tqdm).

    On a terminal: a tqdm bar, redrawn every ``tick`` seconds by a small thread so its elapsed
    time keeps moving while the rate limiter holds writes back. Anywhere else (a pipe, a log,
    CI) bar frames would be noise: one plain line every ``every`` seconds instead. Progress
    notes (e.g. "stopping: 3 writes in flight, settling") are printed even with --quiet.

    Returns:
        The callback and a function that ends the display (None when there is nothing to end).
    """
    out = stream if stream is not None else sys.stderr
    if quiet or not out.isatty():
        due = _every(every, clock)

        def line(p: Any) -> None:
            if p.note:
                click.echo(p.note, file=out)
            elif not quiet and due():
                click.echo(_progress_text(p), file=out)

        return line, None

    import threading

    from tqdm import tqdm

    bar: Any = None
    stop = threading.Event()
    ticker: threading.Thread | None = None

    def redraw() -> None:
        while not stop.wait(tick):
            bar.refresh()

    def update(p: Any) -> None:
        nonlocal bar, ticker
        if p.note and bar is not None:
            bar.write(p.note, file=out)  # above the bar, which stays drawn
        elif p.note:
            click.echo(p.note, file=out)
        if p.note:
            return
        if bar is None:
            bar = tqdm(total=p.total, unit="write", file=out, dynamic_ncols=True, desc="sending")
            ticker = threading.Thread(target=redraw, name="progress-ticker", daemon=True)
            ticker.start()
        bar.n = p.done
        bar.set_postfix_str(f"ok {p.succeeded}, failed {p.failed}{_time_left(p)}", refresh=False)
        bar.refresh()

    def close() -> None:
        stop.set()
        if ticker is not None:
            ticker.join()
        if bar is not None:
            bar.close()

    return update, close


def _progress_text(p: Any) -> str:
    """One progress line for a log: '123/900 writes, 3 failed, about 13 min left'."""
    return f"{p.done}/{p.total} writes, {p.failed} failed{_time_left(p)}"


def _time_left(p: Any) -> str:
    """The rate limiter's estimate (the one ETA), and a 429 pause while there is one."""
    text = f", paused {p.paused_seconds:.0f}s (429)" if p.paused_seconds >= 1 else ""
    if p.eta_seconds is None or p.done >= p.total:
        return text
    minutes = round(p.eta_seconds / 60)
    return text + (", under a minute left" if minutes < 1 else f", about {human_duration(minutes * 60)} left")


def reading(
    quiet: bool,
    *,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    every: float = 60.0,
) -> Callable[[str], None] | None:
    """Say on stderr what a job reads before its plan ("reading: DIDs: page 3 of 50").

    As the progress display: on a terminal every step; anywhere else (a pipe, a log, CI) a line
    only once a read has gone on for ``every`` seconds, then one every ``every`` seconds (a
    large account's DID pages); nothing with --quiet.
    """
    if quiet:
        return None
    out = stream if stream is not None else sys.stderr
    if out.isatty():
        return lambda text: click.echo(f"reading: {text}", file=out)
    due = _every(every, clock)

    def line(text: str) -> None:
        if due():
            click.echo(f"reading: {text}", file=out)

    return line


def _every(seconds: float, clock: Callable[[], float]) -> Callable[[], bool]:
    """Return a check that is true once ``seconds`` have passed since its first call, then every ``seconds``.

    The log-line pace of the progress display and of ``reading`` (a pipe gets no bar frames).
    """
    last: float | None = None

    def due() -> bool:
        nonlocal last
        now = clock()
        if last is None:
            last = now
        elif now - last >= seconds:
            last = now
            return True
        return False

    return due


def send_and_report(job: Callable[..., Any], config: Any, quiet: bool) -> None:
    """Run an API job behind the progress bar, print its summary and exit with its code."""
    update, close = progress_bar(quiet)
    try:
        summary = job(dataclasses.replace(config, on_read=reading(quiet)), on_progress=update)
    finally:
        if close is not None:
            close()
    print_summary(summary)
    sys.exit(summary.exit_code)
