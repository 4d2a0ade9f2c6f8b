"""The compact human layout of a proof report: one labelled block per concern, the verdict last.

Each section function returns lines so that the subcommands (stream, backlog, rate, ...) print exactly the block of
`--once` they are about, and `--watch` can reuse them under its progress bar.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .health import verdict_line
from .sections import Report

LABEL = 9


def n(value: Any) -> str:
    """Thousands separators for counts; '?' for unknown."""
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def dur(sec: float | None) -> str:
    """12s, 4m05s, 3h02m; '?' when unknown."""
    if sec is None:
        return "?"
    sec = float(sec)
    if sec < 60:
        return f"{sec:.1f}s" if sec < 10 else f"{sec:.0f}s"
    m, s = divmod(int(sec), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def clock(t: float | None) -> str:
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S.%f")[:-4] + "Z"


def _row(label: str, text: str) -> str:
    return f"{label:<{LABEL}} {text}"


def header(rep: Report) -> list[str]:
    mv = rep.movement
    window = f"sampled over {mv.window_sec}s" if mv and rep.movement_basis == "sample" else (
        f"compared with previous run {dur(rep.previous_run.age_sec)} ago" if mv and rep.previous_run
        else "no sample window")
    return [f"quantum proof · {rep.redis.url} (redis {rep.redis.version}) · {rep.generated_at} · {window}"]


def topology_lines(rep: Report) -> list[str]:
    """Master, replicas with their lag and the sentinels' agreement; nothing for a lone Redis without replicas."""
    t = rep.redis.topology
    if t is None or not (t.replicas or t.sentinels):
        return []
    out = [_row("redis", f"master {t.master or '(this server)'}  role {t.role}  "
                         f"replicas in sync for writes {n(t.min_replicas_good)}")]
    for x in t.replicas:
        out.append(_row("", f"replica {x.address}  {x.state}  lag {n(x.lag_bytes)} bytes, last ack {n(x.lag_sec)}s ago"))
    if t.sentinels:
        agree = sum(1 for s in t.sentinels if s.master == t.master)
        answering = sum(1 for s in t.sentinels if s.reachable)
        out.append(_row("", f"sentinels {answering} of {len(t.sentinels)} answering, {agree} name {t.master}  "
                            + " ".join(f"{s.address}->{s.master or 'no answer'}" for s in t.sentinels)))
    return out


def stream_lines(rep: Report) -> list[str]:
    rs, mv = rep.result_stream, rep.movement
    if not rs.exists:
        out = [_row("results", f"{rs.key}  does not exist yet (no intent executed)")]
    else:
        out = [_row("results", f"{rs.key}  length {n(rs.length)}  entries-added {n(rs.entries_added)}  "
                               f"last-id {rs.last_generated_id} ({dur(rs.last_entry_age_sec)} ago)")]
    if mv is None:
        adv = "advancing: unknown (no sample window, no previous snapshot)"
    else:
        word = "yes" if rs.advancing else "no"
        adv = (f"advancing: {word}, +{n(mv.results_added)} in {mv.window_sec}s "
               f"({n(mv.results_per_sec)}/s, {rs.advancing_basis})")
    out.append(_row("", adv))
    it = rep.intent_stream
    out.append(_row("intents", f"{it.key}  length {n(it.length)}  entries-added {n(it.entries_added)}"
                    + ("" if it.exists else "  (does not exist)")))
    return out


def backlog_lines(rep: Report) -> list[str]:
    g, d, mv = rep.group, rep.drain, rep.movement
    if not g.exists:
        return [_row("group", f"{g.name}  MISSING on {g.stream}")]
    lag = n(g.lag) + (" (estimated)" if g.lag_estimated else "")
    rate = f"  read {n(mv.read_per_sec)}/s  in {n(mv.intents_per_sec)}/s" if mv else ""
    eta = f"  ETA {dur(d.eta_sec)}" if d.backlog else ""
    live = sum(1 for c in rep.consumers if c.live)
    hosts = sorted({c.host or "?" for c in rep.consumers if c.live})
    out = [_row("group", f"{g.name}  lag {lag}  pending {n(g.pending)}  entries-read {n(g.entries_read)}"
                         f"  consumers {g.consumer_count} ({live} live on {', '.join(hosts) or 'no host'})"
                         f"{rate}{eta}")]
    for c in rep.consumers[:10]:
        out.append(_row("", f"consumer {c.name}  pending {n(c.pending)}  idle {dur((c.idle_ms or 0) / 1000)}"
                            f"  host {c.host or '?'}  {'live' if c.live else 'NOT LIVE'}"))
    if len(rep.consumers) > 10:
        out.append(_row("", f"… {len(rep.consumers) - 10} more consumers"))
    return out


def dlq_lines(rep: Report) -> list[str]:
    q = rep.dlq
    out = [_row("dlq", f"{q.key}  length {n(q.length)}")]
    for e in q.newest:
        reason = (e.reason or "?").replace("\n", " ")
        out.append(_row("", f"{e.id}  source {e.source_id}  {reason[:110]}"))
    return out


def rate_lines(rep: Report) -> list[str]:
    rl = rep.rate_limiters
    if not rl.total:
        return [_row("rate", f"no {rl.pattern} keys (no orders in the current window)")]
    out = [_row("rate", f"{rl.total} key(s) matching {rl.pattern}")]
    for k in rl.keys:
        ttl = "NO TTL" if k.no_expiry else f"ttl {dur(k.ttl_sec)}  resets {clock(k.resets_at)}"
        out.append(_row("", f"{k.key}  count {n(k.count)}  {ttl}"))
    if rl.truncated:
        out.append(_row("", f"… {rl.total - len(rl.keys)} more"))
    return out


def counter_lines(rep: Report) -> list[str]:
    c, er = rep.counters, rep.error_rate
    vals = "  ".join(f"{k} {n(v)}" for k, v in c.values.items())
    out = [_row("counters", vals + ("" if c.exists else f"  ({c.key} missing)"))]
    w, t = er.window, er.total
    window = "window: nothing consumed" if w is None else (
        f"window {_pct(w.rate)} ({n(w.errors)}/{n(w.consumed)} in {w.sec}s, {w.source})")
    out.append(_row("errors", f"{_pct(er.value)} by {er.basis} · {window} · total {_pct(t.rate)} "
                              f"({n(t.errors)}/{n(t.consumed)}) · max {_pct(er.max)}  [{er.definition}]"))
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.2f}%"


def unit_lines(rep: Report) -> list[str]:
    sd = rep.systemd
    out = []
    if not sd["present"]:
        out.append(_row("units", "systemd: not present"))
    else:
        parts = []
        for name, u in sd["units"].items():
            if u.get("error"):
                parts.append(f"{name} error: {u['error']}")
                continue
            cpu = u.get("cpu") or {}
            cpu_text = f" cpu {cpu['percent']}% ({cpu['source']})" if cpu.get("percent") is not None else ""
            parts.append(f"{name} {u.get('active_state')}/{u.get('sub_state')} pid {u.get('main_pid')}"
                         f" restarts {u.get('n_restarts')}{cpu_text}")
        out.append(_row("units", " · ".join(parts)))
    for name, c in rep.cpu.items():
        out.append(_row("cpu", f"{name} {c['percent']}% of one core over {c['window_sec']}s"))
    return out


def health_lines(rep: Report) -> list[str]:
    h = rep.health
    assert h is not None, "the report is rendered after health.evaluate"
    return [f"note: {x}" for x in h.notes] + [verdict_line(h)]


SECTIONS = {
    "stream": (stream_lines,),
    "backlog": (backlog_lines, dlq_lines),
    "rate": (rate_lines,),
    "counters": (counter_lines,),
    "units": (unit_lines,),
}


def render(rep: Report) -> str:
    """The full `--once` layout."""
    lines = header(rep)
    for fn in (topology_lines, stream_lines, backlog_lines, dlq_lines, rate_lines, counter_lines, unit_lines, health_lines):
        lines += fn(rep)
    return "\n".join(lines)
