"""Every server load remembered: what each model really cost, per device and role, and how its draft did.

One *load record* per server run (``watcher.state.Run``): host, source, llama-swap model, build, target and
draft (path, file, architecture, size), slots and their context, the memory ledger per device and role
(weights, KV, recurrent state, compute), the device memory the log reported, how it ended, the acceptance totals, the
generation speed and the token counts of finished tasks.

The analysis thread only *builds* records (a ``LoadTracker`` beside the state machine, fed every applied
event); a sink queues them and the store's recorder thread writes them (``LoadBook``), so a pipe never
waits for the disk. The tracker also warns before a crash: when llama-swap (or a new server run) starts a
model whose last measured footprint plus what is resident on the device exceeds the device's memory
(``memory_overcommit``), and when a (target, draft) pair accepts far less than its earlier loads did
(``acceptance_regressed``).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher import config as cfg
from watcher.events import Event, Tally
from watcher.incidents import Evidence, Incident, basename
from watcher.state import Run, Stream

if TYPE_CHECKING:
    import sqlite3

COMPONENT = "loads"
MIGRATIONS = [
    """
    CREATE TABLE loads (
        key TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        source TEXT NOT NULL,
        model TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        draft TEXT NOT NULL DEFAULT '',
        build INTEGER,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        ended TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX loads_updated ON loads (updated_at);
    CREATE INDEX loads_model ON loads (host, model, updated_at);
    """,
]

#: Task sizes kept per load for the largest and p99 figures (the newest, if a server runs for weeks).
TASKS_KEPT = 4096
#: Runs the tracker keeps figures for (the newest); older finished ones are written and forgotten.
_RUNS_KEPT = 256
#: Records the tracker reads back from the store at start: baselines and last footprints come from these.
HISTORY_LOADS = 2000

ROLES = ("target", "draft")
#: Ledger kinds -> the figures a person budgets with: weights, KV, recurrent state, compute. RS stays apart
#: from KV: it is sized per sequence (slot), not per token of context, so only fewer slots shrink it.
_ROLE_KIND = {"model": "weights", "kv": "kv", "rs": "rs", "compute": "compute", "output": "compute"}
#: Memory columns of a record's rows (``rs_mib`` was added later: older records lack it and read as 0).
MEMORY_COLS = ("weights_mib", "kv_mib", "rs_mib", "compute_mib")


@dataclass
class Settings:
    """Thresholds and retention (``[ledger]`` in the config; defaults explained in docs/models.md)."""

    #: Records older than this many days are pruned (0: never by age).
    keep_days: float = 90.0
    #: At most this many records are kept, newest first (0: no limit).
    keep_loads: int = 2000
    #: Device capacities in MiB given by the user, for boxes whose logs say nothing (unified memory).
    capacity: dict[str, float] = field(default_factory=dict)
    #: ``acceptance_regressed`` opens when a full window accepts under ``ratio`` x the pair's baseline ...
    regression_ratio: float = 0.8
    #: ... and at least this much less in absolute terms (0.10 = ten points).
    regression_drop: float = 0.10
    #: Drafted tokens of the window compared with the baseline (and the least a baseline must hold).
    regression_window: int = 512


def settings_from(conf: cfg.Config) -> Settings:
    """``[ledger]`` of the config; a bad value raises ``cfg.ConfigError`` naming the file and the key."""
    d = Settings()
    where = "key ledger.capacity"
    if conf.path is not None:
        try:
            line = cfg._line(conf.path.read_text(encoding="utf-8"), "ledger", "capacity")
        except OSError:
            line = 1
        where = f"{conf.path}:{line}: {where}"
    try:
        capacity = parse_capacity(conf.get("ledger", "capacity", []), where=where)
    except ValueError as exc:
        raise cfg.ConfigError(str(exc)) from exc
    return Settings(keep_days=float(conf.get("ledger", "keep_days", d.keep_days)),
                    keep_loads=int(conf.get("ledger", "keep_loads", d.keep_loads)), capacity=capacity,
                    regression_ratio=float(conf.get("ledger", "regression_ratio", d.regression_ratio)),
                    regression_drop=float(conf.get("ledger", "regression_drop", d.regression_drop)),
                    regression_window=int(conf.get("ledger", "regression_window", d.regression_window)))


# -- the record --------------------------------------------------------------------------------------

@dataclass
class _Extra:
    """What a load record needs beyond ``Run``: figures state has no use for."""

    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    swap_model: str | None = None
    arch: dict[str, str] = field(default_factory=dict)
    file_mib: dict[str, float] = field(default_factory=dict)
    total_mib: dict[str, float] = field(default_factory=dict)
    task_tokens: deque[int] = field(default_factory=lambda: deque(maxlen=TASKS_KEPT))
    prompt_tokens: int = 0
    tps_sum: float = 0.0
    tps_n: int = 0
    mean_len_sum: float = 0.0
    mean_len_n: int = 0
    window: deque[tuple[int, int]] = field(default_factory=deque)
    win_gen: int = 0
    win_acc: int = 0
    #: (acceptance, drafted, builds) of the pair's earlier loads, looked up once per load.
    baseline: tuple[float, int, list[int]] | None = None
    loaded: bool = False
    #: The server said it is shutting down: its memory is going, whether or not llama-swap says so.
    exiting: bool = False
    warned: bool = False
    final: bool = False
    prompt_cache_mib: float | None = None
    prompt_cache_limit_mib: float | None = None
    #: The server shares one KV cache of -c cells among its slots (``kv_unified = 'true'``).
    kv_unified: bool | None = None


def footprint(run: Run) -> list[dict[str, Any]]:
    """The run's ledger as rows per (device, role): weights, KV, recurrent state and compute MiB."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for a in run.ledger.allocations:
        col = _ROLE_KIND.get(a.kind, "compute")
        row = rows.setdefault((a.device, a.role), {"device": a.device, "role": a.role,
                                                   **dict.fromkeys(MEMORY_COLS, 0.0)})
        row[f"{col}_mib"] += a.mib
    for row in rows.values():
        for k in MEMORY_COLS:
            row[k] = round(row[k], 2)
    return list(rows.values())


def record_of(run: Run, extra: _Extra, host: str) -> dict[str, Any]:
    """The load record of ``run`` (JSON-ready)."""
    def model(role: str, path: str | None) -> dict[str, Any] | None:
        if not path:
            return None
        return {"path": path, "file": basename(path), "arch": extra.arch.get(role),
                "file_mib": extra.file_mib.get(role)}

    devices: dict[str, dict[str, float | None]] = {}
    for dev in run.ledger.devices():
        devices[dev] = {"free_mib": run.ledger.free.get(dev), "total_mib": extra.total_mib.get(dev)}
    for dev, total in extra.total_mib.items():
        devices.setdefault(dev, {"free_mib": run.ledger.free.get(dev), "total_mib": total})
    n_ctx = sorted({s.n_ctx for s in run.slots.values() if s.n_ctx})
    tasks = list(extra.task_tokens)
    return {
        "key": extra.key,
        "host": host,
        "source": run.source,
        "swap_model": extra.swap_model,
        "model": model_key(extra.swap_model, run.target_model, run.draft_model),
        "build": run.build,
        "target": model("target", run.target_model),
        "draft": model("draft", run.draft_model),
        "spec_mode": run.spec_mode,
        "speculation": run.speculation,
        "ended": ended(run, extra),
        "n_slots": run.n_slots or (len(run.slots) or None),
        "n_ctx_slot": run.n_ctx_slot or (n_ctx[-1] if n_ctx else None),
        "kv_cells": dict(run.ledger.kv_cells),
        "kv_unified": extra.kv_unified,
        "memory": footprint(run),
        "devices": devices,
        "failures": [{"role": f.role, "device": f.device, "mib": f.mib, "what": f.what} for f in run.ledger.failures],
        "incidents": sorted(run.incidents),
        "tasks": run.tasks_done,
        "task_tokens": tasks,
        "drafted": run.drafted,
        "accepted": run.accepted,
        "mean_len": round(extra.mean_len_sum / extra.mean_len_n, 3) if extra.mean_len_n else None,
        "gen_tps": round(extra.tps_sum / extra.tps_n, 2) if extra.tps_n else None,
        # The server's host-memory prompt cache: outside the buffers above, largest size seen and its limit.
        "prompt_cache_mib": extra.prompt_cache_mib,
        "prompt_cache_limit_mib": extra.prompt_cache_limit_mib,
    }


def ended(run: Run, extra: _Extra) -> str:
    """How the load went: ``serving`` (still, as far as the log goes), ``stopped``, ``failed``, ``replaced``."""
    failed = bool(run.ledger.failures) or any(i.severity == "critical" for i in run.incidents.values())
    if run.phase == "exited" or (extra.exiting and run.phase in ("loading", "serving")):
        return "failed" if failed or not extra.loaded else "stopped"
    if run.phase == "replaced":
        return "replaced"
    if run.phase == "loading":
        return "failed" if failed else "loading"
    return "serving"


def model_key(swap_model: str | None, target: str | None, draft: str | None) -> str:
    """How a model is named in ``models`` and ``budget``: llama-swap's id, else target file (+ draft file)."""
    if swap_model:
        return swap_model
    t = basename(target) or "?"
    return f"{t}+{basename(draft)}" if draft else t


# -- the store ---------------------------------------------------------------------------------------

class LoadBook:
    """Load records in the shared SQLite database (component ``loads``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        # The store (and sqlite3) load with the first book opened: an analysis without one never needs them.
        from watcher import db

        self.conn = conn
        db.migrate(conn, COMPONENT, MIGRATIONS)

    @classmethod
    def open(cls, path: Path) -> LoadBook:
        """Open (creating and migrating) the book in the database at ``path``."""
        from watcher import db

        return cls(db.connect(path))

    def close(self) -> None:
        """Release the connection."""
        self.conn.close()

    def put(self, rec: Mapping[str, Any], now: float) -> None:
        """Insert or update one record (keyed by ``rec['key']``)."""
        target = (rec.get("target") or {}).get("file") or ""
        draft = (rec.get("draft") or {}).get("file") or ""
        self.conn.execute(
            "INSERT INTO loads (key, host, source, model, target, draft, build, started_at, updated_at, ended, record) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET host = excluded.host, "
            "source = excluded.source, model = excluded.model, target = excluded.target, draft = excluded.draft, "
            "build = excluded.build, updated_at = excluded.updated_at, ended = excluded.ended, "
            "record = excluded.record",
            (rec["key"], rec.get("host") or "", rec.get("source") or "", rec.get("model") or "", target, draft,
             rec.get("build"), now, now, rec.get("ended") or "", json.dumps(rec, sort_keys=True)))

    def prune(self, now: float, keep_days: float, keep_loads: int) -> int:
        """Drop records older than ``keep_days`` and beyond the newest ``keep_loads``; returns how many."""
        gone = 0
        if keep_days > 0:
            gone += self.conn.execute("DELETE FROM loads WHERE updated_at < ?", (now - keep_days * 86400,)).rowcount
        if keep_loads > 0:
            gone += self.conn.execute(
                "DELETE FROM loads WHERE key NOT IN (SELECT key FROM loads ORDER BY updated_at DESC, rowid DESC "
                "LIMIT ?)", (keep_loads,)).rowcount
        return gone

    def records(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Records, oldest first (the newest ``limit`` when given), each with ``started_at``/``updated_at``."""
        sql = "SELECT started_at, updated_at, record FROM loads ORDER BY updated_at DESC, rowid DESC"
        rows = self.conn.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
        out = []
        for started, updated, text in reversed(rows):
            rec = json.loads(text)
            rec["started_at"], rec["updated_at"] = started, updated
            out.append(rec)
        return out


# -- what the records add up to ----------------------------------------------------------------------

def measured(rec: Mapping[str, Any]) -> bool:
    """A record whose memory is a real footprint: the load got past allocation (it served, or stopped later)."""
    return bool(rec.get("memory")) and rec.get("ended") in ("serving", "stopped", "replaced")


def memory_pool(device: str) -> str:
    """The memory a device's buffers come out of: pinned host buffers (``CUDA_Host``, ``ROCm_Host``) are system
    RAM, budgeted with ``CPU``; every other device is its own."""
    return "CPU" if device.endswith("_Host") else device


def device_totals(rec: Mapping[str, Any]) -> dict[str, float]:
    """MiB per memory pool (device, host RAM) the record's load allocated (both roles, every kind)."""
    out: dict[str, float] = {}
    for row in rec.get("memory") or []:
        pool = memory_pool(row["device"])
        out[pool] = out.get(pool, 0.0) + sum(row.get(c, 0.0) for c in MEMORY_COLS)
    return out


def role_sum(rec: Mapping[str, Any], role: str, col: str | None = None) -> float:
    """MiB of one role (one column, or all of them) over every device."""
    cols = (col,) if col else MEMORY_COLS
    return float(sum(row.get(c, 0.0) for row in rec.get("memory") or [] if row["role"] == role for c in cols))


def percentile(values: list[int], q: float) -> int | None:
    """Nearest-rank percentile (p99 of 2,532-token tasks is a task size someone really sent)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(math.ceil(q / 100 * len(s)) - 1, 0)]


def capacities(records: Iterable[Mapping[str, Any]], given: Mapping[str, float] | None = None,
               hosts: Iterable[str] | None = None) -> dict[str, float]:
    """Device memory: what the user gave, else the largest total the logs of ``hosts`` (all, if None) reported.

    Per host: ``CPU`` or ``ROCm0`` of one box says nothing of another's. Where several hosts are asked about
    (models measured on different boxes, budgeted together), the smallest box's figure counts: the models
    have to fit on one of them.
    """
    wanted = None if hosts is None else set(hosts)
    per_host: dict[str, dict[str, float]] = {}
    for rec in records:
        host = str(rec.get("host") or "")
        if wanted is not None and host not in wanted:
            continue
        for dev, d in (rec.get("devices") or {}).items():
            if d.get("total_mib"):
                mine = per_host.setdefault(host, {})
                mine[dev] = max(mine.get(dev, 0.0), float(d["total_mib"]))
    out: dict[str, float] = {}
    for mine in per_host.values():
        for dev, mib in mine.items():
            out[dev] = min(out.get(dev, mib), mib)
    out.update(given or {})
    return out


def parse_capacity(items: Iterable[str], where: str = "--capacity") -> dict[str, float]:
    """``["ROCm0=98304", "CPU=160GiB"]`` -> MiB per device; a bad item raises ``ValueError`` naming it."""
    out: dict[str, float] = {}
    for item in items:
        m = re.fullmatch(r"\s*([\w.-]+)\s*=\s*([\d.]+)\s*(MiB|GiB)?\s*", str(item))
        if not m:
            raise ValueError(f"{where}: {item!r} is not DEVICE=MiB (e.g. CUDA0=24576 or ROCm0=96GiB)")
        out[m.group(1)] = float(m.group(2)) * (1024 if m.group(3) == "GiB" else 1)
    return out


@dataclass
class History:
    """Earlier loads, as the tracker asks about them: last footprints and acceptance baselines."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def last_footprint(self, host: str, model: str, exclude: str | None = None) -> dict[str, Any] | None:
        """The newest measured record of ``model`` on ``host``."""
        for rec in reversed(self.records):
            if rec.get("key") != exclude and rec.get("host") == host and rec.get("model") == model and measured(rec):
                return dict(rec)
        return None

    def baseline(self, host: str, target: str, draft: str, exclude: str | None = None) -> tuple[float, int, list[int]]:
        """(acceptance, drafted tokens, builds) of every earlier load of this (target file, draft file) pair."""
        drafted = accepted = 0
        builds: list[int] = []
        for rec in self.records:
            if rec.get("key") == exclude or rec.get("host") != host:
                continue
            if (rec.get("target") or {}).get("file") != target or (rec.get("draft") or {}).get("file") != draft:
                continue
            if rec.get("drafted"):
                drafted += int(rec["drafted"])
                accepted += int(rec.get("accepted") or 0)
                if rec.get("build") is not None and rec["build"] not in builds:
                    builds.append(rec["build"])
        return (accepted / drafted if drafted else 0.0), drafted, builds

    def add(self, rec: dict[str, Any]) -> None:
        """A record of this process: newer than anything read back, replacing its older snapshot."""
        self.records = [r for r in self.records if r.get("key") != rec.get("key")]
        self.records.append(rec)


# -- the tracker -------------------------------------------------------------------------------------

#: Events after which a run's record is worth writing (the rest only mark it changed).
_MILESTONES = frozenset({"model_loaded", "load_exit", "server_exiting", "slots_init", "draft_load_failed",
                         "model_load_failed", "context_failed", "draft_context_failed", "alloc_failed"})
_SWAP = frozenset({"swap_start", "swap_ready", "swap_stop", "swap_exit", "listen_port"})


class LoadTracker:
    """Builds load records beside the state machine and raises the two incidents that need history.

    Runs in the analysis thread; ``emit`` must only queue (the store sink's recorder thread writes).
    ``history`` is called for earlier loads each time they are needed: the sink fills it from the store
    in its own thread, so until that is done only this process's loads count.
    """

    def __init__(self, stream: Stream, host: str, *, emit: Callable[[dict[str, Any]], None] | None = None,
                 on_incident: Callable[[Incident], None] | None = None,
                 history: Callable[[], History | None] | None = None,
                 settings: Settings | None = None) -> None:
        self.stream = stream
        self.host = host
        self.emit = emit
        self.on_incident = on_incident
        self.history = history
        self.settings = settings or Settings()
        #: This process's records by key, oldest first (the newest HISTORY_LOADS).
        self._mine: dict[str, dict[str, Any]] = {}
        self.incidents: list[Incident] = []
        self._extra: dict[int, _Extra] = {}
        self._runs: dict[int, Run] = {}
        self._dirty: set[int] = set()
        self._warned: dict[str, Incident] = {}

    # -- feeding ---------------------------------------------------------------------------------
    def applied(self, ev: Event) -> None:
        """One event, after state applied it."""
        t = ev.type
        if t in _SWAP:
            if t == "swap_start" and ev.get("swap_model"):
                self._check_overcommit(ev.get("swap_model"), ev)
            elif t in ("swap_stop", "swap_exit"):
                self.flush()
            return
        run = self._current_run()
        if run is None:
            return
        x = self._extra_of(run)
        if t in {"build_info", "model_loading"}:
            self._flush_others(run)
            if t == "model_loading" and not x.swap_model:
                self._check_overcommit(None, ev, run)
        handler = getattr(self, f"_on_{t}", None)
        if handler is not None:
            handler(run, x, ev)
        self._dirty.add(id(run))
        if t in _MILESTONES or (t == "task_timing" and _worth_writing(run.tasks_done)):
            self.flush()

    def tallied(self, t: Tally) -> None:
        """Values of a tallied pattern (finished tasks' sizes), in bulk: they belong to the current run."""
        run = self._current_run()
        if run is None:
            return
        if t.event == "task_release":
            self._extra_of(run).task_tokens.extend(t.values)
        self._dirty.add(id(run))

    def _on_server_exiting(self, run: Run, x: _Extra, ev: Event) -> None:
        x.exiting = True

    def _on_model_loaded(self, run: Run, x: _Extra, ev: Event) -> None:
        x.loaded = True

    def _on_task_timing(self, run: Run, x: _Extra, ev: Event) -> None:
        x.loaded = True
        x.prompt_tokens = ev.get("tokens") or 0

    def _on_eval_time(self, run: Run, x: _Extra, ev: Event) -> None:
        if ev.get("tps") is not None and (ev.get("tokens") or 0) > 1:
            x.tps_sum += ev.get("tps")
            x.tps_n += 1

    def _on_task_release(self, run: Run, x: _Extra, ev: Event) -> None:
        if ev.get("tokens") is not None:
            x.task_tokens.append(ev.get("tokens"))

    def _on_model_arch(self, run: Run, x: _Extra, ev: Event) -> None:
        if ev.get("arch"):
            x.arch.setdefault(run.role, ev.get("arch"))

    def _on_model_file_size(self, run: Run, x: _Extra, ev: Event) -> None:
        mib = ev.get("mib")
        if mib is None and ev.get("gib") is not None:
            mib = ev.get("gib") * 1024
        if mib is not None:
            x.file_mib.setdefault(run.role, round(mib, 2))

    def _on_device_memory(self, run: Run, x: _Extra, ev: Event) -> None:
        if ev.get("device") and ev.get("total_mib"):
            x.total_mib[str(ev.get("device"))] = ev.get("total_mib")

    def _on_slots_init(self, run: Run, x: _Extra, ev: Event) -> None:
        if ev.get("kv_unified") is not None:
            x.kv_unified = ev.get("kv_unified") == "true"

    def _on_prompt_cache(self, run: Run, x: _Extra, ev: Event) -> None:
        if ev.get("mib") is not None:
            x.prompt_cache_mib = max(x.prompt_cache_mib or 0.0, ev.get("mib"))
        x.prompt_cache_limit_mib = ev.get("limit_mib", x.prompt_cache_limit_mib)

    def _on_draft_acceptance(self, run: Run, x: _Extra, ev: Event) -> None:
        if ev.get("mean_len") is not None:
            x.mean_len_sum += ev.get("mean_len")
            x.mean_len_n += 1
        self._window(run, x, ev)

    def _on_draft_step_accepted(self, run: Run, x: _Extra, ev: Event) -> None:
        self._window(run, x, ev)

    def finish(self) -> None:
        """End of input: write every run's last state."""
        for rid in list(self._runs):
            self._dirty.add(rid)
        self.flush()

    @property
    def mine(self) -> History:
        """This process's load records, oldest first."""
        return History(list(self._mine.values()))

    def flush(self) -> None:
        """Build and hand over the records of the runs changed since the last flush."""
        if not self._dirty:
            return
        latest = {id(s.runs[-1]) for s in getattr(self.stream, "streams", None) or [self.stream] if s.runs}
        for rid in sorted(self._dirty):
            run = self._runs.get(rid)
            if run is None:
                continue
            x = self._extra[rid]
            rec = record_of(run, x, self.host)
            if not (rec["target"] or rec["memory"] or rec["tasks"]):
                continue  # lines before any server (llama-swap's own chatter): no load to remember
            self._mine.pop(rec["key"], None)
            self._mine[rec["key"]] = rec
            if len(self._mine) > HISTORY_LOADS:
                del self._mine[next(iter(self._mine))]
            # A run that is no longer its stream's newest, or has exited, will not change again.
            x.final = rid not in latest or run.phase == "exited"
            if self.emit is not None:
                self.emit(rec)
        self._dirty.clear()

    # -- helpers ---------------------------------------------------------------------------------
    def _current_run(self) -> Run | None:
        stream = getattr(self.stream, "current", None)
        inner = stream.stream if stream is not None else self.stream
        return inner.runs[-1] if inner.runs else None

    def _extra_of(self, run: Run) -> _Extra:
        x = self._extra.get(id(run))
        if x is None:
            if len(self._runs) >= _RUNS_KEPT:
                self._forget_oldest()
            x = self._extra[id(run)] = _Extra()
            self._runs[id(run)] = run
        sec = getattr(self.stream, "current", None)
        if sec is not None and sec.model and run in sec.stream.runs:
            x.swap_model = sec.model
        return x

    def _forget_oldest(self) -> None:
        # A watcher that runs for months sees thousands of restarts; the oldest finished run's record is
        # written already (every new load flushes the others), so its bookkeeping can go.
        for rid in list(self._runs)[: len(self._runs) // 2]:
            if not self._extra[rid].final:
                continue
            self._dirty.discard(rid)
            del self._runs[rid]
            del self._extra[rid]

    def _flush_others(self, run: Run) -> None:
        # A new load begins: the earlier runs of this stream have their final figures now.
        for rid, other in self._runs.items():
            if other is not run and not self._extra[rid].final:
                self._dirty.add(rid)
        self.flush()

    def _records(self) -> list[dict[str, Any]]:
        prior = self.history() if self.history is not None else None
        mine = self._mine
        return [*(r for r in (prior.records if prior else []) if r.get("key") not in mine), *mine.values()]

    # -- memory_overcommit -----------------------------------------------------------------------
    def resident(self, exclude: Run | None = None) -> list[tuple[str, dict[str, float]]]:
        """(model, MiB per device) of every process still holding memory, but ``exclude``'s.

        Per stream only the newest run can be alive (a new run of a stream is a restart or a reload);
        it holds memory while loading or serving (llama-swap's stop and exit lines end it).
        """
        names = {id(s): m for m, s in (getattr(self.stream, "models", None) or {}).items()}
        out = []
        for stream in getattr(self.stream, "streams", None) or [self.stream]:
            if not stream.runs:
                continue
            run = stream.runs[-1]
            if run is exclude or run.phase not in ("loading", "serving") or not run.ledger.allocations:
                continue
            x = self._extra.get(id(run))
            if x is not None and x.exiting:
                continue  # it cleaned up and exited (llama-swap at info level says nothing of the stop)
            out.append((model_key(names.get(id(stream)), run.target_model, run.draft_model),
                        device_totals({"memory": footprint(run)})))
        return out

    def _check_overcommit(self, swap_model: str | None, ev: Event, run: Run | None = None) -> None:
        recs = self._records()
        hist = History(recs)
        name = swap_model or model_key(None, ev.get("model"), None)
        last = hist.last_footprint(self.host, name)
        if last is None and swap_model is None:
            # A plain server names its target first; a footprint recorded with a draft is the same model.
            last = next((r for r in reversed(recs) if r.get("host") == self.host and measured(r)
                         and (r.get("target") or {}).get("file") == basename(ev.get("model"))), None)
            name = last["model"] if last else name
        if last is None:
            return
        need = device_totals(last)
        caps = capacities(recs, self.settings.capacity, hosts=[self.host])
        live = self._live_totals()
        resident = [(m, d) for m, d in self.resident(exclude=run) if m != name]
        for dev, mib in need.items():
            cap = caps.get(dev) or live.get(dev)
            if not cap:
                continue
            others = [(m, d[dev]) for m, d in resident if d.get(dev)]
            total = mib + sum(v for _, v in others)
            if total <= cap:
                continue
            self._raise_overcommit(name, dev, mib, others, cap=cap, ev=ev)
            return

    def _next_run(self, model: str) -> int:
        """The run number the starting load gets in the model's stream (as reports number its loads)."""
        stream = (getattr(self.stream, "models", None) or {}).get(model)
        if stream is None:
            current = getattr(self.stream, "current", None)
            stream = current.stream if current is not None else self.stream
        runs = stream.runs
        # A plain server's new run exists already (its model line started it); llama-swap's start line comes first.
        return len(runs) if runs and runs[-1].phase == "loading" and not runs[-1].ledger.allocations else len(runs) + 1

    def _live_totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for x in self._extra.values():
            for dev, v in x.total_mib.items():
                out[dev] = max(out.get(dev, 0.0), v)
        return out

    def _raise_overcommit(self, model: str, dev: str, mib: float, others: list[tuple[str, float]], *, cap: float,
                          ev: Event) -> None:
        total = mib + sum(v for _, v in others)
        beside = ", ".join(f"{m} {_gib(v)}" for m, v in others) or "nothing else"
        inc = Incident(kind="memory_overcommit", severity="warning", source=self.stream.source,
                       run=self._next_run(model), model=model, device=dev, mib=round(mib, 1),
                       reason=f"{model} needs {_gib(mib)} (last measured) beside {beside} resident: "
                              f"{_gib(total)} > {_gib(cap)}")
        inc.server_state = "loading"
        inc.extra.update({"needed_mib": round(mib, 1), "capacity_mib": cap, "total_mib": round(total, 1),
                          "over_mib": round(total - cap, 1),
                          "resident": [{"model": m, "mib": round(v, 1)} for m, v in others]})
        if ev.get("swap_model"):
            inc.extra["swap_model"] = ev.get("swap_model")
        inc.add_evidence(ev.record.lineno, ev.record.text)
        inc.hint = (f"Stop a resident model first, or make {model} smaller (run 'specwatch budget "
                    f"{' '.join([model, *(m for m, _ in others)])}' for the cheapest change).")
        self._publish(inc)

    # -- acceptance_regressed --------------------------------------------------------------------
    def _window(self, run: Run, x: _Extra, ev: Event) -> None:
        gen, acc = ev.get("generated", 0) or 0, ev.get("accepted", 0) or 0
        x.window.append((gen, acc))
        x.win_gen += gen
        x.win_acc += acc
        size = self.settings.regression_window
        while x.window and x.win_gen - x.window[0][0] >= size:
            g, a = x.window.popleft()
            x.win_gen -= g
            x.win_acc -= a
        drafted = x.win_gen
        if drafted < size or x.warned or not run.target_model or not run.draft_model:
            return
        rate = x.win_acc / drafted
        target, draft = basename(run.target_model), basename(run.draft_model)
        if x.baseline is None:
            x.baseline = History(self._records()).baseline(self.host, target, draft, exclude=x.key)
        base, base_drafted, builds = x.baseline
        if base_drafted < size:
            return
        s = self.settings
        if rate >= base * s.regression_ratio or base - rate < s.regression_drop:
            return
        x.warned = True
        was = ", ".join(f"b{b}" for b in builds) or "earlier builds"
        now = f"b{run.build}" if run.build is not None else "this build"
        inc = Incident(kind="acceptance_regressed", severity="warning", source=run.source, run=run.ordinal,
                       model=run.target_model, draft_model=run.draft_model,
                       reason=f"{target} with draft {draft} accepts {rate:.1%} on {now} over the last {drafted} "
                              f"drafted tokens, down from {base:.1%} on {was} ({base_drafted} tokens)")
        inc.server_state = "serving"
        inc.extra.update({"acceptance": round(rate, 4), "baseline": round(base, 4), "baseline_builds": builds,
                          "build": run.build, "window": drafted, "baseline_drafted": base_drafted})
        if x.swap_model:
            inc.extra["swap_model"] = x.swap_model
        inc.add_evidence(ev.record.lineno, ev.record.text)
        inc.add_slot(ev.get("slot"))
        inc.hint = ("Compare the two builds' speculation settings (--spec-draft-n-max, sampling, --spec-type); if "
                    "nothing changed, pin the earlier build and report the regression upstream with both rates.")
        self._publish(inc)

    def _publish(self, inc: Incident) -> None:
        old = self._warned.get(inc.key)
        if old is not None and old.status == "open":
            old.evidence = [*old.evidence, *(e for e in inc.evidence if e not in old.evidence)][:8]
            old.reason, old.extra, old.mib = inc.reason, inc.extra, inc.mib
            old.attempts += 1
            inc = old
        else:
            self._warned[inc.key] = inc
            self.incidents.append(inc)
        if self.on_incident is not None:
            self.on_incident(inc)


def _worth_writing(tasks: int) -> bool:
    """Write after tasks 1, 2, 4, 8, ... and then every 64: a record stays fresh without a write per task."""
    return tasks > 0 and (tasks & (tasks - 1) == 0 or tasks % 64 == 0)


def _gib(mib: float) -> str:
    return f"{mib / 1024:,.1f} GiB" if mib >= 10240 else f"{mib:,.0f} MiB"


__all__ = ["MEMORY_COLS", "Evidence", "History", "LoadBook", "LoadTracker", "Settings", "capacities",
           "device_totals", "footprint", "measured", "memory_pool", "model_key", "parse_capacity", "percentile",
           "record_of", "role_sum"]
