"""What the load records add up to: each model's measured footprint, what would free memory, what fits
together, and which draft pays for its memory (``specwatch models``, ``budget``, ``drafts``).

Every figure comes from load records (watcher.loads): llama.cpp's own buffer lines, slots, task sizes and
draft statistics. KV arithmetic follows llama.cpp: the server allocates ``-c`` cells in all (``n_ctx_slot``
per slot times ``--parallel``, or ``-c`` shared by every slot with ``kv_unified``) for the target and as many
for a draft, so KV is linear in the cells. The recurrent state of Mamba/RWKV and of hybrid models' recurrent
layers (``rs_mib``) is sized per sequence: linear in ``--parallel``, untouched by ``-c``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from watcher.loads import MEMORY_COLS, capacities, device_totals, measured, memory_pool, percentile, role_sum

#: A draft whose weights are at least this share of its target's is "nearly the target's size": it
#: cannot pay for itself (llama.cpp PR #26968 loaded the target as its own draft).
NEAR_TARGET = 0.5
_COLS = MEMORY_COLS
#: A draft suggested in place of another must accept at least this much (low_acceptance's default threshold).
MIN_USEFUL_ACCEPTANCE = 0.30


def _fmt(mib: float) -> str:
    if abs(mib) >= 10240:  # GiB from 10 GiB up: below, one decimal of a GiB hides what a budget turns on
        return f"{mib / 1024:,.1f} GiB"
    return f"{mib:,.0f} MiB" if abs(mib) >= 10 else f"{mib:.2f} MiB"


# -- models ------------------------------------------------------------------------------------------

@dataclass
class ModelView:
    """One model on one host: its newest measured load and what all its loads say."""

    model: str
    host: str
    last: dict[str, Any]
    loads: int = 0
    tasks: list[int] = field(default_factory=list)

    @property
    def parallel(self) -> int:
        return int(self.last.get("n_slots") or 1)

    @property
    def n_ctx(self) -> int | None:
        """Context per slot."""
        v = self.last.get("n_ctx_slot")
        return int(v) if v else None

    @property
    def unified(self) -> bool:
        """One KV cache of -c cells shared by every slot (``kv_unified``): fewer slots free no KV."""
        return bool(self.last.get("kv_unified"))

    def kv(self, device: str | None = None, pooled: bool = False) -> float:
        """KV MiB of target and draft (on one device, or all; ``pooled``: every device of that memory pool)."""
        return self._sum("kv_mib", device, pooled)

    def rs(self, device: str | None = None, pooled: bool = False) -> float:
        """Recurrent-state MiB of target and draft: per sequence (slot), not per token of context."""
        return self._sum("rs_mib", device, pooled)

    def _sum(self, col: str, device: str | None, pooled: bool) -> float:
        return float(sum(r.get(col, 0.0) for r in self.last.get("memory") or []
                         if device is None or (memory_pool(r["device"]) if pooled else r["device"]) == device))

    def cells(self) -> int | None:
        """Context cells allocated in all (what -c sets): n_ctx per slot x slots, or n_ctx when shared."""
        if not self.n_ctx:
            return None
        return self.n_ctx if self.unified else self.n_ctx * self.parallel

    def p99(self) -> int | None:
        return percentile(self.tasks, 99)

    def levers(self, device: str | None = None, pooled: bool = False) -> list[dict[str, Any]]:
        """Changes that free KV and recurrent-state memory, computed from the measured buffers (exact: KV is linear
        in cells, RS in slots). A shorter context frees only KV; fewer slots free RS, and KV unless it is shared."""
        kv, rs, n, ctx = self.kv(device, pooled), self.rs(device, pooled), self.parallel, self.n_ctx
        total = self.cells()
        out: list[dict[str, Any]] = []
        if not kv and not rs:
            return out
        p99 = self.p99()
        if kv and ctx and total and p99:
            fit = 1 << max((p99 - 1).bit_length(), 8)  # smallest power of two holding the p99 task, >= 256
            if fit < ctx:
                out.append({"change": f"context per slot {ctx:,} -> {fit:,} (-c {total:,} -> {total * fit // ctx:,})",
                            "why": f"your p99 task is {p99:,} tokens",
                            "frees_mib": round(kv * (1 - fit / ctx), 1), "kind": "p99_context", "model": self.model})
        if n > 1:
            fewer = n // 2
            if self.unified:  # the slots share -c cells: the KV stays, each slot's recurrent state goes
                keep = f" (-c {ctx:,} unchanged, shared by the slots)" if ctx else ""
                freed = rs * (1 - fewer / n)
            else:
                keep = f" (-c {ctx * n:,} -> {ctx * fewer:,}, {ctx:,} per slot)" if ctx else ""
                freed = (kv + rs) * (1 - fewer / n)
            if freed:
                out.append({"change": f"--parallel {n} -> {fewer}{keep}", "frees_mib": round(freed, 1),
                            "kind": "parallel", "model": self.model})
        # Halving the context is offered only where it still holds the p99 task (or no task was seen):
        # a context below it refuses requests the server really gets.
        if kv and ctx and total and ctx >= 1024 and (p99 is None or ctx // 2 >= p99) and not any(
                o["kind"] == "p99_context" and f"-> {ctx // 2:,} (" in o["change"] for o in out):
            out.append({"change": f"context per slot {ctx:,} -> {ctx // 2:,} (-c {total:,} -> {total // 2:,})",
                        "frees_mib": round(kv / 2, 1), "kind": "context", "model": self.model})
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One JSON row per device (the shape documented in the README)."""
        out = []
        per_dev: dict[str, dict[str, dict[str, float]]] = {}
        for r in self.last.get("memory") or []:
            per_dev.setdefault(r["device"], {})[r["role"]] = {c: r.get(c, 0.0) for c in _COLS}
        cells = self.cells()
        for dev, roles in per_dev.items():
            kv, rs = self.kv(dev), self.rs(dev)
            target = roles.get("target")
            draft = roles.get("draft")
            total = sum(sum(v.values()) for v in roles.values())
            info = (self.last.get("devices") or {}).get(dev) or {}
            out.append({
                "model": self.model, "host": self.host, "device": dev,
                "target": (self.last.get("target") or {}).get("file"),
                "draft": (self.last.get("draft") or {}).get("file"),
                "build": self.last.get("build"),
                "memory": {"target": _rounded(target), "draft": _rounded(draft)},
                "total_mib": round(total, 2),
                "device_total_mib": info.get("total_mib"), "device_free_mib": info.get("free_mib"),
                "n_ctx": self.n_ctx, "parallel": self.parallel,
                # Shared KV (kv_unified) is no slot's own: only the recurrent state is per slot then.
                "kv_per_slot_mib": round(kv / self.parallel, 3) if kv and not self.unified else None,
                "rs_per_slot_mib": round(rs / self.parallel, 3) if rs else None,
                "kv_per_1k_mib": round(kv / cells * 1000, 3) if kv and cells else None,
                "kv_unified": self.unified,
                "loads": self.loads, "tasks": len(self.tasks),
                "task_tokens_max": max(self.tasks) if self.tasks else None,
                "task_tokens_p99": self.p99(),
                "advice": self.levers(dev),
                "last_seen": self.last.get("updated_at"),
            })
        return out


def _rounded(d: Mapping[str, float] | None) -> dict[str, float] | None:
    return {k: round(v, 2) for k, v in d.items()} if d else None


def views(records: Iterable[Mapping[str, Any]], host: str | None = None) -> list[ModelView]:
    """Per (host, model): the newest measured load (by start), every load counted, every task size kept."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for rec in records:
        if host is None or rec.get("host") == host:
            groups.setdefault((str(rec.get("host")), str(rec.get("model"))), []).append(rec)
    out = []
    for (h, model), recs in groups.items():
        done = [r for r in recs if measured(r)]
        if not done:
            continue
        last = max(done, key=lambda r: (r.get("started_at") or 0, r.get("updated_at") or 0))
        out.append(ModelView(model, h, dict(last), loads=len(recs),
                             tasks=[int(t) for r in recs for t in r.get("task_tokens") or []]))
    return out


def model_rows(records: Iterable[Mapping[str, Any]], host: str | None = None) -> list[dict[str, Any]]:
    """``specwatch models --json``."""
    return [row for v in views(records, host) for row in v.rows()]


# -- drafts ------------------------------------------------------------------------------------------

def draft_rows(records: Iterable[Mapping[str, Any]], host: str | None = None) -> list[dict[str, Any]]:
    """Per target, every draft seen with it (and the target alone, for its speed without speculation)."""
    pairs: dict[tuple[str, str | None], dict[str, Any]] = {}
    weights: dict[str, float] = {}
    for rec in records:
        if host is not None and rec.get("host") != host:
            continue
        target = (rec.get("target") or {}).get("file")
        if not target:
            continue
        draft = (rec.get("draft") or {}).get("file")
        p = pairs.setdefault((target, draft), {"target": target, "draft": draft, "loads": 0, "tasks": 0,
                                               "drafted": 0, "accepted": 0, "_len": [], "_tps": [],
                                               "draft_mib": None, "draft_file_mib": None, "builds": []})
        p["loads"] += 1
        p["tasks"] += int(rec.get("tasks") or 0)
        p["drafted"] += int(rec.get("drafted") or 0)
        p["accepted"] += int(rec.get("accepted") or 0)
        if rec.get("mean_len") is not None:
            p["_len"].append(float(rec["mean_len"]))
        if rec.get("gen_tps") is not None:
            p["_tps"].append(float(rec["gen_tps"]))
        if rec.get("build") is not None and rec["build"] not in p["builds"]:
            p["builds"].append(rec["build"])
        if measured(rec):
            w = role_sum(rec, "target", "weights_mib")
            if w:
                weights[target] = w
            if draft:
                d = (role_sum(rec, "draft", "weights_mib") + role_sum(rec, "draft", "kv_mib")
                     + role_sum(rec, "draft", "rs_mib"))
                p["draft_mib"] = round(d, 2) if d else p["draft_mib"]
                p["draft_weights_mib"] = round(role_sum(rec, "draft", "weights_mib"), 2)
        if draft and (rec.get("draft") or {}).get("file_mib"):
            p["draft_file_mib"] = rec["draft"]["file_mib"]
    base_tps = {t: _mean(p["_tps"]) for (t, d), p in pairs.items() if d is None}
    rows = []
    for (target, draft), p in pairs.items():
        if draft is None:
            continue
        tps = _mean(p.pop("_tps"))
        base = base_tps.get(target)
        lens = p.pop("_len")
        p["acceptance"] = round(p["accepted"] / p["drafted"], 4) if p["drafted"] else None
        p["mean_len"] = round(sum(lens) / len(lens), 3) if lens else None
        p["tps"] = tps
        p["tps_without"] = base_tps.get(target)
        p["speedup"] = round(tps / base, 3) if tps and base else None
        tw = weights.get(target)
        dw = p.get("draft_weights_mib") or p.get("draft_file_mib")
        p["same_as_target"] = draft == target
        p["near_target_size"] = bool(tw and dw and dw >= NEAR_TARGET * tw)
        # Accepted tokens per GiB of draft memory: what the memory buys (the best value is the highest).
        p["accepted_per_gib"] = (round(p["acceptance"] * (p["mean_len"] or 1) / (p["draft_mib"] / 1024), 3)
                                 if p["acceptance"] is not None and p["draft_mib"] else None)
        p.pop("draft_weights_mib", None)
        rows.append(p)
    best: dict[str, dict[str, Any]] = {}
    for p in rows:
        cur = best.get(p["target"])
        # Only a draft that pays at all can be the best value: one measured slower than the target alone, or
        # accepting under low_acceptance's threshold, buys nothing with its memory however little it takes.
        pays = ((p["acceptance"] or 0) >= MIN_USEFUL_ACCEPTANCE and not p["same_as_target"]
                and (p["speedup"] is None or p["speedup"] >= 1.0))
        if pays and p["accepted_per_gib"] is not None and (cur is None
                                                            or p["accepted_per_gib"] > cur["accepted_per_gib"]):
            best[p["target"]] = p
    for p in rows:
        p["best_value"] = best.get(p["target"]) is p
    return sorted(rows, key=lambda p: (p["target"], -(p["acceptance"] or 0)))


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


# -- budget ------------------------------------------------------------------------------------------

#: Which change to suggest first when several would make room: the ones that cost the fewest requests.
_PREFERENCE = {"p99_context": 0, "smaller_draft": 1, "parallel": 2, "context": 3}


@dataclass
class DeviceFit:
    """One device in a budget."""

    device: str
    capacity_mib: float | None
    parts: list[tuple[str, float]]
    changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_mib(self) -> float:
        return sum(v for _, v in self.parts)

    @property
    def headroom_mib(self) -> float | None:
        return None if self.capacity_mib is None else self.capacity_mib - self.total_mib

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_mib is None else self.total_mib <= self.capacity_mib

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "capacity_mib": self.capacity_mib, "total_mib": round(self.total_mib, 1),
                "headroom_mib": None if self.headroom_mib is None else round(self.headroom_mib, 1),
                "fits": self.fits, "models": [{"model": m, "mib": round(v, 1)} for m, v in self.parts],
                "changes": self.changes}


class UnknownModelError(LookupError):
    """A model no load record names."""


def find(all_views: list[ModelView], name: str) -> ModelView:
    """The model a user means: its llama-swap id or key, else a target file; newest on any host."""
    hits = [v for v in all_views if v.model == name]
    hits = hits or [v for v in all_views if (v.last.get("target") or {}).get("file") == name]
    if not hits:
        known = ", ".join(sorted({v.model for v in all_views})) or "none recorded yet"
        raise UnknownModelError(f"no measured load of {name!r} (known: {known})")
    return max(hits, key=lambda v: v.last.get("updated_at") or 0)


def budget(records: list[dict[str, Any]], names: list[str], given: Mapping[str, float] | None = None,
           host: str | None = None) -> list[DeviceFit]:
    """Would ``names`` fit together, per device, and if not, the cheapest change(s) that make room."""
    all_views = views(records, host)
    chosen = [find(all_views, n) for n in names]
    caps = capacities(records, given, hosts={v.host for v in chosen})
    fits: dict[str, DeviceFit] = {}
    for v in chosen:
        for dev, mib in device_totals(v.last).items():
            fits.setdefault(dev, DeviceFit(dev, caps.get(dev), [])).parts.append((v.model, mib))
    drafts = draft_rows(records, host)
    for fit in fits.values():
        if fit.fits is not False:
            continue
        need = -(fit.headroom_mib or 0)
        options = [lv for v in chosen for lv in v.levers(fit.device, pooled=True) if lv["frees_mib"] > 0]
        options += _smaller_drafts(chosen, drafts, fit.device)
        options.sort(key=lambda o: (_PREFERENCE[o["kind"]], -o["frees_mib"]))
        single = [o for o in options if o["frees_mib"] >= need]
        if single:
            fit.changes = [single[0]]
            continue
        picked, got, used = [], 0.0, set()
        for o in sorted(options, key=lambda o: -o["frees_mib"]):
            if (o["model"], o["kind"] in ("parallel", "context", "p99_context")) in used:
                continue  # KV levers of one model do not add up: each is a share of the same cache
            picked.append(o)
            got += o["frees_mib"]
            used.add((o["model"], o["kind"] in ("parallel", "context", "p99_context")))
            if got >= need:
                break
        fit.changes = picked
    return list(fits.values())


def _smaller_drafts(chosen: list[ModelView], drafts: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    out = []
    for v in chosen:
        target = (v.last.get("target") or {}).get("file")
        cur = (v.last.get("draft") or {}).get("file")
        if not cur:
            continue
        now = sum(r["weights_mib"] + r["kv_mib"] + r.get("rs_mib", 0.0) for r in v.last.get("memory") or []
                  if r["role"] == "draft" and memory_pool(r["device"]) == device)
        for d in drafts:
            # Only a draft that really drafted: one that accepts (almost) nothing frees memory by being useless.
            useful = d["acceptance"] is not None and d["acceptance"] >= MIN_USEFUL_ACCEPTANCE
            if d["target"] == target and d["draft"] != cur and useful and d["draft_mib"] and d["draft_mib"] < now:
                acc = f", acceptance {d['acceptance']:.0%}" if d["acceptance"] is not None else ""
                out.append({"change": f"draft {cur} -> {d['draft']}", "why": f"seen with this target before{acc}",
                            "frees_mib": round(now - d["draft_mib"], 1), "kind": "smaller_draft", "model": v.model})
    return out


def fmt(mib: float) -> str:
    """MiB as people read them: GiB from 10 GiB up (below, one decimal of a GiB hides what a budget turns on)."""
    return _fmt(mib)
