"""A pipeline's week: how its records and durations usually differ by hour and by weekend.

Many pipelines process fewer records at night or at weekends, and take less time to do it. A
baseline of the latest runs alone cannot know that a Saturday is quieter (64 runs of an hourly
pipeline are under three days), so each pipeline learns a profile: the mean of log(1 + value) for
each hour of a weekday and of a weekend day, and for each kind of day. A run's seasonal offset is
its hour's mean minus the week's mean (its kind of day's, while its hour has too few samples;
none while both do). The own-history detectors compare runs after removing that
offset, so a pipeline that is quiet every Sunday is not "dropping" every Sunday, and the spread
the thresholds are measured in is not inflated by the daily cycle.

Runs are folded in only once `lag` newer runs have arrived, so a fault is judged before the
profile starts to learn it. Folding happens off the ingest path (in detection), a batch at a time,
from the ring buffer; the profile and the count of runs it has seen are part of the pipeline's
state and of its snapshot.
"""

from __future__ import annotations

import math
from array import array

from pipewarden.server.core.model import SUCCEEDED
from pipewarden.server.core.shards import PipelineState
from pipewarden.server.detection.settings import ProfileSettings

__all__ = ["SIZE", "fold", "offset", "offsets", "started"]

HOURS = 48  # 24 weekday hours, then 24 weekend hours
DAYS = 2  # weekday, weekend
SLOTS = HOURS + DAYS  # the hours, then the kinds of day
# Layout of the float32 array: for records then durations, the means of each slot, then their
# sample counts.
_RECORDS, _DURATIONS = 0, 2 * SLOTS
SIZE = 4 * SLOTS
_WEEKDAY, _WEEKEND = HOURS, HOURS + 1


def _slots(t: float, shift: float) -> tuple[int, int]:
    """The hour slot and the day slot of event time `t` (seconds since the epoch)."""
    hours = int((t + shift) // 3600)
    day = hours // 24
    weekend = 1 if (day + 3) % 7 >= 5 else 0  # the epoch was a Thursday
    return weekend * 24 + hours % 24, HOURS + weekend


def _add(prof: array[float], base: int, slot: int, x: float, cap: float) -> None:
    n = prof[base + SLOTS + slot] + 1.0
    if n > cap:
        n = cap
    prof[base + SLOTS + slot] = n
    prof[base + slot] += (x - prof[base + slot]) / n


def fold(p: PipelineState, settings: ProfileSettings) -> None:
    """Fold into `p`'s profile its successful runs older than the latest `settings.lag`, those
    not folded yet that the ring still holds."""
    upto = p.total - settings.lag
    if upto <= p.profile_at:
        return
    ring = p.ring
    size = len(ring.status)
    # Run number n (1 = the first ever) sits `total - n` slots before the newest.
    first = max(p.profile_at + 1, p.total - ring.count + 1)
    prof = p.profile
    if prof is None:
        prof = p.profile = array("f", bytes(4 * SIZE))
    shift = settings.utc_offset_hours * 3600.0
    cap_hour, cap_day = float(settings.samples), float(settings.samples * 8)
    newest = ring.position - 1
    status, records, durations, times = ring.status, ring.records, ring.duration, ring.time
    for n in range(first, upto + 1):
        i = (newest - (p.total - n)) % size
        if status[i] != SUCCEEDED:
            continue
        d = durations[i]
        hour, day = _slots(started(times[i], d), shift)
        x = math.log1p(max(records[i], 0))
        _add(prof, _RECORDS, hour, x, cap_hour)
        _add(prof, _RECORDS, day, x, cap_day)
        if d == d:  # not NaN
            x = math.log1p(max(d, 0.0))
            _add(prof, _DURATIONS, hour, x, cap_hour)
            _add(prof, _DURATIONS, day, x, cap_day)
    p.profile_at = upto
    p.changed = True  # for the next delta snapshot


def started(t: float, duration: float) -> float:
    """When a run that ended at event time `t` after `duration` seconds (NaN: unknown) began:
    a run's load is that of the hour it was scheduled for, not the hour it happened to end."""
    return t - duration if duration == duration else t


def offset(p: PipelineState, t: float, durations: bool, settings: ProfileSettings) -> float:
    """How much higher than usual (in log(1 + value)) a run started at `t` usually is: its
    hour's mean minus the week's mean; its kind of day's while its hour has fewer than
    `settings.min_samples`; 0 while that has too few too."""
    return offsets(p, [t], durations, settings)[0]


def offsets(
    p: PipelineState, times: list[float], durations: bool, settings: ProfileSettings
) -> list[float]:
    """`offset` of runs started at each of `times` (the week's mean is worked out once)."""
    prof = p.profile
    if prof is None:
        return [0.0] * len(times)
    base = _DURATIONS if durations else _RECORDS
    counts = base + SLOTS
    enough = settings.min_samples
    weekday, weekend = prof[counts + _WEEKDAY] >= enough, prof[counts + _WEEKEND] >= enough
    if not (weekday or weekend):
        return [0.0] * len(times)
    # The mean over a whole week: five weekdays and two weekend days (one kind alone until the
    # other has been seen), so that it does not sink every weekend.
    if weekday and weekend:
        overall = (5 * prof[base + _WEEKDAY] + 2 * prof[base + _WEEKEND]) / 7
    else:
        overall = prof[base + (_WEEKDAY if weekday else _WEEKEND)]
    shift = settings.utc_offset_hours * 3600.0
    out: list[float] = []
    for t in times:
        hour, day = _slots(t, shift)
        if prof[counts + hour] >= enough:
            out.append(prof[base + hour] - overall)
        elif prof[counts + day] >= enough:
            out.append(prof[base + day] - overall)
        else:
            out.append(0.0)
    return out
