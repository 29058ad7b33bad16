"""What load records add up to: the seed story's numbers through budget, advice and the scorecard."""

from __future__ import annotations

from typing import Any

import pytest

from watcher import fleet


def load(key: str, model: str, target: str, roles: dict[str, tuple[float, float, float]], *, draft: str | None = None,
         slots: int = 1, ctx: int = 4096, tasks: list[int] | None = None, drafted: int = 0, accepted: int = 0,
         t: float = 0.0, device: str = "ROCm0") -> dict[str, Any]:
    """A load record as watcher.loads writes it (only the fields fleet reads)."""
    return {"key": key, "host": "evo-x2", "model": model, "build": 9000, "ended": "stopped",
            "target": {"file": target}, "draft": {"file": draft} if draft else None,
            "n_slots": slots, "n_ctx_slot": ctx, "task_tokens": tasks or [], "tasks": len(tasks or []),
            "drafted": drafted, "accepted": accepted, "started_at": t, "updated_at": t,
            "devices": {device: {"total_mib": None, "free_mib": None}},
            "memory": [{"device": device, "role": r, "weights_mib": w, "kv_mib": kv, "compute_mib": c}
                       for r, (w, kv, c) in roles.items()]}


EMBED = load("e", "embed", "qwen3-embedding-8b.gguf", {"target": (1100.0, 21504.0, 1766.0)}, slots=16, ctx=8192,
             tasks=[800] * 490 + [2532] * 10)  # the largest 2% are 2,532 tokens: p99 is 2,532
BIG_4B = load("b", "qwen3.5-122b", "qwen3.5-122b-a10b-q4_k_m.gguf",
              {"target": (70000.0, 1024.0, 512.0), "draft": (2400.0, 900.0, 500.0)}, draft="qwen3-4b.gguf",
              drafted=10000, accepted=6400, t=1.0)
BIG_06B = load("s", "qwen3.5-122b-small-draft", "qwen3.5-122b-a10b-q4_k_m.gguf",
               {"target": (70000.0, 1024.0, 512.0), "draft": (400.0, 150.0, 100.0)}, draft="qwen3-0.6b.gguf",
               drafted=10000, accepted=6100, t=2.0)
CAP = {"ROCm0": 98304.0}  # 96 GiB of the 160 GB unified memory given to the GPU


def test_seed_story_does_not_fit_and_the_p99_context_makes_room() -> None:
    """Embedding (23.8 GiB) + 122B with 4B draft (73.6 GiB) exceed 96 GiB; a p99-sized context frees 10.5 GiB."""
    (fit,) = fleet.budget([EMBED, BIG_4B, BIG_06B], ["embed", "qwen3.5-122b"], CAP)
    assert fit.fits is False and fit.total_mib == pytest.approx(24370 + 75336)
    (change,) = fit.changes
    assert change["kind"] == "p99_context" and change["model"] == "embed"
    assert change["frees_mib"] == 10752.0  # half the KV: 8,192 -> 4,096 per slot still holds 2,532 tokens
    assert "your p99 task is 2,532 tokens" in change["why"]


def test_without_task_sizes_the_smaller_draft_seen_before_is_cheapest() -> None:
    """With no task sizes, a 0.6B draft that accepted well with this target beats cutting slots."""
    embed = dict(EMBED, task_tokens=[], tasks=0)
    (fit,) = fleet.budget([embed, BIG_4B, BIG_06B], ["embed", "qwen3.5-122b"], CAP)
    (change,) = fit.changes
    assert change["kind"] == "smaller_draft" and change["change"] == "draft qwen3-4b.gguf -> qwen3-0.6b.gguf"
    assert change["frees_mib"] == 3300.0 - 550.0


def test_a_draft_that_accepts_nothing_is_never_suggested() -> None:
    """A smaller draft with 5% acceptance frees memory by being useless: fewer slots are suggested instead."""
    useless = dict(BIG_06B, accepted=500)
    embed = dict(EMBED, task_tokens=[], tasks=0)
    (fit,) = fleet.budget([embed, BIG_4B, useless], ["embed", "qwen3.5-122b"], CAP)
    assert [c["kind"] for c in fit.changes] == ["parallel"]
    assert fit.changes[0]["change"].startswith("--parallel 16 -> 8") and fit.changes[0]["frees_mib"] == 10752.0


def test_fits_when_capacity_allows() -> None:
    """The same pair with 128 GiB fits and suggests nothing."""
    (fit,) = fleet.budget([EMBED, BIG_4B], ["embed", "qwen3.5-122b"], {"ROCm0": 131072.0})
    assert fit.fits is True and fit.changes == [] and fit.headroom_mib == pytest.approx(131072 - 99706)


def test_unknown_model_names_the_known_ones() -> None:
    """budget of a model never recorded raises, listing what is known."""
    with pytest.raises(fleet.UnknownModelError, match="known: embed"):
        fleet.budget([EMBED], ["nope"], CAP)


def test_scorecard_flags_the_target_as_its_own_draft() -> None:
    """A draft whose file is the target's (PR #26968) is marked, as is one nearly its size."""
    own = load("o", "self", "t.gguf", {"target": (1000.0, 10.0, 5.0), "draft": (1000.0, 10.0, 5.0)},
               draft="t.gguf", drafted=100, accepted=100)
    half = load("h", "half", "t.gguf", {"target": (1000.0, 10.0, 5.0), "draft": (600.0, 10.0, 5.0)},
                draft="h.gguf", drafted=100, accepted=90)
    small = load("s", "small", "t.gguf", {"target": (1000.0, 10.0, 5.0), "draft": (100.0, 10.0, 5.0)},
                 draft="s.gguf", drafted=100, accepted=70)
    rows = {r["draft"]: r for r in fleet.draft_rows([own, half, small])}
    assert rows["t.gguf"]["same_as_target"] and rows["t.gguf"]["near_target_size"]
    assert rows["h.gguf"]["near_target_size"] and not rows["h.gguf"]["same_as_target"]
    assert not rows["s.gguf"]["near_target_size"]
    assert rows["s.gguf"]["best_value"]  # 70% for 110 MiB beats 100% for 1,010 MiB
    assert rows["s.gguf"]["draft_mib"] == 110.0


def test_no_context_advice_below_the_p99_task() -> None:
    """With 2,048 tokens per slot and a p99 task of 1,066, no change proposes a context that cannot hold it."""
    chat = load("c", "chat", "mid.gguf", {"target": (53.0, 128.0, 16.0)}, slots=4, ctx=2048, tasks=[1066, 301, 76])
    (row,) = fleet.model_rows([chat])
    per_slot = [a for a in row["advice"] if a["kind"] in ("context", "p99_context")]
    assert per_slot == []  # 1,024 tokens per slot would refuse the p99 task
    assert [a["change"].split(" (")[0] for a in row["advice"]] == ["--parallel 4 -> 2"]


def test_budget_takes_the_capacity_of_the_host_asked_about() -> None:
    """budget --host uses that host's reported memory, not a bigger box's of the same device name."""
    small = dict(EMBED, devices={"ROCm0": {"total_mib": 24576.0, "free_mib": None}})
    big = dict(BIG_4B, host="other-box", devices={"ROCm0": {"total_mib": 196608.0, "free_mib": None}})
    (fit,) = fleet.budget([small, big], ["embed"], host="evo-x2")
    assert fit.capacity_mib == 24576.0 and fit.fits is True
    both = fleet.budget([small, big], ["embed", "qwen3.5-122b"])  # on one box: the smaller one decides
    assert both[0].capacity_mib == 24576.0 and both[0].fits is False


def test_pinned_host_buffers_are_budgeted_as_host_memory() -> None:
    """CUDA_Host buffers (pinned system RAM) count against the host's memory, not an unknown device of their own."""
    rec = load("g", "qwen3-32b", "qwen3-32b.gguf", {"target": (18000.0, 4096.0, 300.0)}, device="CUDA0")
    rec["memory"].append({"device": "CUDA_Host", "role": "target", "weights_mib": 0.0, "kv_mib": 0.0,
                          "compute_mib": 40.0})
    rec["memory"].append({"device": "CPU", "role": "target", "weights_mib": 500.0, "kv_mib": 0.0,
                          "compute_mib": 0.0})
    fits = {f.device: f for f in fleet.budget([rec], ["qwen3-32b"], {"CUDA0": 24576.0, "CPU": 65536.0})}
    assert set(fits) == {"CUDA0", "CPU"}
    assert fits["CPU"].total_mib == 540.0 and fits["CPU"].fits is True


def test_best_value_never_marks_a_draft_that_slows_generation_or_drafts_nothing_useful() -> None:
    """A draft measured slower than its target alone, or accepting under 30%, is not the best value for memory."""
    alone = load("a", "t", "t.gguf", {"target": (1000.0, 10.0, 5.0)})
    alone["gen_tps"] = 100.0
    slow = load("s", "t+s", "t.gguf", {"target": (1000.0, 10.0, 5.0), "draft": (50.0, 5.0, 5.0)},
                draft="s.gguf", drafted=100, accepted=90)
    slow["gen_tps"] = 60.0  # 0.6x: it costs speed as well as memory
    poor = load("p", "t+p", "t.gguf", {"target": (1000.0, 10.0, 5.0), "draft": (20.0, 2.0, 5.0)},
                draft="p.gguf", drafted=100, accepted=25)
    good = load("g", "t+g", "t.gguf", {"target": (1000.0, 10.0, 5.0), "draft": (400.0, 10.0, 5.0)},
                draft="g.gguf", drafted=100, accepted=70)
    good["gen_tps"] = 150.0
    rows = {r["draft"]: r for r in fleet.draft_rows([alone, slow, poor, good])}
    assert rows["s.gguf"]["speedup"] == 0.6 and not rows["s.gguf"]["best_value"]
    assert not rows["p.gguf"]["best_value"]
    assert rows["g.gguf"]["best_value"]
