"""Where the CRM poll stands: a small cursor, and the key of each change it reported in the overlap.

Both CRMs are polled by modification stamp with an overlap window (a transaction can commit late
with an earlier stamp), so the poll re-reads changes it already reported and must recognise them.
The state is split so that nothing grows with the number of changes in one place (issue 20: one
JSON property holding every (id, stamp) pair outgrew Table storage's 64 KB after a bulk update):

- `PollCursor`, one row: the newest stamp fully processed, the change-feed position (Dataverse
  delta links) if any, and the key of the page being queued right now, so that a poll that
  stopped half-way finishes that page first next time. A few hundred bytes, always.
- One row per page of at most `PAGE_SIZE` changes queued (the keys of its changes,
  `change_key`), forgotten as soon as the window has moved past its newest change
  (`window_start`). Each is at most ~80 KB, well under the 1 MB of an entity, and only pages
  inside the overlap window exist.

The window starts on a whole second because both CRMs' query literals do (SOQL datetime literals
are formatted without fractions; Dataverse `modifiedon` is second-granular): the same bound cuts
the query and the forgetting, so a change the query returns is always still remembered.
"""

from __future__ import annotations

import datetime as dt
import json

from pydantic import BaseModel, ConfigDict, Field

from shared.crm.port import ChangedRecord, CrmRef

PAGE_SIZE = 500
"""Changes queued per step: remembered in one row, and at most this many are queued a second time
when a poll stops half-way through a page."""

_KEY_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width, so keys sort in time order


class WatermarkError(ValueError):
    """A stored poll position that cannot be read."""


def window_start(newest: dt.datetime, overlap: dt.timedelta) -> dt.datetime:
    """The first moment the next query reads: `newest - overlap`, cut to the whole second."""
    return (newest - overlap).astimezone(dt.UTC).replace(microsecond=0)


def stamp_key(moment: dt.datetime) -> str:
    """A stamp as the prefix of `change_key`: keys before `stamp_key(t)` are changes before t."""
    return moment.astimezone(dt.UTC).strftime(_KEY_TIME)


def change_key(change: ChangedRecord) -> str:
    """One change: the same record at the same stamp is the same change, whoever reports it."""
    return f"{stamp_key(change.stamp)}|{change.ref.kind}|{change.ref.id}"


def parse_change_key(key: str) -> ChangedRecord:
    stamp, kind, record_id = key.split("|", 2)
    moment = dt.datetime.strptime(stamp, _KEY_TIME).replace(tzinfo=dt.UTC)
    return ChangedRecord(ref=CrmRef.model_validate({"kind": kind, "id": record_id}), stamp=moment)


class PollCursor(BaseModel):
    """The stored position of one CRM poller (the `Value` of its watermark row, JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stamp: dt.datetime | None = Field(default=None, description="newest change stamp fully processed")
    position: str | None = Field(default=None, description="change-feed position (Dataverse delta links)")
    pending: str | None = Field(default=None, description="key of the page being queued when the poll stopped")

    @classmethod
    def parse(cls, text: str | None) -> PollCursor:
        """Read a stored cursor. The formats stored before it are read too: `{"t", "seen"}` JSON
        (the pairs are dropped: changes in the overlap are queued once more, harmlessly), a bare
        ISO time (older Dataverse watermarks) and a JSON object of delta links."""
        if not text:
            return cls()
        try:
            if not text.lstrip().startswith("{"):
                moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
                return cls(stamp=moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC))
            data = json.loads(text)
            if "v" in data:
                return cls(stamp=data.get("stamp"), position=data.get("position"), pending=data.get("pending"))
            if "t" in data:
                return cls(stamp=dt.datetime.fromisoformat(data["t"]))
            if all(isinstance(value, str) for value in data.values()):
                return cls(position=text)
        except (ValueError, TypeError) as error:  # pydantic's ValidationError is a ValueError
            raise WatermarkError(f"the stored CRM poll position is not readable: {text[:80]!r} ({error})") from error
        raise WatermarkError(f"the stored CRM poll position is not readable: {text[:80]!r}")

    def dump(self) -> str:
        return json.dumps(
            {
                "v": 2,
                "stamp": self.stamp.isoformat() if self.stamp else None,
                "position": self.position,
                "pending": self.pending,
            },
            separators=(",", ":"),
        )
