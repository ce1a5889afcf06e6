"""The watermark both CRM adapters' `changed_since` use with a modification-time overlap.

It holds the newest modification stamp seen, plus the (id, stamp) pairs already reported inside
the overlap window: re-reading the window (for transactions that commit late with an earlier
stamp) then reports a record again only when it changed again, so a poll every minute does not
re-enqueue every record changed in the last few minutes. Opaque JSON to everyone else.
"""

from __future__ import annotations

import datetime as dt
import json

from shared.crm.port import CrmError


class OverlapWatermark:
    def __init__(self, stamp: dt.datetime | None, reported: dict[str, dt.datetime]) -> None:
        self.stamp = stamp
        self.reported_pairs = reported

    @classmethod
    def parse(cls, text: str | None, *, crm: str) -> OverlapWatermark:
        """Read a stored watermark; a bare ISO time (older Dataverse watermarks) is accepted too."""
        if not text:
            return cls(None, {})
        try:
            if not text.lstrip().startswith("{"):
                moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
                return cls(moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC), {})
            data = json.loads(text)
            stamp = dt.datetime.fromisoformat(data["t"])
            reported = {key: dt.datetime.fromisoformat(value) for key, value in (data.get("seen") or {}).items()}
        except (ValueError, KeyError, TypeError) as error:
            raise CrmError(f"not a {crm} watermark: {text[:80]!r}") from error
        return cls(stamp, reported)

    def reported(self, record_id: str, stamp: dt.datetime) -> bool:
        previous = self.reported_pairs.get(record_id)
        return previous is not None and previous >= stamp

    def advance(
        self, newest: dt.datetime | None, seen: dict[str, dt.datetime], overlap: dt.timedelta
    ) -> OverlapWatermark:
        if newest is None:
            return self
        horizon = newest - overlap
        merged = {**self.reported_pairs}
        for record_id, stamp in seen.items():
            merged[record_id] = max(stamp, merged.get(record_id, stamp))
        kept = dict(sorted(((k, v) for k, v in merged.items() if v >= horizon), key=lambda item: item[1])[-5000:])
        return OverlapWatermark(max(newest, self.stamp) if self.stamp else newest, kept)

    def dump(self) -> str | None:
        if self.stamp is None:
            return None
        return json.dumps(
            {
                "t": self.stamp.isoformat(),
                "seen": {key: value.isoformat() for key, value in self.reported_pairs.items()},
            }
        )
