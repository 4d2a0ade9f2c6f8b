"""The snapshot of the previous run, so that `--once` can say what moved since then (not only in its sample window).

One small JSON file per Redis URL + stream set, written atomically (temp file + rename) so that two operators running
the proof at once never read half a file. A missing, unreadable or corrupt snapshot is simply "no previous run".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from .collect import Sample
from .config import ProofSettings
from .sections import Snapshot

log = logging.getLogger(__name__)


def snapshot_path(s: ProofSettings) -> Path | None:
    """File of this pipeline's snapshot; None when no state directory is configured (--no-state)."""
    if s.state_dir is None:
        return None
    ident = "|".join((s.redis_url, s.intent_stream, s.result_stream, s.group, s.stats_key))
    return s.state_dir / f"snapshot-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"


def to_snapshot(sample: Sample) -> Snapshot:
    """The few numbers a later run compares against."""
    return Snapshot(
        t=sample.t,
        result_entries_added=sample.results.entries_added,
        result_last_id=sample.results.last_generated_id,
        group_entries_read=sample.group.entries_read,
        intent_entries_added=sample.intents.entries_added,
        lag=sample.group.lag,
        pending=sample.group.pending,
        dlq_length=sample.dlq_length,
        counters=dict(sample.counters.values),
    )


def load(s: ProofSettings) -> Snapshot | None:
    """The previous run's snapshot, or None."""
    path = snapshot_path(s)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable proof snapshot %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("t"), (int, float)):
        return None
    return Snapshot.from_json(data)


def save(s: ProofSettings, sample: Sample) -> str | None:
    """Write this run's snapshot; a read-only state dir costs the next run its comparison, never this run."""
    path = snapshot_path(s)
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".snapshot-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(to_snapshot(sample)), fh)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write proof snapshot %s: %s", path, exc)
        return None
    return str(path)
