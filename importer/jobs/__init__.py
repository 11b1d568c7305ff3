"""The jobs every surface calls, one straight-line function each: validate, run, rollback,
export, history; and what they share: session (journal, client, confirm and send, signals, the
sync runner), summary (``RunSummary``, notes, top reasons), outputs (paths and workbooks)."""
