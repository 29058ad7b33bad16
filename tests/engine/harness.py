"""Real llama.cpp engine harness: tiny GGUF models + llama.cpp's server in a subprocess.

Why this exists: specwatch's patterns must match what llama.cpp *really* prints when
speculative decoding fails, not what we think it prints. This module builds tiny
GGUF models on the fly (a few hundred KB each, random weights), starts llama.cpp's
own server code (``server_context`` from the prebuilt ``xllamacpp`` wheel) in a
child Python process, sends a couple of completion requests over 127.0.0.1 and
returns the raw bytes the engine wrote to stdout/stderr.

Why a subprocess: the engine writes through its own C++ logger straight to file
descriptors 1 and 2, a failed load can leave native state behind, and an
allocation failure might crash the process; isolating each scenario in its own
process gives us the exact bytes, the exit status and a hard timeout.

The module doubles as the runner: ``python harness.py --serve CONFIG.json`` is what
the child process executes (see ``_serve``). It imports ``xllamacpp`` only there, so
importing this module (for model building or the scenario registry) needs just
``numpy`` and ``gguf``.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

# --- engine identity ------------------------------------------------------------
# xllamacpp versions are YYYY.M.<llama.cpp build> since 2026.4 (2026.10.11549 embeds llama.cpp
# b11549); the 0.2.x series of 2025 prints its build in BUILD_INFO (0.2.6 = b7079). The newer
# wheels report build_number 0 / commit "unknown" (built outside git), so the build number is
# taken from the version scheme.
ENGINE_PACKAGE = "xllamacpp"


#: b7079 to b10229 fail a /completion whose output is invalid UTF-8 (the chat parser's "Failed to parse
#: input at pos 0", HTTP 500; b7079's in-process JSON encoder raises). Random-weight models emit lone
#: byte tokens, so on those builds requests ban the non-ASCII byte tokens (<0x80>..<0xFF>: ids 131-258
#: of spm_vocab).
BYTE_TOKENS_BANNED: dict[str, Any] = {"logit_bias": [[3 + b, False] for b in range(0x80, 0x100)]}


@dataclass(frozen=True)
class Engine:
    """One pinned llama.cpp build, as a prebuilt xllamacpp wheel."""

    build: str  # llama.cpp build, "b11549"
    version: str  # the xllamacpp release that vendors it
    released: str  # year-month of the wheel
    #: -lv values for our two verbosities. Since b9151 the thresholds are ERR 1, WRN 2, INF 3
    #: (default), TRC 4, DBG 5. Before that a message of verbosity v printed when v <= -lv and the
    #: server's default was 0 (debug lines are verbosity 1).
    verbosity: dict[str, int] = field(default_factory=lambda: {"default": 3, "verbose": 4})
    #: Extra /completion request fields this build needs (see BYTE_TOKENS_BANNED).
    request_extra: dict[str, Any] = field(default_factory=dict)


#: The builds the matrix covers, oldest first. The newest is installed by the engine extra and runs
#: live in CI; the others are recorded under samples/engine/<build>/ and replayed.
ENGINES: dict[str, Engine] = {
    e.build: e
    for e in (
        Engine("b7079", "0.2.6", "2025-11", {"default": 0, "verbose": 1}, BYTE_TOKENS_BANNED),
        Engine("b8672", "2026.4.8672", "2026-04", request_extra=BYTE_TOKENS_BANNED),
        Engine("b9538", "2026.6.9538", "2026-06", request_extra=BYTE_TOKENS_BANNED),
        Engine("b10229", "2026.8.10229", "2026-08", request_extra=BYTE_TOKENS_BANNED),
        Engine("b11549", "2026.10.11549", "2026-10"),
    )
}
LIVE = ENGINES["b11549"]
ENGINE_VERSION = LIVE.version
LLAMA_CPP_BUILD = LIVE.build

# The live build's verbosities: "-lv 4" (TRC) is where the spec-init, slot and memory-ledger
# lines reappear, so it is our "verbose" level. -v would be INT_MAX (DBG included), which makes
# per-token logs far too large for committed samples.
VERBOSITY: dict[str, int] = LIVE.verbosity

# Small enough that a whole scenario (two model loads + two short requests) takes a
# second or two on 2 CPU cores, big enough to be a real llama-arch transformer.
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 1  # GQA 4:1 keeps the target KV per token tiny (128 bytes)
N_LAYER = 2
N_FF = 128
N_CTX_TRAIN = 4096


# --- vocabularies ----------------------------------------------------------------
# We build vocabularies ourselves (no downloads): an SPM ("llama") vocabulary for the
# target and the compatible drafts, and a byte-level BPE ("gpt2") vocabulary padded
# to the same size for the "incompatible vocabulary type" draft. Same size on purpose:
# the only difference is the vocab *type*, which is the check llama.cpp makes first.

# GGUF token types (llama.cpp's llama_token_type): 1 normal, 2 unknown, 3 control, 6 byte.
_TT_NORMAL, _TT_UNKNOWN, _TT_CONTROL, _TT_BYTE = 1, 2, 3, 6

_WORDS = (
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "that",
    "was",
    "for",
    "on",
    "with",
    "as",
    "at",
    "by",
    "this",
    "be",
    "from",
    "or",
    "one",
    "had",
    "not",
    "but",
    "what",
    "all",
    "were",
    "when",
    "we",
    "there",
    "can",
    "an",
    "your",
    "which",
    "their",
    "said",
    "if",
    "do",
    "will",
    "each",
    "about",
    "how",
    "up",
    "out",
    "them",
    "then",
)


@dataclass(frozen=True)
class Vocab:
    """Token table for a GGUF tokenizer section."""

    model: str  # tokenizer.ggml.model: "llama" (SPM) or "gpt2" (BPE)
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    bos: int = 1
    eos: int = 2
    unk: int | None = 0


def spm_vocab() -> Vocab:
    """SentencePiece-style vocab: <unk>/<s>/</s>, 256 byte-fallback tokens, chars, words."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [_TT_UNKNOWN, _TT_CONTROL, _TT_CONTROL]
    scores = [0.0, 0.0, 0.0]
    # Byte fallback tokens guarantee any prompt tokenizes (no <unk> surprises).
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(_TT_BYTE)
        scores.append(0.0)
    chars = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    for i, ch in enumerate(chars):
        tokens.append(ch)
        types.append(_TT_NORMAL)
        scores.append(-1000.0 - i)
    # Whole words with a leading "▁" so SPM merges produce multi-char tokens; the
    # merge path must reach them through existing pieces, so add prefixes too.
    seen = set(tokens)
    rank = 0
    for word in _WORDS:
        piece = "\u2581"
        for ch in word:
            piece += ch
            if piece not in seen:
                seen.add(piece)
                tokens.append(piece)
                types.append(_TT_NORMAL)
                scores.append(-float(rank))
                rank += 1
    return Vocab("llama", tokens, scores, types)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable-char map (what byte-level BPE vocabularies store)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def bpe_vocab(size: int) -> Vocab:
    """Byte-level BPE ("gpt2") vocab padded to ``size`` tokens, with a few real merges."""
    byte_chars = _bytes_to_unicode()
    tokens = ["<|endoftext|>", *byte_chars]
    types = [_TT_CONTROL] + [_TT_NORMAL] * 256
    merges: list[str] = []
    seen = set(tokens)
    space = byte_chars[ord(" ")]  # "Ġ"
    for word in _WORDS:
        piece = space
        for ch in word:
            merges.append(f"{piece} {ch}")
            piece += ch
            if piece not in seen:
                seen.add(piece)
                tokens.append(piece)
                types.append(_TT_NORMAL)
    # Dedupe merges, keep order (llama.cpp ranks merges by position).
    merges = list(dict.fromkeys(m for m in merges if m.replace(" ", "") in seen))
    pad = 0
    while len(tokens) < size:
        tokens.append(f"<|pad{pad}|>")
        types.append(_TT_CONTROL)
        pad += 1
    return Vocab("gpt2", tokens[:size], [0.0] * size, types[:size], merges, bos=0, eos=0, unk=None)


# --- GGUF writing ----------------------------------------------------------------


def write_llama_gguf(
    path: Path,
    vocab: Vocab,
    *,
    seed: int,
    n_embd: int = N_EMBD,
    n_layer: int = N_LAYER,
    n_head: int = N_HEAD,
    n_head_kv: int = N_HEAD_KV,
    head_dim: int | None = None,
    n_ff: int = N_FF,
    name: str = "specwatch-tiny",
) -> Path:
    """Write a tiny llama-architecture GGUF with random F16/F32 weights.

    ``head_dim`` lets a model have a much wider KV than its embedding (used to make a
    draft whose KV cache is enormous while its weights stay a few MB).
    """
    hd = head_dim if head_dim is not None else n_embd // n_head
    rng = np.random.default_rng(seed)
    n_vocab = len(vocab.tokens)

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        # numpy shape (rows, cols) == ggml ne [cols, rows]; F16 halves the file size.
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float16)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    w.add_tokenizer_model(vocab.model)
    if vocab.model == "gpt2":
        w.add_tokenizer_pre("default")
        w.add_token_merges(vocab.merges)
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_bos_token_id(vocab.bos)
    w.add_eos_token_id(vocab.eos)
    if vocab.unk is not None:
        w.add_unk_token_id(vocab.unk)
    w.add_add_bos_token(True)

    # Embedding and output scale chosen so logits are peaked (std ~ several nats):
    # greedy drafting then produces confident drafts instead of near-uniform noise.
    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd, 1.0))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", mat(n_vocab, n_embd, 1.0))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", mat(n_head * hd, n_embd, 0.1))
        w.add_tensor(p + "attn_k.weight", mat(n_head_kv * hd, n_embd, 0.1))
        w.add_tensor(p + "attn_v.weight", mat(n_head_kv * hd, n_embd, 0.1))
        w.add_tensor(p + "attn_output.weight", mat(n_embd, n_head * hd, 0.1))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(n_ff, n_embd, 0.1))
        w.add_tensor(p + "ffn_up.weight", mat(n_ff, n_embd, 0.1))
        w.add_tensor(p + "ffn_down.weight", mat(n_embd, n_ff, 0.1))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@dataclass(frozen=True)
class ModelSet:
    """Paths of the generated models for one harness run."""

    target: Path
    draft_same: Path  # same vocab and identical weights -> acceptance ~1.0
    draft_random: Path  # same vocab, different random weights -> acceptance ~0
    draft_bpe: Path  # same size, different vocab *type* (gpt2 vs llama)
    draft_corrupt: Path  # a valid GGUF truncated mid-tensor-data
    draft_missing: Path  # never created
    wide_kv: Path  # same vocab, KV 256x wider per cell than the target's (KV-OOM scenarios)


TARGET_SEED = 1234


#: The model directory as recorded samples show it: the real one is a temporary directory of the machine
#: that made them, which has no place in the repository.
MODELS_SHOWN = "/models"


#: Where a native backtrace (gdb, on a crash) shows the engine library: the directory it was installed
#: in belongs to the machine that made the sample, so samples show this instead.
ENGINE_DIR_SHOWN = "/site-packages"
_ENGINE_DIR = re.compile(r"(?<= from )/\S+(?=/xllamacpp/)")


def show_models(text: str, directory: Path) -> str:
    """``text`` for a recorded sample: the models' real directory shown as MODELS_SHOWN and the engine's
    install directory as ENGINE_DIR_SHOWN."""
    return _ENGINE_DIR.sub(ENGINE_DIR_SHOWN, text.replace(str(directory), MODELS_SHOWN))


def build_models(directory: Path) -> ModelSet:
    """Generate every model the scenarios need into ``directory`` (about 2 MB in all)."""
    directory.mkdir(parents=True, exist_ok=True)
    spm = spm_vocab()
    target = write_llama_gguf(directory / "target.gguf", spm, seed=TARGET_SEED, name="tiny-target")
    # Identical weights: a perfect drafter, so acceptance statistics always appear.
    draft_same = write_llama_gguf(directory / "draft-same.gguf", spm, seed=TARGET_SEED, name="tiny-draft")
    draft_random = write_llama_gguf(directory / "draft-random.gguf", spm, seed=999, name="tiny-draft-random")
    draft_bpe = write_llama_gguf(
        directory / "draft-bpe.gguf", bpe_vocab(len(spm.tokens)), seed=7, name="tiny-draft-bpe"
    )
    # Corrupt: the header and tensor table are intact, the tensor data is cut short,
    # which is what an interrupted download looks like.
    data = target.read_bytes()
    draft_corrupt = directory / "draft-corrupt.gguf"
    draft_corrupt.write_bytes(data[: int(len(data) * 0.6)])
    wide_kv = write_llama_gguf(
        directory / "wide-kv.gguf",
        spm,
        seed=TARGET_SEED,
        n_head=64,
        n_head_kv=64,
        head_dim=64,
        name="tiny-wide-kv",
    )
    return ModelSet(
        target=target,
        draft_same=draft_same,
        draft_random=draft_random,
        draft_bpe=draft_bpe,
        draft_corrupt=draft_corrupt,
        draft_missing=directory / "draft-missing.gguf",
        wide_kv=wide_kv,
    )


# --- scenarios -------------------------------------------------------------------

# Speculative type names as llama.cpp's --spec-type spells them, mapped to the enum
# the wheel exposes (common_speculative_type). Config files carry the CLI spelling so
# a meta.json reads like a command line.
SPEC_TYPE_ENUM: dict[str, str] = {
    "none": "COMMON_SPECULATIVE_TYPE_NONE",
    "draft-simple": "COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE",
    "draft-eagle3": "COMMON_SPECULATIVE_TYPE_DRAFT_EAGLE3",
    "draft-mtp": "COMMON_SPECULATIVE_TYPE_DRAFT_MTP",
    "draft-dflash": "COMMON_SPECULATIVE_TYPE_DRAFT_DFLASH",
    "draft-dspark": "COMMON_SPECULATIVE_TYPE_DRAFT_DSPARK",
    "ngram-simple": "COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE",
    "ngram-map-k": "COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K",
    "ngram-map-k4v": "COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K4V",
    "ngram-mod": "COMMON_SPECULATIVE_TYPE_NGRAM_MOD",
    "ngram-cache": "COMMON_SPECULATIVE_TYPE_NGRAM_CACHE",
}

# Repetitive prompts: the random-weight models fall into loops, which is what lets
# the n-gram speculators find matches at all.
PROMPTS = ("the cat sat on the mat and the cat", "what is it that we can do about it")

# A context that makes a wide-KV model's cache impossible on a 24 GiB machine: 2^22
# cells. Target KV = 128 B/cell -> 512 MiB (fits); wide-KV model = 32 KiB/cell ->
# 128 GiB, which malloc refuses at once (no swap, heuristic overcommit, and the
# address-space cap below), so the run fails in seconds instead of swapping.
HUGE_CTX = 1 << 22

# Address-space cap (RLIMIT_AS) the child sets on itself: 8 GiB is ~10x what any
# successful scenario here needs, and far below the impossible KV caches. SPECWATCH_HARNESS_ADDRESS_SPACE
# lowers it to make an allocation fail for real (tools/ledger_accuracy.py: a load that no longer fits).
CHILD_ADDRESS_SPACE = int(os.environ.get("SPECWATCH_HARNESS_ADDRESS_SPACE") or 8 << 30)


@dataclass(frozen=True)
class Scenario:
    """One way of starting the server; ``model_roles`` name fields of ``ModelSet``."""

    name: str
    description: str
    draft: str | None  # ModelSet field name of the draft, or None for no draft
    target: str = "target"  # ModelSet field name of the target model
    spec_types: tuple[str, ...] = ()  # --spec-type values; () leaves llama.cpp's default (none)
    n_parallel: int = 1
    n_ctx: int = 512
    n_ubatch: int = 512
    n_predict: int = 16
    #: Sampling temperature of the requests (0: greedy, deterministic; higher: the target strays from a
    #: greedy draft, so acceptance falls).
    temperature: float = 0.0
    n_requests: int = 2
    # What we measured on b11549 (checked by the tests and written into meta.json):
    # "works" = speculation active; "degraded" = serves without speculation (or with a
    # useless one); "exits" = the server refuses to start; "baseline" = no spec asked.
    expected: str = "works"
    log_note: str = ""

    def params(self, models: ModelSet, verbosity: int) -> dict[str, Any]:
        """CommonParams attributes (dotted paths) for the runner, JSON-serialisable."""
        p: dict[str, Any] = {
            "model.path": str(getattr(models, self.target)),
            "n_ctx": self.n_ctx,
            "n_batch": self.n_ubatch,
            "n_ubatch": self.n_ubatch,
            "n_parallel": self.n_parallel,
            "verbosity": verbosity,
            # The machine has 2 cores; greedy sampling (temp 0, top-k 1) keeps output deterministic.
            "cpuparams.n_threads": 2,
            "cpuparams_batch.n_threads": 2,
            "sampling.temp": 0.0,
            "sampling.top_k": 1,
            "sampling.seed": 42,
            "endpoint_slots": True,
        }
        if self.draft is not None:
            p["speculative.draft.mparams.path"] = str(getattr(models, self.draft))
        if self.spec_types:
            p["speculative.types"] = list(self.spec_types)
        return p


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "spec-working",
            "Draft with the target's vocabulary and identical weights, --spec-type draft-simple.",
            draft="draft_same",
            spec_types=("draft-simple",),
            expected="works",
            log_note="Per task: 'slot print_timing: ... draft acceptance = 1.00000 (   11 accepted /    11 "
            "generated), mean len =  3.75'. The spec-init lines ('adding speculative implementation', "
            "'speculative decoding context initialized') and the per-implementation 'statistics "
            "draft-simple:' line only appear at -lv 4.",
        ),
        Scenario(
            "spec-parallel-4",
            "Four slots (-np 4, -c 2048) sharing one draft, four concurrent requests.",
            draft="draft_same",
            spec_types=("draft-simple",),
            n_parallel=4,
            n_ctx=2048,
            n_requests=4,
            expected="works",
            log_note="One 'draft acceptance' line per slot/task (ids 0-3 interleave); "
            "'initializing, n_slots = 4, n_ctx_slot = 512'.",
        ),
        Scenario(
            "no-draft",
            "Baseline: no draft model and no --spec-type.",
            draft=None,
            expected="baseline",
            log_note="No draft or spec lines at all; print_timing blocks end at 'graphs reused'.",
        ),
        Scenario(
            "draft-missing",
            "-md points at a file that does not exist.",
            draft="draft_missing",
            spec_types=("draft-simple",),
            expected="exits",
            log_note="The fit step fails first ('W operator(): failed to measure the memory of the extra "
            "model, fitting without it: failed to load model'), then 'E gguf_init_from_file: failed to "
            "open GGUF file ... (No such file or directory)', 'E common_speculative_init_result: failed "
            "to load draft model, ...', 'E srv    load_model: failed to load draft model, ...' and "
            "'E srv          init: exiting due to model loading error'.",
        ),
        Scenario(
            "draft-corrupt",
            "-md points at a GGUF whose tensor data is truncated (60% of the file).",
            draft="draft_corrupt",
            spec_types=("draft-simple",),
            expected="exits",
            log_note="'E llama_model_load: error loading model: tensor 'blk.0.ffn_gate.weight' data is not "
            "within the file bounds, model is corrupted or incomplete', then the same "
            "'failed to load draft model' / 'exiting due to model loading error' chain as draft-missing.",
        ),
        Scenario(
            "draft-vocab-type-mismatch",
            "Draft with a byte-level BPE (gpt2) vocabulary of the same size as the target's SPM one.",
            draft="draft_bpe",
            spec_types=("draft-simple",),
            expected="degraded",
            log_note="'W spec common_specu: draft model vocab type must match target model to use "
            "speculation but vocab_type_dft = 2 while vocab_type_tgt = 1', "
            "'E spec common_specu: the target and draft vocabs are not compatible', "
            "'E srv    load_model: failed to initialize speculative decoding "
            "context: draft model vocab type must match target model to use speculation'; then 'model "
            "loaded' and tasks run with no 'draft acceptance' lines.",
        ),
        Scenario(
            "draft-kv-oom",
            "Draft whose KV cache cannot be allocated: KV 256x wider per cell than the target's, "
            "-c 4194304 -> 128 GiB draft KV on a 24 GiB machine (target KV 512 MiB fits).",
            draft="wide_kv",
            spec_types=("draft-simple",),
            n_ctx=HUGE_CTX,
            n_ubatch=16,
            expected="exits",
            log_note="'E ggml_aligned_malloc: insufficient memory (attempted to allocate 131072.00 MB)', "
            "'E ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size ...', "
            "'E ggml_backend_buft_alloc_buffer_n_default: failed to allocate CPU buffer of size ...', "
            "'E llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv "
            "cache', 'E common_speculative_init_result: failed to create MTP context' (sic: plain draft), "
            "'E srv    load_model: failed to create MTP context', 'exiting due to model loading error'.",
        ),
        Scenario(
            "target-kv-oom",
            "Target whose KV cache cannot be allocated (wide-KV model as target, -c 4194304 -> 128 GiB), "
            "with a valid draft configured.",
            draft="draft_same",
            target="wide_kv",
            spec_types=("draft-simple",),
            n_ctx=HUGE_CTX,
            n_ubatch=16,
            expected="exits",
            log_note="Same allocator chain as draft-kv-oom, then 'E cmn  common_init_: failed to create "
            "context with model ...' (printed twice), 'E srv    load_model: failed to create_context with "
            "model ...', 'exiting due to model loading error'. The draft is never loaded.",
        ),
        Scenario(
            "draft-low-acceptance",
            "Draft with the target's vocabulary but different random weights: it drafts, the target rejects.",
            draft="draft_random",
            spec_types=("draft-simple",),
            expected="works-low-acceptance",
            log_note="'draft acceptance = 0.00000 (    0 accepted /    39 generated), mean len =  1.00' per "
            "task: speculation runs and costs time without gaining any.",
        ),
        Scenario(
            "draft-without-spec-type",
            "-md given without --spec-type (llama.cpp's default is 'none' since b9464).",
            draft="draft_same",
            expected="degraded",
            log_note="The draft is loaded ('common_speculative_init_result: loading draft model ...') and "
            "then silently unused. The only trace is TRC 'spec common_specu: no implementations specified "
            "for speculative decoding', visible at -lv 4 only; at default verbosity nothing says so.",
        ),
        Scenario(
            "spec-type-without-draft",
            "--spec-type draft-simple without a draft model.",
            draft=None,
            spec_types=("draft-simple",),
            expected="degraded",
            log_note="'E srv    load_model: failed to initialize speculative decoding context: draft-simple "
            "requires a draft context', then the server serves without speculation.",
        ),
        Scenario(
            "eagle3-with-plain-draft",
            "--spec-type draft-eagle3 with an ordinary (non-EAGLE3) draft model.",
            draft="draft_same",
            spec_types=("draft-eagle3",),
            expected="degraded",
            log_note="'E srv    load_model: failed to initialize speculative decoding context: draft model "
            "is not eagle3 (expected 3 extract layers, got 0)', then serves without speculation.",
        ),
        Scenario(
            "mtp-without-mtp-layers",
            "--spec-type draft-mtp on a target with no MTP (nextn) layers and no draft file.",
            draft=None,
            spec_types=("draft-mtp",),
            expected="exits",
            log_note="'common_speculative_init_result: creating MTP draft context against the target model "
            "...', 'W llama_init_from_model: context type MTP requested but model doesn't contain MTP "
            "layers', 'E common_speculative_init_result: failed to create MTP context', 'E srv    "
            "load_model: failed to create MTP context', 'exiting due to model loading error'.",
        ),
        Scenario(
            "dflash-with-plain-draft",
            "--spec-type draft-dflash with an ordinary draft model (no DFlash metadata).",
            draft="draft_same",
            spec_types=("draft-dflash",),
            expected="crashes",
            log_note="The process aborts (SIGABRT) right after loading the draft: "
            "'.../common/speculative.cpp:1033: GGML_ASSERT(target_layer_ids_n > 0 && \"DFlash model has "
            "no target_layer_ids\") failed' followed by a native backtrace; no 'exiting' line.",
        ),
        Scenario(
            "ngram-simple-idle",
            "--spec-type ngram-simple, no draft: speculation is on but this output never repeats enough "
            "for the n-gram lookup to draft anything.",
            draft=None,
            spec_types=("ngram-simple",),
            expected="idle",
            log_note="No error and no 'draft acceptance' line (it is printed only when >= 1 token was "
            "drafted): at default verbosity this log looks exactly like a silent failure although "
            "/slots reports speculative = true.",
        ),
        Scenario(
            "ngram-mod-working",
            "--spec-type ngram-mod, no draft, 64 tokens per request so the repetitive output gets drafted.",
            draft=None,
            spec_types=("ngram-mod",),
            n_predict=64,
            expected="works",
            log_note="'draft acceptance' appears for the task whose output repeated; ngram speculation "
            "needs no draft model, so there is no 'loading draft model' line.",
        ),
    )
}


# --- running a scenario ------------------------------------------------------------


@dataclass
class RunResult:
    """What one server run produced. ``log`` is the raw, unmodified engine output."""

    scenario: str
    verbosity: str
    params: dict[str, Any]
    log: bytes
    exit_code: int | None  # None when the hard timeout killed it
    timed_out: bool
    server_started: bool
    served_requests: bool  # every request answered with HTTP 200
    responses: list[dict[str, Any]]  # status, draft_n, draft_n_accepted per request
    slots_speculative: list[bool] | None  # /slots "speculative" flag per slot, if read
    duration_s: float
    error: str | None = None
    unsupported: str | None = None  # why this build cannot run the scenario (a spec type it lacks)
    #: The child's resident memory (MiB, Linux): just before the engine loads, and while it serves.
    rss_mib: dict[str, float] | None = None

    @property
    def drafted_tokens(self) -> int:
        return sum(int(r.get("draft_n") or 0) for r in self.responses)

    @property
    def accepted_tokens(self) -> int:
        return sum(int(r.get("draft_n_accepted") or 0) for r in self.responses)

    def kept_running_without_speculation(self, spec_requested: bool) -> bool | None:
        """The heart of specwatch: speculation was asked for, yet the server serves without it.

        ``None`` when no speculation was requested (nothing to lose); ``False`` when the
        server did not serve. Otherwise it is read from the server itself, not from the
        log, so it is ground truth for the log patterns: ``/slots`` says per slot
        whether a speculator is attached (``speculative``); if /slots could not be read,
        no drafted token at all (``timings.draft_n``) counts as running without.
        An attached speculator that drafted nothing (n-gram with no match) is *not*
        "without speculation": see ``drafted_tokens`` for that.
        """
        if not spec_requested:
            return None
        if not self.served_requests:
            return False
        if self.slots_speculative:
            return not any(self.slots_speculative)
        return self.drafted_tokens == 0


def run_scenario(
    scenario: Scenario,
    models: ModelSet,
    verbosity: str = "default",
    *,
    timeout_s: float = 90.0,
    python: str | None = None,
    engine: Engine = LIVE,
    engine_path: Path | None = None,
) -> RunResult:
    """Run ``scenario`` in a child Python process and capture everything it prints.

    stdout and stderr share one pipe, so the bytes keep the interleaving a terminal or
    ``2>&1 | tee`` would show (llama.cpp writes levelled lines to stderr, plain LOG()
    output to stdout). The child reports request outcomes through a side file, never
    through the log, so the log holds engine output only.

    ``engine_path`` is a directory holding another build's ``xllamacpp`` package (see
    ``tools/make_engine_samples.py --build``); it goes first on the child's import path.
    """
    params = scenario.params(models, engine.verbosity[verbosity])
    with tempfile.TemporaryDirectory(prefix="specwatch-run-") as tmp:
        cfg_path = Path(tmp) / "config.json"
        res_path = Path(tmp) / "result.json"
        cfg = {
            "params": params,
            "prompts": list(PROMPTS[: scenario.n_requests])
            + [PROMPTS[i % len(PROMPTS)] for i in range(len(PROMPTS), scenario.n_requests)],
            "n_predict": scenario.n_predict,
            "temperature": scenario.temperature,
            "concurrent": scenario.n_parallel > 1,
            "result_path": str(res_path),
            "request_extra": engine.request_extra,
        }
        cfg_path.write_text(json.dumps(cfg))
        env = dict(os.environ)
        # Colours only on a TTY anyway; be explicit so samples never carry ANSI codes.
        env.pop("LLAMA_ARG_LOG_COLORS", None)
        # A crash would otherwise attach gdb (when installed) and print this machine's paths and threads;
        # the assertion line before it is what every user sees.
        env["GGML_NO_BACKTRACE"] = "1"
        if engine_path is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(engine_path), env.get("PYTHONPATH")) if p)
        start = time.monotonic()
        proc = subprocess.Popen(
            [python or sys.executable, str(Path(__file__).resolve()), "--serve", str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp,
            start_new_session=True,  # lets a timeout kill the whole process group
        )
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, 9)
            out, _ = proc.communicate()
        duration = time.monotonic() - start
        result: dict[str, Any] = {}
        if res_path.exists():
            result = json.loads(res_path.read_text())
    responses = list(result.get("responses", []))
    return RunResult(
        scenario=scenario.name,
        verbosity=verbosity,
        params=params,
        log=out,
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        server_started=bool(result.get("server_started", False)),
        served_requests=bool(responses) and all(r.get("status") == 200 for r in responses),
        responses=responses,
        slots_speculative=result.get("slots_speculative"),
        duration_s=round(duration, 2),
        error=result.get("error"),
        unsupported=result.get("unsupported"),
        rss_mib=result.get("rss_mib"),
    )


# --- the child side ----------------------------------------------------------------


# Where each canonical parameter lives in older builds' CommonParams, newest first: the draft
# moved from ``speculative.model`` (2025) to ``speculative.mparams_dft`` (early 2026) to
# ``speculative.draft.mparams`` (b9093+).
_PARAM_ALIASES: dict[str, tuple[str, ...]] = {
    "speculative.draft.mparams.path": (
        "speculative.draft.mparams.path",
        "speculative.mparams_dft.path",
        "speculative.model.path",
    ),
}

# Before b9464 a build took one speculative type (``speculative.type``) from a shorter enum.
_OLD_SPEC_TYPE_ENUM: dict[str, str] = {
    "draft-simple": "COMMON_SPECULATIVE_TYPE_DRAFT",
    "draft-eagle3": "COMMON_SPECULATIVE_TYPE_EAGLE3",
    "ngram-map-k": "COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K",
}


class Unsupported(Exception):
    """The build has no way to express this scenario (a speculative type it does not know)."""


def _check_expressible(params: Any, wanted: dict[str, Any]) -> None:
    """Raise Unsupported for a scenario this build's CommonParams cannot state at all."""
    spec = params.speculative
    if ("speculative.types" in wanted and not hasattr(spec, "types") and not hasattr(spec, "type")
            and "speculative.draft.mparams.path" not in wanted):
        raise Unsupported("2025 builds have no --spec-type: without a draft this is the no-draft baseline")


def _has_path(obj: Any, dotted: str) -> bool:
    """Whether ``obj`` has the dotted attribute path (this build's CommonParams layout)."""
    for name in dotted.split("."):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def _set_param(obj: Any, dotted: str, value: Any, xlc: Any) -> None:
    """Set a canonical (b11549) parameter on whatever CommonParams this build has."""
    if dotted == "speculative.types":
        _set_spec_types(obj, value, xlc)
        return
    for candidate in _PARAM_ALIASES.get(dotted, (dotted,)):
        if _has_path(obj, candidate):
            dotted = candidate
            break
    *parents, leaf = dotted.split(".")
    for name in parents:
        obj = getattr(obj, name)
    setattr(obj, leaf, value)


def _set_spec_types(params: Any, names: list[str], xlc: Any) -> None:
    """Set --spec-type ``names`` as this build takes them (a list, one older enum value, or implied by a draft)."""
    spec = params.speculative
    enum = getattr(xlc, "common_speculative_type", None)
    if hasattr(spec, "types"):
        missing = [n for n in names if not hasattr(enum, SPEC_TYPE_ENUM[n])]
        if missing:
            raise Unsupported(f"--spec-type {','.join(missing)} does not exist in this build")
        spec.types = [getattr(enum, SPEC_TYPE_ENUM[n]) for n in names]
        return
    if hasattr(spec, "type") and len(names) == 1 and hasattr(enum, _OLD_SPEC_TYPE_ENUM.get(names[0], "?")):
        spec.type = getattr(enum, _OLD_SPEC_TYPE_ENUM[names[0]])
        return
    if not hasattr(spec, "type") and names == ["draft-simple"]:
        return  # 2025 builds: a draft model alone means draft speculation
    raise Unsupported(f"--spec-type {','.join(names)} does not exist in this build")


def _post_json(url: str, body: dict[str, Any], timeout: float) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {"error": e.read().decode(errors="replace")}
    except OSError as e:
        return 0, {"error": str(e)}


def _serve(cfg_path: str) -> int:
    """Child entry point: start llama.cpp's server, send the requests, stop, report."""
    cfg = json.loads(Path(cfg_path).read_text())
    result: dict[str, Any] = {"server_started": False, "responses": []}
    res_path = Path(cfg["result_path"])

    def report() -> None:
        res_path.write_text(json.dumps(result))

    # Cap the address space before the engine exists: a KV cache that cannot exist must
    # fail inside malloc at once instead of being overcommitted and paged in.
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))

    # Imported here, in the child only: the parent (model building, the registry,
    # meta.json writing) must not load the 100 MB native engine or its logger.
    import xllamacpp as xlc

    rss = {"before": _rss_mib()}
    params = xlc.CommonParams()
    try:
        _check_expressible(params, cfg["params"])
        for key, value in cfg["params"].items():
            _set_param(params, key, value, xlc)
    except Unsupported as e:
        result["unsupported"] = str(e)
        report()
        return 3
    try:
        # xlc.Server runs llama.cpp's server_context::load_model (and, since 2026, its HTTP
        # server bound to 127.0.0.1 on a random port); a failed load raises RuntimeError after
        # the engine has logged "exiting due to model loading error".
        server = xlc.Server(params)
    except RuntimeError as e:
        result["error"] = str(e)
        report()
        return 1  # what llama-server's main() returns after a load failure
    result["server_started"] = True
    base = getattr(server, "listening_address", None)
    if base is not None and not base.startswith("http://127.0.0.1:"):
        result["error"] = f"refusing non-loopback address {base}"
        report()
        return 2

    def one(prompt: str) -> dict[str, Any]:
        body_in = {"prompt": prompt, "n_predict": cfg["n_predict"], "ignore_eos": True,
                   "temperature": cfg.get("temperature", 0.0)}
        if cfg.get("temperature"):
            body_in["top_k"] = 40  # the server's defaults are greedy (top-k 1): a temperature needs a wider top-k
        body_in.update(cfg.get("request_extra", {}))
        if base is None:
            # 2025 wheels have no HTTP server: the same handler is called in-process.
            try:
                body = server.handle_completions(body_in)
            except RuntimeError as e:  # keep Python tracebacks out of the engine's log
                body = {"error": str(e)}
            status = 200 if isinstance(body, dict) and "code" not in body and "error" not in body else 500
        else:
            status, body = _post_json(base + "/completion", body_in, timeout=60)
        t = body.get("timings", {}) if isinstance(body, dict) else {}
        return {
            "status": status,
            "draft_n": t.get("draft_n", 0),
            "draft_n_accepted": t.get("draft_n_accepted", 0),
            "predicted_n": t.get("predicted_n"),
            "error": body.get("error") if status != 200 else None,
        }

    prompts: list[str] = cfg["prompts"]
    if cfg["concurrent"]:
        with ThreadPoolExecutor(len(prompts)) as pool:
            result["responses"] = list(pool.map(one, prompts))
    else:
        result["responses"] = [one(p) for p in prompts]

    result["slots_speculative"] = None
    if base is not None:
        try:
            with urllib.request.urlopen(base + "/slots", timeout=10) as r:
                result["slots_speculative"] = [bool(s.get("speculative")) for s in json.loads(r.read())]
        except OSError:
            pass
    rss["serving"] = _rss_mib()
    if rss["before"] is not None and rss["serving"] is not None:
        result["rss_mib"] = rss
    report()
    server = None  # dropping it runs ~Server, which stops the loop; the engine logs its shutdown lines
    return 0


def _rss_mib() -> float | None:
    """This process's resident set (VmRSS) in MiB; None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def result_summary(run: RunResult, scenario: Scenario) -> dict[str, Any]:
    """The measured facts that go into a sample's meta.json."""
    spec_requested = bool(scenario.spec_types) or scenario.draft is not None
    d = asdict(run)
    d.pop("log")
    d["drafted_tokens"] = run.drafted_tokens
    d["accepted_tokens"] = run.accepted_tokens
    d["server_kept_running_without_speculation"] = run.kept_running_without_speculation(spec_requested)
    return d


def measured_outcome(run: RunResult, scenario: Scenario) -> str:
    """Classify a run the way the scenario table does (see ``Scenario.expected``)."""
    spec_requested = bool(scenario.spec_types) or scenario.draft is not None
    if run.unsupported:
        return "n/a"
    if run.timed_out:
        return "timeout"
    if run.exit_code is not None and run.exit_code < 0:
        return "crashes"  # killed by a signal (abort, segfault)
    if not run.server_started:
        return "exits"
    if not spec_requested:
        return "baseline"
    if run.kept_running_without_speculation(spec_requested):
        return "degraded"
    if run.drafted_tokens == 0:
        return "idle"
    if run.accepted_tokens < 0.1 * run.drafted_tokens:
        return "works-low-acceptance"
    return "works"


# llama-server flags for the CommonParams fields we set, so a meta.json can say what
# command line the run corresponds to (the wheel itself takes no argv).
_CLI_FLAGS = {
    "model.path": "-m",
    "speculative.draft.mparams.path": "-md",
    "speculative.types": "--spec-type",
    "n_ctx": "-c",
    "n_batch": "-b",
    "n_ubatch": "-ub",
    "n_parallel": "-np",
    "verbosity": "-lv",
    "cpuparams.n_threads": "-t",
    "cpuparams_batch.n_threads": "-tb",
    "sampling.temp": "--temp",
    "sampling.top_k": "--top-k",
    "sampling.seed": "-s",
    "endpoint_slots": "--slots",
}


def cli_equivalent(params: dict[str, Any]) -> str:
    """The llama-server command line equivalent to ``params`` (for humans and docs)."""
    parts = ["llama-server"]
    for key, value in params.items():
        flag = _CLI_FLAGS[key]
        if isinstance(value, bool):
            if value:
                parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, ",".join(value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        sys.exit(_serve(sys.argv[2]))
    sys.exit("usage: harness.py --serve CONFIG.json  (internal; see run_scenario)")
