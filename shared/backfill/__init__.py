"""Backfill and repair: compare Partner Center with the CRM, report what differs, queue the syncs.

- `compare.py` reads both sides (and our links) without writing anything and lists the findings;
- `preview.py` asks the sync engine's own pieces what a sync of each finding would do (the one
  place the backfill depends on the engine's decision logic);
- `report.py` renders the findings as a terminal table, CSV or HTML;
- `run.py` queues the syncs at a bounded rate, resumable through its state in Table storage;
- `commands.py` is `python -m shared backfill`.
"""
