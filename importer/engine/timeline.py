"""Which run's write to a DID is live, and what a rollback put back: the ``Timeline`` of every
run's writes the journal builds for a rollback, and each write's ``Fate``."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass

from importer.engine.records import ChangeRecord

__all__ = ["Fate", "Timeline", "change_did"]


@dataclass(frozen=True, slots=True)
class Fate:
    """What became of one change after its run, as the journal tells it."""

    rolled_back_by: int | None = None
    """The rollback that put it back, when no import has written its DID since: then nothing of
    the change is left to roll back, whatever the live state says."""
    overwritten: ChangeRecord | None = None
    """The last write to its DID by a later run: an import, or the tool's own rollback of another run."""
    overwritten_by_rollback: bool = False
    """``overwritten`` is the tool's own rollback (of another run), never someone's change."""

    @property
    def left(self) -> bool:
        """Whether the change may still be live: neither rolled back nor written over since."""
        return self.rolled_back_by is None and self.overwritten is None


@dataclass(frozen=True, slots=True)
class Timeline:
    """Every write of every run, oldest first, and which rollbacks put back which runs' rows.

    Built once per rollback (``Journal.timeline``); ``fates`` tells, per write, whether anything
    of it is left to roll back, so neither the choice of runs nor the plan takes the tool's own
    rollback for someone's change.
    """

    changes: tuple[ChangeRecord, ...]
    """Imports' writes (succeeded or still in flight) and rollbacks' succeeded writes, oldest first."""
    rollbacks: Mapping[int, tuple[int, ...]]
    """Rollback run -> the runs it undid."""
    undone_by: Mapping[tuple[int, int], int]
    """(run, row) -> the first rollback that restored that row of that run (``Journal.undone_by``)."""

    def fates(self) -> dict[tuple[int, int, str], Fate]:
        """Each import's write -> what became of it, keyed by ``Timeline.key``.

        Returns:
            For every write of an import: the rollback that put it back (when no import wrote
            its DID after that rollback); else nothing, when its run's write is the live one at
            the end; else the last write to its DID, the one that left another record live.
        """
        live, last = self._live()
        out: dict[tuple[int, int, str], Fate] = {}
        imported_after: dict[str, list[int]] = collections.defaultdict(list)
        for c in self.changes:
            if c.run_id not in self.rollbacks:
                imported_after[change_did(c)].append(c.run_id)
        for c in self.changes:
            if c.run_id in self.rollbacks:
                continue
            did = change_did(c)
            by = self.undone_by.get((c.run_id, c.row))
            if by is not None and by > c.run_id and not any(r > by for r in imported_after[did]):
                fate = Fate(rolled_back_by=by)
            elif live[did] == c.run_id:
                fate = Fate()
            else:
                fate = Fate(overwritten=last[did], overwritten_by_rollback=last[did].run_id in self.rollbacks)
            out[self.key(c)] = fate
        return out

    def _live(self) -> tuple[dict[str, int | None], dict[str, ChangeRecord]]:
        """Per DID, whose write is live at the end (None: the record from before every run), and the
        last write to it. A rollback of runs puts back the record from before the first of their
        writes to the DID, so whoever was live then is live again."""
        live: dict[str, int | None] = {}
        last: dict[str, ChangeRecord] = {}
        trail: dict[str, list[tuple[int, int | None]]] = collections.defaultdict(list)
        for c in self.changes:
            did = change_did(c)
            undid = self.rollbacks.get(c.run_id)
            if undid is None:
                trail[did].append((c.run_id, live.get(did)))
                live[did] = c.run_id
            else:
                undone = [before for run, before in trail[did] if run in undid]
                live[did] = undone[0] if undone else None
                # Those writes are undone: a later rollback of the same input looks past them.
                trail[did] = [(run, before) for run, before in trail[did] if run not in undid]
            last[did] = c
        return live, last

    def left_runs(self) -> tuple[int, ...]:
        """The imports with something left to roll back (a write neither rolled back nor written over)."""
        return tuple(sorted({run for (run, _, _), fate in self.fates().items() if fate.left}))

    def nothing_left(self, journal: str) -> str:
        """Say that no import has anything left to roll back, and which rollbacks saw to it."""
        by: dict[int, set[int]] = collections.defaultdict(set)
        for (run, _, _), fate in self.fates().items():
            if fate.rolled_back_by is not None:
                by[run].add(fate.rolled_back_by)
            elif fate.overwritten is not None:
                by[run].add(fate.overwritten.run_id)
        said = ", ".join(
            f"run {run} by {'runs' if len(ks) > 1 else 'run'} {', '.join(map(str, sorted(ks)))}"
            for run, ks in sorted(by.items())
        )
        return f"nothing left to roll back in {journal}: every change was rolled back already ({said})"

    @staticmethod
    def key(change: ChangeRecord) -> tuple[int, int, str]:
        """A write's identity in the timeline: its run, row and DID."""
        return change.run_id, change.row, change_did(change)


def change_did(change: ChangeRecord) -> str:
    """The DID a write targets, as one key ('id:812', or 'num:918011223344' when no id is known)."""
    return f"id:{change.did_id}" if change.did_id is not None else change.did_key
