"""Typed events: what one recognised log line says, the unit that flows from classify to state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Field names a pattern may capture, with the type each is converted to. A fixed vocabulary
#: (like fail2ban's ``<F-*>`` tags) lets state code rely on names instead of on regexes.
FIELD_TYPES: dict[str, type] = {
    "slot": int,
    "task": int,
    "n_ctx": int,
    "n_slots": int,
    "accepted": int,
    "generated": int,
    "layers": int,
    "total_layers": int,
    "device_index": int,
    "bytes": int,
    "cells": int,
    "seqs": int,
    "rs_seq": int,
    "kv_unified": str,
    "tokens": int,
    "build": int,
    # The first llama.cpp build that prints a wording: a pattern ``set``s it to date a log whose build line is
    # missing or reads ``b0-unknown`` (behaviour changed by era, e.g. -md alone stopped enabling the draft).
    "min_build": int,
    "port": int,
    "free_mib": float,
    "total_mib": float,
    "mib": float,
    "gib": float,
    "limit_mib": float,
    "mb": float,
    "rate": float,
    "mean_len": float,
    "tps": float,
    "model": str,
    "draft_model": str,
    "target_model": str,
    "device": str,
    "buffer": str,
    "reason": str,
    "impl": str,
    "kind": str,
    "commit": str,
    "server": str,
    # The program whose log this is (``lmstudio``, ``ollama``, ``koboldcpp``), set by patterns that only it
    # prints: advice then names that program's settings instead of llama-server's flags (watcher/hints.py).
    "host": str,
    "cmd": str,
    "detail": str,
    # Why a failure happened, in a fixed vocabulary the state rules and hints read (memory, missing_file,
    # bad_gguf, unknown_arch, vocab, index_error, ...): set by the pattern, never guessed from the text.
    "cause": str,
    # The architecture named by an "unknown model architecture" or "requires ctx_other" message.
    "arch": str,
    # Whose line this is when the line itself says so ("draft": a draft-only architecture, for example).
    "role": str,
    # What the host relaying the line said of it ("exit_cause": the process terminated because of it).
    "relayed_as": str,
    # The model id as llama-swap's config names it (its "<id>" prefix), distinct from a GGUF path in
    # ``model``: the demux in watcher/swap.py keys per-model state on it.
    "swap_model": str,
}


#: The events a pattern may yield, each with what it means. A fixed vocabulary, like the fields: a pattern
#: naming any other event is refused when the catalogue loads (a misspelt event would otherwise be a silently
#: dead pattern), and tests hold every event to a state handler or to a declared reason to be ignored.
EVENTS: dict[str, str] = {
    "alloc_error": "an allocation or backend error line that says no size (evidence for a failure that follows)",
    "alloc_failed": "an allocation did not fit (device, size, what it was for)",
    "alloc_retry": "llama.cpp retries an allocation with less (recoverable)",
    "alloc_warning": "a memory warning that is not a failure (macOS working set)",
    "gpu_error_not_memory": ("a GPU error that says it is not about memory (Metal timeout, hang): the generic "
                             "failure line just before it was not an allocation"),
    "buffer_size": "a model, KV or compute buffer of this size was allocated",
    "build_info": "the build number: a server (re)starts",
    "context_failed": "a llama_context could not be created (whose: from the path or the sequence)",
    "device_free": "free memory a device reported before loading",
    "draft_acceptance": "a task's draft acceptance summary",
    "draft_context_failed": "the draft's context could not be created (the server says so)",
    "draft_gpu_ignored": "no usable GPU: the draft's GPU layers option is ignored",
    "draft_incompatible": "the draft's vocabulary is refused for this target",
    "draft_load_failed": "the draft model did not load (the server says so)",
    "draft_loading": "the draft model starts loading (its path)",
    "draft_step_accepted": "one verification step's accepted draft tokens",
    "draft_translate": "draft and target vocabularies differ: tokens are translated",
    "eval_time": "a task's generation timing (tokens generated)",
    "fit_done": "memory fitting is over",
    "fit_extra_unmeasured": "memory fitting could not measure the draft and fitted without it",
    "fit_probe_note": "an error line memory fitting prints and calls normal",
    "fit_spec_estimate": "memory fitting's estimate of the draft's memory",
    "fit_start": "memory fitting starts (its failures are probes)",
    "host_draft_failed": "a host (LM Studio, koboldcpp, MLX engine) says the draft failed",
    "host_record": "a host's record header (LM Studio): advice then names the host's settings",
    "host_draft_ignored": "a host says a request's draft setting is ignored: no draft is loaded",
    "kv_size": "the KV cache's size in cells",
    "rs_size": "the recurrent state's size: its cells are sequences (slots), not tokens",
    "launch_args": "a command line or option dump (the draft path, the speculative type)",
    "listen_port": "the server listens on this port (llama-swap demux)",
    "load_exit": "the server exits because loading failed",
    "model_file_error": "llama.cpp's loader refused a model file (the cause is a field)",
    "model_load_failed": "a model did not load (whose: from the path or the sequence)",
    "model_loaded": "the server finished loading and serves",
    "model_loading": "the target model starts loading (its path)",
    "model_meta": "a GGUF file's metadata was read (its path)",
    "projector_meta": "a multimodal projector's (mmproj) metadata was read: a second GGUF that is not a draft",
    "model_arch": "the architecture of the model being loaded (memory ledger)",
    "model_file_size": "the size of the model file being loaded (memory ledger)",
    "device_memory": "a device's total and free memory (memory ledger)",
    "task_release": "a finished task and the context it filled (memory ledger)",
    "prompt_cache": "the server's host-memory prompt cache and its limit (memory ledger)",
    "server_exiting": "the server shuts down and releases its memory (memory ledger)",
    "mtp_ctx_create": "an MTP draft context is created on the target",
    "mtp_ctx_failed": "the MTP (or, since b9910, any draft) context failed",
    "mtp_unavailable": "MTP was asked for but the model has no MTP layers",
    "offloaded": "how many layers went to the GPU",
    "slot_new": "a server slot is created",
    "slots_init": "the server sets up its slots (the target's context exists)",
    "spec_crash": "llama.cpp aborted inside speculative decoding",
    "spec_ctx_init_ok": "a slot's speculative context was set up",
    "spec_ctx_not_init": "a slot's speculative context was not set up",
    "spec_impl_added": "a speculative implementation was enabled",
    "spec_init_failed": "speculative decoding could not be initialised (the cause is a field)",
    "spec_no_draft": "a draft implementation was set up without a draft context",
    "spec_no_impls": "no speculative implementation is enabled",
    "spec_runtime_error": "a speculative batch failed while serving",
    "spec_setup": "another line of the speculative set-up (what is allocated next is the draft's)",
    "spec_statistics": "cumulative speculative statistics",
    "spec_unsupported": "the target or host cannot speculate",
    "swap_exit": "a llama-swap upstream exited (llama-swap demux)",
    "swap_ready": "a llama-swap upstream passed its health check (llama-swap demux)",
    "swap_start": "llama-swap starts an upstream (llama-swap demux)",
    "swap_stop": "llama-swap stops an upstream (llama-swap demux)",
    "task_timing": "a task's prompt timing: the server is serving",
    "vocab_mismatch": "draft and target vocabularies differ (the cause says how)",
    "warmup": "a real context is warmed up: memory fitting is over",
}


#: Why a failure happened, as patterns (``set = { cause = ... }``) and the causes table (patterns/causes.toml)
#: name it; state, titles and hints read these names, never the words of the log.
CAUSES: dict[str, str] = {
    "memory": "an allocation did not fit in device or host memory",
    "missing_file": "the model file does not exist or cannot be opened",
    "bad_gguf": "the file is not a readable GGUF for this build (truncated, corrupt, missing tensors)",
    "unknown_arch": "the build (or its host) does not know the file's architecture",
    "index_error": "a C++ index check failed inside llama.cpp's loader",
    "vocab": "the draft's vocabulary does not match the target's",
    "special_tokens": "the draft's BOS/EOS/special tokens differ from the target's (a warning on newer builds)",
    "draft_kind_mismatch": "the draft is not one this target or speculative mode can use",
    "needs_target_ctx": "a draft head was created without its target's context",
    "spec_type_without_draft": "a draft speculative type is enabled and no draft model is given",
    "unsupported": "the target, context or host cannot speculate",
    "unsupported_batched": "the host speculates only for unbatched models (LM Studio's MLX engine)",
    # Set by the state rules on incidents, from the sequence rather than from one line.
    "draft_head_alone": "a draft head was loaded as a model of its own",
    "no_mtp_layers": "MTP was asked for and the model has no MTP layers",
    "no_gpu": "no usable GPU: the draft runs on the CPU",
    "no_spec_type": "a draft is loaded but no speculative type is enabled (b9464+ needs --spec-type)",
}


@dataclass(frozen=True)
class Record:
    """One log line after framing: decoded, ANSI-free, capped, with its 1-based line number."""

    text: str
    lineno: int
    source: str = "-"
    #: The mark of the relay this line came through ("exit_cause"), empty for a line printed bare.
    relayed_as: str = ""
    #: Which of several processes relayed through one log printed the line: a llama-server router child's
    #: port ("[35801] ..."); empty for a line of the log's own process.
    channel: str = ""


@dataclass(frozen=True)
class Tally:
    """The values of one tallied pattern's field in a stretch of lines, in the order they were printed.

    A tallied line (one per finished task) is never a record of its own: counting it line by line from Python
    would cost more than everything else specwatch does on a verbose log. ``lineno`` is the last line of the
    stretch, so a tally comes before the record that follows it.
    """

    pattern: str
    event: str
    field: str
    values: tuple[int, ...]
    lineno: int
    source: str = "-"


@dataclass(frozen=True)
class Event:
    """A recognised line: the event type its pattern yields, the typed fields it captured."""

    type: str
    pattern: str
    record: Record
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """A captured field, or ``default`` when the line did not carry it."""
        value = self.fields.get(name)
        return default if value is None else value
