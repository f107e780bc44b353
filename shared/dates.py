"""The dates Lotgate accepts: one rule set for every service (README, "Dates").

A date far outside the life of a GMP record is a typo or a client's placeholder
(0001-01-01, 9999-12-31), never a fact: a calibration "valid" for eight thousand years
would let an instrument post for ever, an audit due in 9999 would let its qualification
run until then. So every date field has bounds, and a date outside them is refused as
INVALID_ARGUMENT naming the field:

- no date before EPOCH;
- a lot's expiry date after the day it is received and at most MAX_LOT_YEARS ahead; its
  retest date after today and not after its expiry date (on receipt and when QA sets one);
- a calibration due at most MAX_CALIBRATION_YEARS after the calibration;
- an audit's next audit due at most MAX_AUDIT_CYCLE_YEARS after the audit (and so a
  qualification, which may not outlast the audit cycle that supports it);
- a specification effective at most MAX_SPECIFICATION_LEAD_YEARS ahead.

Pure: the functions here take "today" as an argument.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TypeVar

# Before this day nothing Lotgate records can have happened.
EPOCH = date(2000, 1, 1)
# Shelf life: the longest a raw material's expiry (and so its retest) date may lie ahead.
MAX_LOT_YEARS = 10
# The longest interval between two calibrations of an instrument.
MAX_CALIBRATION_YEARS = 5
# The longest audit cycle of a supplier site (ICH Q7 7.12 expects periodic re-audits).
MAX_AUDIT_CYCLE_YEARS = 5
# The furthest ahead a specification version may be made effective.
MAX_SPECIFICATION_LEAD_YEARS = 1

Day = TypeVar("Day", date, datetime)


def years_after(day: Day, years: int) -> Day:
    """The same day `years` later (29 February becomes 28 February); the largest value
    of the type when that lies after the year 9999."""
    year = day.year + years
    if year > 9999:
        return (datetime.max.replace(tzinfo=day.tzinfo) if isinstance(day, datetime)
                else date.max)
    try:
        return day.replace(year=year)
    except ValueError:
        return day.replace(year=year, day=28)


def bounds_problem(value: date, earliest: date | None, latest: date | None) -> str | None:
    """Why `value` lies outside [earliest, latest] (either bound may be absent), or None."""
    if earliest is not None and value < earliest:
        return f"must not lie before {earliest.isoformat()}"
    if latest is not None and value > latest:
        return f"must not lie after {latest.isoformat()}"
    return None
