"""Tell the team: POST a JSON notice to each ``--notify-url`` when a job needs them.

Notified events: ``needs-approval``, ``scheduled``, ``done``, ``failed``, ``cancelled`` (a
``observe.JobEvents`` listener; the approval and schedule steps emit the first two with
``service.events.emit("needs-approval", job)``). The body::

    {"event": "done", "job": "<id>", "kind": "import", "file": "numbers.xlsx", "status": "done",
     "counts": {...}, "users": {"uploaded by": "alice", "started by": "bob"},
     "link": "http://host:8000/jobs/<id>", "text": "VoiceLink import numbers.xlsx done: ..."}

``text`` is one line a chat tool (Slack, Teams, Mattermost incoming webhooks) shows as it is.
Nothing in a body comes from the key, a token or a session: only the job's own fields.

Never blocking the job: a listener only appends to a bounded queue (the oldest notice is dropped,
with a log line, when it is full) and one worker task sends them, each URL tried
``MAX_ATTEMPTS`` times with the one backoff formula (``account.retry.backoff_delay``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from importer.account.retry import MAX_ATTEMPTS, backoff_delay
from importer.web.observe import LOGGER

if TYPE_CHECKING:
    from importer.web.jobs import Job

__all__ = ["NOTIFIED", "Notifier", "notice"]

NOTIFIED = frozenset({"needs-approval", "scheduled", "done", "failed", "cancelled"})
QUEUE_SIZE = 200
TIMEOUT_SECONDS = 10.0
_COUNTED = ("succeeded", "unchanged", "skipped", "failed")


def notice(event: str, job: Job, link_base: str, users: Mapping[str, str]) -> dict[str, Any]:
    """The JSON body telling ``event`` of ``job``."""
    kind = str(getattr(job, "kind", "import") or "import")
    counts = {k: int(v) for k, v in job.counts.items()}
    said = ", ".join(f"{counts[k]} {k}" for k in _COUNTED if counts.get(k))
    people = "; ".join(f"{label} {name}" for label, name in users.items())
    link = f"{link_base.rstrip('/')}/jobs/{job.id}"
    text = f"VoiceLink {kind} {job.file}: {event}" + (f" ({said})" if said else "")
    if job.error and event == "failed":
        text += f": {job.error}"
    if event == "scheduled" and job.schedule.get("at"):
        text += f" for {job.schedule['at']} (UTC)"
    text += (f" - {people}" if people else "") + f" - {link}"
    return {
        "event": event,
        "job": job.id,
        "kind": kind,
        "file": job.file,
        "status": job.status.value,
        "counts": counts,
        "users": dict(users),
        "link": link,
        "text": text,
    }


class Notifier:
    """A bounded queue of notices and the one task that sends them."""

    def __init__(
        self,
        urls: Iterable[str],
        *,
        link_base: str,
        involved: Callable[[str], Mapping[str, str]] = lambda job_id: {},
        backoff_base: float = 1.0,
        queue_size: int = QUEUE_SIZE,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.urls = tuple(urls)
        self.link_base = link_base
        self.involved = involved
        self.backoff_base = backoff_base
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.queue_size = queue_size
        self.wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self._transport = transport
        self._task: asyncio.Task[None] | None = None

    def job_event(self, name: str, job: Job) -> None:
        """A ``JobEvents`` listener: queue a notice for the events the team is told of."""
        if name in NOTIFIED and self.urls:
            self.put(notice(name, job, self.link_base, self.involved(job.id)))

    def put(self, body: dict[str, Any]) -> None:
        """Queue one notice (never waits); the oldest is dropped when the queue is full."""
        if len(self.queue) >= self.queue_size:
            old = self.queue.popleft()
            self.dropped += 1
            LOGGER.warning(
                "notification queue full: dropped the %s notice of job %s",
                old.get("event"),
                old.get("job"),
                extra={"fields": {"event": "notify_dropped", "job": old.get("job")}},
            )
        self.queue.append(body)
        self.wake.set()

    def start(self) -> None:
        """Start the sending task (on the running loop)."""
        if self._task is None and self.urls:
            self._task = asyncio.create_task(self._worker())

    async def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                while self.queue and not task.done():
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _worker(self) -> None:
        # trust_env=False: no proxy or netrc from the environment; follow no redirects.
        async with httpx.AsyncClient(
            transport=self._transport, timeout=TIMEOUT_SECONDS, trust_env=False, follow_redirects=False
        ) as client:
            while True:
                if not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                body = self.queue[0]
                for url in self.urls:
                    await self._post(client, url, body)
                if self.queue and self.queue[0] is body:
                    self.queue.popleft()

    async def _post(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
        why = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                answer = await client.post(url, json=body)
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            else:
                if answer.is_success:
                    self.sent += 1
                    return
                why = f"HTTP {answer.status_code}"
                if answer.status_code < 500 and answer.status_code != 429:
                    break  # the listener refuses this notice; trying again will not change that
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(backoff_delay(attempt, self.backoff_base))
        LOGGER.log(
            logging.WARNING,
            "job %s: the %s notice could not be delivered to a notify URL (%s)",
            body.get("job"),
            body.get("event"),
            why,
            extra={"fields": {"event": "notify_failed", "job": body.get("job"), "reason": why}},
        )
