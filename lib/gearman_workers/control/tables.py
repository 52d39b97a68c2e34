"""What gm-ctl prints: the status and pools tables, and the --json
documents, from the heartbeats the pools publish (store.live_pools). Their
field names are promised to stay (docs/observability.md)."""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

from ..log import escape


def children(info: dict[str, Any]) -> list[dict[str, Any]]:
    """A heartbeat's child rows (a master older than gm-ctl status sent a count)."""
    children = info.get("children")
    return [c for c in children if isinstance(c, dict)] if isinstance(children, list) else []


def _child_count(info: dict[str, Any]) -> int:
    children = info.get("children", 0)
    return len(children) if isinstance(children, list) else int(children or 0)


CHILD_FIELDS = ("slot", "pid", "state", "dedicated_to", "task", "job", "busy_for", "jobs_done", "jobs_failed",
                "rss", "age")
POOL_FIELDS = ("pid", "desired", "registered", "started", "reported", "autoscale", "duplicate_of", "paused")


def status_document(pools: list[dict[str, Any]]) -> dict[str, Any]:
    """What `gm-ctl status --json` prints: every pool, and every child with
    its pool's host, name and master. Values are as of the pool's last
    heartbeat (`reported`, seconds since the epoch; a few seconds old)."""
    document: dict[str, list[dict[str, Any]]] = {"pools": [], "children": []}
    for info in pools:
        where = {"host": info.get("host"), "pool": info.get("name")}
        document["pools"].append(where | {key: info.get(key) for key in POOL_FIELDS} |
                                 {"children": _child_count(info)})
        for child in children(info):
            document["children"].append(where | {"master": info.get("pid"), "reported": info.get("reported")} |
                                        {key: child.get(key) for key in CHILD_FIELDS})
    return document


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f}M"


def print_status(children: list[dict[str, Any]]) -> None:
    """A table sized to the terminal: the job handle column goes first when narrow."""
    columns = [("HOST", "host"), ("POOL", "pool"), ("PID", "pid"), ("STATE", "state"), ("TASK", "task"),
               ("JOB", "job"), ("BUSY", "busy_for"), ("DONE", "jobs_done"), ("FAILED", "jobs_failed"),
               ("RSS", "rss"), ("AGE", "age")]
    shown = {"busy_for": _span, "age": _span, "rss": _mib}
    rows = [[escape(shown.get(key, lambda v: "-" if v is None else str(v))(child.get(key))) for _, key in columns]
            for child in children]
    widths = [max([len(title), *(len(row[i]) for row in rows)]) for i, (title, _) in enumerate(columns)]
    keep = list(range(len(columns)))
    if sum(widths) + len(widths) > shutil.get_terminal_size((100, 24)).columns:
        keep.remove(5)
    numeric = {2, 6, 7, 8, 9, 10}
    for row in [[title for title, _ in columns], *rows]:
        print(" ".join(row[i].rjust(widths[i]) if i in numeric else row[i].ljust(widths[i]) for i in keep).rstrip())
    if not children:
        print("(no live pool matched)")


def print_paused(pools: list[dict[str, Any]]) -> None:
    """Below the status table: the tasks each pool withholds because they are paused."""
    for info in sorted(pools, key=pool_id):
        paused = [str(task) for task in info.get("paused") or []]
        if paused:
            print(f"{escape(pool_id(info))}: paused {escape(', '.join(paused))}")


def pool_id(info: dict[str, Any]) -> str:
    return f"{info.get('host')}/{info.get('name')}"


def print_pools(pools: list[dict[str, Any]]) -> None:
    print(f"{'HOST':20s} {'POOL':16s} {'PID':>7s} {'CHILDREN':>9s} {'REGISTERED':>10s} {'AGE':>8s}")
    for info in sorted(pools, key=pool_id):
        age = time.time() - float(info.get("started") or time.time())
        print(f"{escape(str(info.get('host', '?'))):20s} {escape(str(info.get('name', '?'))):16s} "
              f"{info.get('pid', 0):>7} {_child_count(info):>4}/{info.get('desired', 0):<4} "
              f"{info.get('registered', 0):>10} {_span(age):>8s}")
        if info.get("duplicate_of"):
            print(f"  ^ another live master publishes as {pool_id(info)} too (pid {info['duplicate_of']}): "
                  "two hosts share a name, or a pool name is used twice")
    if not pools:
        print("(no live pool matched)")


# --- jobs: dead letters and job records (jobs/store.py, jobs/results.py) -----------

LETTER_FIELDS = ("id", "task", "unique", "attempts", "retries", "created", "died", "first_error", "last_error")


def _letter_document(letter: dict[str, Any], whole: bool) -> dict[str, Any]:
    """A dead letter as --json prints it: the payload as hex (binary-safe)."""
    fields = {key: letter.get(key) for key in LETTER_FIELDS}
    if whole:
        fields |= {"payload_hex": bytes(letter.get("payload", b"")).hex(), "first_trace": letter.get("first_trace"),
                   "last_trace": letter.get("last_trace"), "runs": letter.get("runs", []),
                   "retried_from": letter.get("retried_from")}
    return fields


def print_letters(letters: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps([_letter_document(letter, False) for letter in letters], indent=2))
        return
    print(f"{'ID':16s} {'TASK':20s} {'RUNS':>4s} {'DEAD FOR':>8s}  LAST ERROR")
    for letter in letters:
        error = escape(str(letter.get("last_error", "")))[:80]
        print(f"{letter['id']:16s} {escape(str(letter.get('task'))):20s} {letter.get('attempts', 0):>4} "
              f"{_span(time.time() - float(letter.get('died') or time.time())):>8s}  {error}")
    if not letters:
        print("(no dead letters)")


def print_letter(letter: dict[str, Any], as_json: bool) -> None:
    document = _letter_document(letter, True)
    if as_json:
        print(json.dumps(document, indent=2))
        return
    payload = bytes(letter.get("payload", b""))
    for key in ("id", "task", "unique", "attempts", "retries", "created", "died", "retried_from"):
        if document.get(key) is not None:
            print(f"{key:13s} {_when(document[key]) if key in ('created', 'died') else escape(str(document[key]))}")
    print(f"{'payload':13s} {len(payload)} bytes: {escape(payload[:200].decode('utf-8', 'backslashreplace'))}")
    for run in document["runs"]:
        print(f"  run {run.get('attempt')}: {escape(str(run.get('host')))}/{escape(str(run.get('pool')))} "
              f"{_when(run.get('started'))} for {float(run.get('ended', 0)) - float(run.get('started', 0)):.3f} s: "
              f"{escape(str(run.get('error')))}")
    _print_trace("first error", document.get("first_trace"))
    if document.get("last_trace") != document.get("first_trace"):
        _print_trace("last error", document.get("last_trace"))


def _print_trace(title: str, trace: Any) -> None:
    print(f"{title}:")
    for line in str(trace).rstrip().splitlines():
        print("  " + escape(line))  # each line escaped: task text may hold terminal controls


def print_job(record: dict[str, Any], as_json: bool) -> None:
    document = dict(record)
    result = document.pop("result", None)
    if result is not None:
        document["result_hex"] = result.hex()
    if as_json:
        print(json.dumps(document, indent=2, sort_keys=True))
        return
    for key in ("unique", "task", "state", "attempt", "started", "ended", "host", "pool", "progress", "error",
                "chain", "retry_in", "result_size"):
        if document.get(key) is not None:
            value = _when(document[key]) if key in ("started", "ended") else document[key]
            print(f"{key:9s} {escape(str(value))}")
    if result is not None:
        print(f"{'result':9s} {len(result)} bytes: {escape(result[:500].decode('utf-8', 'backslashreplace'))}")


def _when(seconds: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(seconds))) + " UTC" if seconds else "-"
