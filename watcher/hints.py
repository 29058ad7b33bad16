"""Hints computed from the numbers in the log: what to change, and how much memory each change frees."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from watcher.incidents import Incident, basename

if TYPE_CHECKING:
    from watcher.state.model import Run


def _m(v: float) -> str:
    return f"{v:,.0f} MiB"


#: What each lever is called where the user changes it: llama-server's flags, or LM Studio's model settings
#: (a log with LM Studio's record headers). A lever a host does not offer is left out of its advice.
#: LM Studio's names as its documentation spells them (lmstudio-ai/docs): "Max Concurrent Predictions"
#: (0_app/5_advanced/parallel-requests.md), the "Speculative Decoding" section of the chat sidebar
#: (0_app/5_advanced/speculative-decoding.md), context length and GPU offload as load settings
#: (3_cli/0_local-models/load.md: lms load --context-length, --gpu). The draft size has no documented label,
#: so it is described rather than named.
_LEVERS: dict[str, dict[str, str]] = {
    "llama.cpp": {
        "parallel": "--parallel",
        "context_name": "context",
        "context": "the context (-c)",
        "draft_context": "the draft context (-cd / --spec-draft-ctx-size on older builds, -c overall)",
        # b9109 removed -cd: the draft's context is the server's.
        "draft_context_b9109": "the context (-c; the draft's context follows it)",
        "draft_kv_q8": "a q8_0 draft KV cache (-ctkd q8_0 -ctvd q8_0)",
        "gpu_layers": "fewer target GPU layers (-ngl)",
        "fit_target": "keep room with -fitt (--fit-target, MiB per device) or fewer target layers (-ngl)",
        "draft_max": "lower --spec-draft-n-max",
        "draft_offload": "Offload the draft too: -ngld 99 (or --spec-draft-ngl) and, with several GPUs, -devd.",
        "update": "update llama.cpp",
    },
    "lmstudio": {
        "parallel": "Max Concurrent Predictions",
        "context_name": "Context Length",
        "context": "the model's Context Length",
        "draft_context": "the model's Context Length (the draft gets the same context)",
        "gpu_layers": "less GPU Offload for the main model",
        "fit_target": "keep room by lowering the main model's GPU Offload",
        "draft_max": "lower the maximum draft size in the Speculative Decoding settings",
        "draft_offload": "Offload the draft too: LM Studio places it with the main model, so check that the "
                         "runtime uses the GPU (a GPU runtime selected, GPU Offload above 0).",
        "update": "update LM Studio's llama.cpp runtime",
    },
    # ollama's names: num_ctx and num_gpu (layers on the GPU) as `/set parameter` lists them (ollama's
    # cmd/interactive.go; Modelfile PARAMETER and the API's options take the same names), OLLAMA_NUM_PARALLEL as
    # its FAQ (docs/faq.md, "How does Ollama handle concurrent requests?") defines it. It sets no draft options.
    "ollama": {
        "parallel": "OLLAMA_NUM_PARALLEL",
        "context_name": "num_ctx",
        "context": "the context (num_ctx)",
        "draft_context": "the context (num_ctx)",
        "gpu_layers": "fewer GPU layers (num_gpu)",
        "fit_target": "keep room with fewer GPU layers (num_gpu)",
        "update": "update ollama",
    },
    # koboldcpp's flags as its own option dump prints them (Namespace(... contextsize, draftamount, draftgpulayers,
    # draftgpusplit, draftmodel, gpulayers ...), koboldcpp 1.87-1.113 start-up). Its KV cache is not per slot,
    # so there is no slot lever.
    "koboldcpp": {
        "context_name": "--contextsize",
        "context": "the context (--contextsize)",
        "draft_context": "the context (--contextsize; the draft's context follows it)",
        "gpu_layers": "fewer GPU layers (--gpulayers)",
        "fit_target": "keep room with fewer GPU layers (--gpulayers)",
        "draft_max": "lower --draftamount",
        "draft_offload": "Offload the draft too: --draftgpulayers 999 and, with several GPUs, --draftgpusplit.",
        "update": "update koboldcpp",
    },
}
#: Levers a host has no option name for (or none known): what to change, without a flag.
_UNNAMED = {
    "draft_max": "a smaller maximum draft size",
    "draft_offload": "Offload the draft to the GPU too, as the main model is.",
    "update": "update llama.cpp",
}
_FLAG = re.compile(r"(?:^|[\s(])--?[a-z]")
#: Where a host's options are set, said after advice in llama-server's flags (llama-swap runs llama-server
#: with the ``cmd`` of each model in its config file: github.com/mostlygeek/llama-swap, config.example.yaml).
_WHERE = {"llama-swap": " (llama-swap: change the flags in this model's cmd in its config file.)"}

#: Advice by the cause a pattern or a state rule found; ``{impl}`` is the speculative type the log named.
_BY_CAUSE: dict[str, str] = {
    "no_spec_type": (
        "llama.cpp b9464+ loads a draft given with -md but does not use it without a speculative type: add "
        "--spec-type draft-simple (or the draft's own type: draft-eagle3, draft-dflash, draft-mtp). Until then "
        "this server is slower and holds the draft's memory for nothing."),
    "spec_type_without_draft": (
        "--spec-type {impl} needs a draft model: give it with -md (--model-draft), or drop --spec-type "
        "{impl} (an n-gram type such as ngram-mod speculates without a draft)."),
    "draft_kind_mismatch": (
        "{head} speculation needs {a_head} head made for this target, not an ordinary draft model: give the "
        "matching head as the draft, or keep this draft and use it as a plain one with --spec-type draft-simple."),
}
#: A head type's name as its authors write it, and its article.
_HEADS = {"eagle3": ("EAGLE-3", "an"), "dflash": ("DFlash", "a"), "dspark": ("DSpark", "a")}

#: The same advice in LM Studio's words, where its log says so: LM Studio chooses the speculative type itself
#: and takes the draft in the Speculative Decoding settings (0_app/5_advanced/speculative-decoding.md).
_LMSTUDIO: dict[str, str] = {
    "no_spec_type": (
        "LM Studio's llama.cpp runtime loaded the draft but does not use it (no speculative type was set up): "
        "update LM Studio and its llama.cpp runtime, and choose the draft again in the Speculative Decoding "
        "settings. Until then this model is slower and holds the draft's memory for nothing."),
    "spec_type_without_draft": (
        "Speculative decoding ({impl}) is on without a draft model: choose one in the Speculative Decoding "
        "settings, or turn speculative decoding off."),
    "draft_kind_mismatch": (
        "{head} speculation needs {a_head} head made for this target, not an ordinary draft model: choose the "
        "matching head as the draft in the Speculative Decoding settings, or a plain draft of the target's "
        "family."),
    "draft_head_alone": (
        "{name} is a draft head (MTP assistant, EAGLE3 or DFlash head), not a model: load its target and choose "
        "this file as the target's draft in the Speculative Decoding settings. If it already is the draft, this "
        "runtime does not hand it the target's context: update LM Studio's llama.cpp runtime."),
    "no_mtp_layers": (
        "Use a GGUF of this model that contains its MTP layers (often a separate '-MTP' file or variant), or turn "
        "speculative decoding off for it; without them there is nothing to draft with."),
    "no_gpu": (
        "LM Studio's llama.cpp runtime found no usable GPU: select a GPU runtime (CUDA, ROCm, Vulkan, Metal) and "
        "check that the device is visible to it; a draft on the CPU rarely makes decoding faster."),
    "draft_not_found": "Check the draft chosen in the Speculative Decoding settings: the file is not where LM Studio "
                       "looks for it (moved or deleted).",
    "index_error": (
        "The draft GGUF is usually fine (reporters load it alone without error): llama.cpp failed an index check "
        "while placing the draft's layers on the devices, seen with little free VRAM left. Lower the main "
        "model's GPU Offload or its Context Length, or update LM Studio's llama.cpp runtime."),
    "unknown_arch": (
        "This runtime does not know the draft's architecture ('{arch}'): update LM Studio's llama.cpp runtime. "
        "An MTP/assistant head also needs LM Studio to run it as MTP rather than as a plain draft."),
    "bad_gguf": "Download the draft again in LM Studio; the file is not readable by this runtime.",
    "inferred": (
        "Check that the draft is really used: a draft model chosen in the Speculative Decoding settings, accepted "
        "draft tokens shown in the chat (the setting to visualise them), and an up-to-date llama.cpp runtime."),
    "head_as_plain": (
        "The draft is a {head} head (llama.cpp said it needs the target's context) and LM Studio ran it as a "
        "plain draft: update LM Studio and its runtime, or serve without the draft until fixed."),
    "runtime_error": "Requests fail with HTTP 500: update LM Studio's llama.cpp runtime, or turn speculative "
                     "decoding off until fixed.",
}


#: The same advice for a host whose speculative settings are not known by name (ollama, koboldcpp): what to
#: change, without llama-server's flags; ``{host}`` is the program's name.
_OTHER_HOST: dict[str, str] = {
    "no_spec_type": (
        "{host}'s llama.cpp (b9464+) loaded the draft but does not use it without a speculative type: update "
        "{host}. Until then this server is slower and holds the draft's memory for nothing."),
    "spec_type_without_draft": (
        "Speculative decoding ({impl}) is set up without a draft model: give {host} a draft model, or turn "
        "speculative decoding off."),
    "draft_kind_mismatch": (
        "{head} speculation needs {a_head} head made for this target, not an ordinary draft model: give {host} "
        "the matching head as the draft, or a plain draft of the target's family."),
    "draft_head_alone": (
        "{name} is a draft head (MTP assistant, EAGLE3 or DFlash head), not a model: load its target as the model "
        "and this file as its draft. If it already is the draft, this build does not hand it the target's "
        "context: update {host}."),
    "no_mtp_layers": (
        "Use a GGUF of this model that contains its MTP layers (often a separate '-MTP' file or variant), or turn "
        "MTP off; without them there is nothing to draft with."),
    "no_gpu": (
        "{host}'s llama.cpp found no usable GPU: use a GPU build of {host} and check that the device is visible "
        "(driver, CUDA_VISIBLE_DEVICES, the container's GPU access); a draft on the CPU rarely makes decoding "
        "faster."),
    "draft_not_found": "Check the path of the draft model given to {host}.",
    "index_error": (
        "The draft GGUF is usually fine (reporters load it alone without error): llama.cpp failed an index check "
        "while placing the draft's layers on the devices, seen with little free VRAM left. Leave more VRAM free "
        "(fewer GPU layers, a smaller context) or update {host}."),
    "bad_gguf": "Re-download or re-convert the draft GGUF; the file is not readable by this {host} build.",
    "inferred": (
        "Check that the draft is really used: draft statistics (draft acceptance) should follow each request; "
        "update {host} if they never do."),
    "head_as_plain": (
        "The draft is a {head} head (llama.cpp said it needs the target's context) and ran as a plain draft: run "
        "it as MTP where {host} offers that, update {host}, or serve without the draft until fixed."),
}
_HOST_NAMES = {"ollama": "ollama", "koboldcpp": "koboldcpp"}


def _in_host_words(run: Run, key: str) -> str | None:
    """The advice ``key`` in the words of the program whose log it is, where that is not llama-server's."""
    if run.host == "lmstudio":
        return _LMSTUDIO.get(key)
    name = _HOST_NAMES.get(run.host or "")
    text = _OTHER_HOST.get(key) if name else None
    # Not str.format: the caller fills the advice's own fields ({impl}, {head}, {name}) afterwards.
    return text.replace("{host}", name) if text and name else None


def _lever(run: Run, name: str, **kw: object) -> str | None:
    """The lever ``name`` in the words of the program that wrote the log, or None where it has none."""
    levers = _LEVERS.get(run.host or "llama.cpp", _LEVERS["llama.cpp"])
    if name == "draft_context" and (run.build or run.min_build or 0) >= 9109:
        name = "draft_context_b9109" if "draft_context_b9109" in levers else name
    # A lever the host names no option for is described, never given in llama-server's flags.
    words = levers.get(name, _UNNAMED.get(name))
    return words.format(**kw) if words else None


def _slots(run: Run) -> int | None:
    """How many slots the server runs, when the log says."""
    return run.n_slots or (len(run.slots) or None)


def _on_cpu(inc: Incident) -> bool:
    """Whether the failed allocation was in host memory (the CPU backend), where GPU layers do not matter."""
    return bool(inc.device) and str(inc.device).upper().startswith("CPU")


def kv_levers(kv_mib: float, n_ctx: int | None, n_slots: int = 1, free_mib: float | None = None, *,
              parallel: str = "--parallel", context: str = "context") -> list[tuple[str, float]]:
    """What each lever frees from a KV cache of ``kv_mib`` over ``n_slots`` contexts of ``n_ctx`` tokens.

    KV memory is linear in context and in slots (llama.cpp pre-allocates every slot's full context),
    so the levers are exact up to rounding: halve the context, drop to fewer slots, or, given the free
    memory the device reported, the largest power-of-two context that would have fitted. ``parallel`` and
    ``context`` name the slot count and the context where the user sets them.
    """
    out: list[tuple[str, float]] = []
    per_slot = kv_mib / max(n_slots, 1)
    if n_ctx:
        out.append((f"{context} {n_ctx // 2:,} instead of {n_ctx:,}", kv_mib / 2))
    if n_slots > 1:
        for fewer in sorted({n_slots // 2, 1}, reverse=True):
            if 0 < fewer < n_slots:
                out.append((f"{parallel} {fewer} instead of {n_slots}", per_slot * (n_slots - fewer)))
    if n_ctx and free_mib is not None and free_mib < kv_mib:
        per_token = kv_mib / (n_ctx * max(n_slots, 1))
        fit = 1 << max(int(free_mib / per_token / max(n_slots, 1)).bit_length() - 1, 0)
        if fit < n_ctx:
            out.append((f"{context} {fit:,} (fits the {free_mib:,.0f} MiB free)",
                        kv_mib - per_token * fit * max(n_slots, 1)))
    return out


def for_incident(inc: Incident, run: Run) -> str:
    """The hint for one incident, in the words of the program whose log it is; empty when there is nothing to say."""
    hint = _advice(inc, run)
    return hint + _WHERE.get(run.host or "", "") if _FLAG.search(hint) else hint


def _advice(inc: Incident, run: Run) -> str:
    cause = inc.extra.get("cause")
    if cause in _BY_CAUSE:
        impl = str(inc.extra.get("impl") or "draft-simple")
        name, article = _HEADS.get(impl.lower().removeprefix("draft-").replace("-", ""), ("EAGLE-3 or DFlash", "an"))
        text = _in_host_words(run, str(cause)) or _BY_CAUSE[str(cause)]
        return text.format(impl=impl, head=name, a_head=f"{article} {name}")
    host_text = _in_host_words(run, str(cause)) if cause in ("draft_head_alone", "no_mtp_layers", "no_gpu") else None
    if host_text:
        return host_text.format(name=basename(inc.draft_model) or "This file")
    match inc.kind:
        case "draft_context_failed" | "draft_load_failed" if cause == "draft_head_alone":
            return (f"{basename(inc.draft_model) or 'This file'} is a draft head (MTP assistant, EAGLE3 or DFlash "
                    "head), not a model: load its target with -m and this file as the draft (-md, with "
                    "--spec-type draft-mtp for an MTP assistant); in LM Studio choose it as the draft of its "
                    "target model. If it already is the draft, this build does not hand it the target's "
                    "context: update llama.cpp.")
        case "draft_context_failed" if cause == "no_mtp_layers":
            return ("Use a GGUF of this model that contains its MTP layers (often a separate '-MTP' file or "
                    "variant), or drop --spec-type draft-mtp; without them there is nothing to draft with.")
        case "draft_on_cpu" if cause == "no_gpu":
            return ("This llama.cpp found no usable GPU when it read its options: use a GPU build (CUDA, ROCm, "
                    "Vulkan, Metal) and check that the device is visible (driver, CUDA_VISIBLE_DEVICES, the "
                    "container's GPU access); a draft on the CPU rarely makes decoding faster.")
        case "draft_context_failed":
            return _draft_memory(inc, run)
        case "draft_load_failed":
            if cause == "memory":
                return _draft_memory(inc, run)
            if cause == "missing_file":
                return _in_host_words(run, "draft_not_found") or (
                    "Check the draft path (-md / --spec-draft-model, or the draft chosen in LM Studio).")
            if cause == "index_error":
                return _in_host_words(run, "index_error") or (
                        "The draft GGUF is usually fine (reporters load it alone without error): llama.cpp failed an "
                        "index check while placing the draft's layers on the devices, seen with little free VRAM "
                        "left or an unusual tensor split. Try fewer draft GPU layers (-ngld), another device for the "
                        "draft (-devd), a smaller target context (-c), or a newer llama.cpp.")
            if cause == "unknown_arch":
                arch = inc.extra.get("arch") or "?"
                lms = _in_host_words(run, "unknown_arch")
                if lms:
                    return lms.format(arch=arch)
                if run.host in ("koboldcpp", "ollama"):
                    return f"This build does not know the draft's architecture ('{arch}'): {_lever(run, 'update')}."
                return (f"This build does not know the draft's architecture ('{arch}'): update llama.cpp (or the "
                        "host: koboldcpp, the LM Studio runtime). An MTP/assistant head also needs the MTP mode "
                        "(--spec-type draft-mtp) rather than a plain draft.")
            if cause == "bad_gguf":
                return _in_host_words(run, "bad_gguf") or (
                    "Re-download or re-convert the draft GGUF; the file is not readable by this llama.cpp build.")
            return "Read the evidence lines: the draft model did not load."
        case "spec_disabled":
            if inc.confidence == "inferred":
                return _in_host_words(run, "inferred") or (
                        "Check that the draft is really used: on llama.cpp b9464+ pass --spec-type draft-simple "
                        "with -md; run with -lv 4 to see speculation init lines; /slots shows \"speculative\" per "
                        "slot.")
            if inc.extra.get("follows"):
                who = "LM Studio" if run.host == "lmstudio" else "The server"
                return (f"{who} reloaded the model without its draft because the draft failed (incident "
                        f"{str(inc.extra['follows'])[:8]}): fix that failure as its advice says, then load the "
                        "model with its draft again; until then this server is slower.")
            return "Reload with the draft (or fix the draft failure above) before serving; this server is slower."
        case "spec_unsupported":
            if cause == "unsupported_batched":
                return ("LM Studio's MLX engine gives a draft only to unbatched models: set Max Concurrent "
                        "Predictions to 1 explicitly (MLX runtimes from Feb 2026 on; update the runtime), or use "
                        "the model's GGUF (llama.cpp engine) with the draft.")
            return "Use a target whose context supports speculation, or drop the draft to free its memory."
        case "draft_incompatible":
            return ("Pick a draft from the same model family and tokenizer as the target "
                    f"({basename(inc.model) or 'target'}).")
        case "low_acceptance":
            return (f"The draft predicts the target poorly: use a draft of the same family/fine-tune, "
                    f"{_lever(run, 'draft_max')}, or drop the draft to get its memory back.")
        case "draft_on_cpu":
            return str(_lever(run, "draft_offload"))
        case "main_model_oom":
            return _target_memory(inc, run)
        case "spec_runtime_error":
            if run.draft_head and run.spec_mode != "mtp":
                lms = _in_host_words(run, "head_as_plain")
                if lms:
                    return lms.format(head=run.draft_head)
                return (f"The draft is a {run.draft_head} head (llama.cpp said it needs the target's context): "
                        "if it was attached as a plain draft, use --spec-type draft-mtp (or the host's MTP "
                        "setting); otherwise update llama.cpp, or serve without the draft until fixed.")
            return _in_host_words(run, "runtime_error") or (
                f"Requests fail with HTTP 500: {_lever(run, 'update')}, or serve without the draft until fixed.")
    return ""


def _target_memory(inc: Incident, run: Run) -> str:
    """The target did not fit: its KV levers, and -ngl only where layers sit on a GPU."""
    kv = run.ledger.total("target", "kv")
    n = _slots(run) or 1
    ngl = None if _on_cpu(inc) else _lever(run, "gpu_layers")
    tail = f"{ngl} or a smaller quantisation" if ngl else "a smaller quantisation"
    if kv and n > 1:
        found = kv_levers(kv, run.n_ctx_slot, n, parallel=str(_lever(run, "parallel")),
                          context=str(_lever(run, "context_name")))
        levers = "; ".join(f"{what} frees {_m(v)}" for what, v in found)
        return (f"The target's KV cache takes {_m(kv)} for {n} slots ({_m(kv / n)} each, pre-allocated): "
                f"{levers}; or {tail}.")
    # Fewer slots only where the server may run more than one.
    fewer = _lever(run, "parallel") if _slots(run) != 1 else None
    options = [f"lower {_lever(run, 'context')}", *([f"run fewer slots ({fewer})"] if fewer else [])]
    where = "host memory (CPU backend)" if _on_cpu(inc) else (inc.device or "the device")
    lead = f"The target needed {_m(inc.mib)} more on {where}" if inc.mib else "The target did not fit"
    return f"{lead}: {', '.join(options)}, or use {tail}."


def _draft_memory(inc: Incident, run: Run) -> str:
    """The seed case: the draft's KV cache did not fit; show what each lever frees."""
    mib = inc.mib
    dev = inc.device or "the device"
    fewer = f"{_lever(run, 'parallel')} 1" if _slots(run) != 1 else None
    if not mib:
        alt = f", fewer slots ({fewer})" if fewer else ""
        return (f"The draft's context did not fit: lower {_lever(run, 'draft_context')}{alt}, or use a smaller "
                "draft." + _fit_notes(run))
    attempts = int(inc.extra.get("failed_allocations", 1) or 1)
    # Builds before b9109 give every slot a draft context of its own; the log shows it as one failure per
    # slot. Only then is the draft's memory per slot (a shared context fails once, whatever the slot count).
    n = len(inc.slots)
    parts = []
    if n > 1 and attempts >= n and fewer:
        parts.append(f"each of the {n} slots creates its own draft context of {_m(mib)} on {dev} "
                     f"({_m(mib * n)} in all); {fewer} needs {_m(mib)}, i.e. frees {_m(mib * (n - 1))}")
    cells = run.ledger.kv_cells.get("draft") or run.n_ctx_slot or _max_slot_ctx(run)
    ctx = _lever(run, "draft_context")
    if cells:
        per_tok_kib = mib * 1024 / cells
        inc.extra["draft_kv_kib_per_token"] = round(per_tok_kib, 2)
        half = cells // 2
        parts.append(f"the draft context of {cells:,} tokens costs {per_tok_kib:.0f} KiB per token; "
                     f"halving {ctx} to {half:,} needs {_m(mib / 2)} (frees {_m(mib / 2)} per context)")
    else:
        parts.append(f"the draft KV cache scales with its context: halving {ctx} frees {_m(mib / 2)} per context")
    q8 = _lever(run, "draft_kv_q8")
    if q8:
        parts.append(f"{q8} frees about {_m(mib * 0.47)} per context")
    free = run.ledger.free.get(dev)
    if free is not None:
        used = run.ledger.total(device=dev)
        parts.append(f"{dev} reported {_m(free)} free before loading; the models already use {_m(used)} there")
    parts.append("or use a smaller draft model")
    return "To fit the draft: " + "; ".join(parts) + "." + _fit_notes(run)


def _fit_notes(run: Run) -> str:
    """What memory fitting and the allocator said before the failure, when they said anything."""
    out = ""
    if run.fit_unmeasured is not None:
        out += (f" Memory fitting could not measure the draft (line {run.fit_unmeasured.record.lineno}) and sized "
                f"the target without it, so the target may take the draft's memory: {_lever(run, 'fit_target')}.")
    est = run.ledger.estimated.get("draft")
    if est:
        out += f" llama.cpp estimated the draft at {_m(est)} before loading."
    for note in run.memory_notes[-1:]:
        if note.type == "alloc_warning":
            out += (f" macOS warned that GPU allocations exceed the recommended working set (line "
                    f"{note.record.lineno}): memory is paged and everything slows down.")
    return out


def _max_slot_ctx(run: Run) -> int | None:
    vals = [s.n_ctx for s in run.slots.values() if s.n_ctx]
    return max(vals) if vals else None
