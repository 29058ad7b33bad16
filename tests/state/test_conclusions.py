"""Conclusions from partial evidence and attribution from the sequence: an allocation failure that nothing
reports still becomes an (inferred) incident, and whose failure it is follows from what came before it, not
from the build. Lines are real llama.cpp wordings (samples/, llama.cpp's format strings)."""

from __future__ import annotations

from tests.conftest import wait_for
from tests.test_state import FIT_DONE, FIT_START, MODEL_LOADED, feed
from watcher.catalogue import Catalogue
from watcher.incidents import Incident
from watcher.pipe import SideAnalysis
from watcher.pipeline import Analyzer
from watcher.report import banner

CUDA_OOM = ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 2645.29 MiB on device 0: cudaMalloc failed: out "
            "of memory")
GALLOCR = "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 2773782656"
CTX_FAILED = "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache"
LOAD_TARGET = "srv    load_model: loading model '/models/Qwen3-32B-Q4_K_M.gguf'"
LOAD_DRAFT = "srv    load_model: loading draft model '/models/Qwen3-0.6B-Q8_0.gguf'"
SLOTS = "srv    load_model: initializing slots, n_slots = 4"
NEW_SLOT = "slot   load_model: id  0 | task -1 | new slot, n_ctx = 4096"
SPEC_NOT_INIT = "slot   load_model: id  0 | task -1 | speculative decoding context not initialized"
TIMING = ("slot print_timing: id  0 | task 0 | prompt eval time =    3948.41 ms /    13 tokens (  303.72 ms per "
          "token,     3.29 tokens per second)")
RETRY = "sched_reserve: compute buffer allocation failed, retrying without pipeline parallelism"


def open_incidents(a: Analyzer) -> list[Incident]:
    """Open incidents, oldest first."""
    return [i for i in a.incidents() if i.status == "open"]


def test_allocation_failure_at_end_of_excerpt_is_an_inferred_target_oom(cat: Catalogue) -> None:
    """An excerpt ending at a CUDA allocation failure reports the target's out of memory, marked inferred."""
    incs = open_incidents(feed(cat, LOAD_TARGET, CUDA_OOM, GALLOCR))
    assert [i.kind for i in incs] == ["main_model_oom"]
    inc = incs[0]
    assert inc.confidence == "inferred" and inc.device == "CUDA0" and round(inc.mib or 0, 2) == 2645.29
    assert "line 2" in inc.extra["inferred_from"] and "ends" in inc.extra["inferred_from"]


def test_allocation_failure_then_serving_is_reported_when_serving_resumes(cat: Catalogue) -> None:
    """A failure followed by the server serving is concluded at the first serving line, not at the end."""
    seen: list[str] = []
    a = Analyzer(cat, source="t.log", on_incident=lambda i: seen.append(i.kind))
    a.feed(("\n".join([LOAD_TARGET, MODEL_LOADED, TIMING, CUDA_OOM, GALLOCR, TIMING]) + "\n").encode())
    assert set(seen) == {"main_model_oom"} and len(a.incidents()) == 1  # before the input ended
    inc = a.incidents()[0]
    assert inc.confidence == "inferred" and inc.server_state == "serving"
    assert "went on serving" in inc.extra["inferred_from"]


def test_retried_allocation_is_not_a_failure(cat: Catalogue) -> None:
    """A compute buffer that llama.cpp retries without pipeline parallelism raises nothing."""
    assert open_incidents(feed(cat, LOAD_TARGET, CUDA_OOM, GALLOCR, RETRY, MODEL_LOADED, TIMING)) == []


def test_fit_probe_allocation_failures_raise_nothing(cat: Catalogue) -> None:
    """Sizes the memory-fitting probe tries and drops are normal: no incident even with nothing after them."""
    assert open_incidents(feed(cat, LOAD_TARGET, FIT_START, CUDA_OOM, GALLOCR, FIT_DONE, MODEL_LOADED)) == []


def test_draft_context_failure_after_the_slots_is_the_drafts(cat: Catalogue) -> None:
    """Early-2026 order (draft context created per slot after the target's): a context failure there is the
    draft's, never the target's out of memory."""
    incs = open_incidents(feed(cat, LOAD_TARGET, LOAD_DRAFT, SLOTS, NEW_SLOT, CUDA_OOM, GALLOCR, CTX_FAILED,
                               SPEC_NOT_INIT, MODEL_LOADED))
    assert [i.kind for i in incs] == ["draft_context_failed"]
    assert incs[0].device == "CUDA0" and incs[0].server_state == "serving_without_speculation"


def test_silent_draft_context_failure_after_the_slots_is_the_drafts(cat: Catalogue) -> None:
    """Builds that print nothing after the draft's failed context (b8842+): still the draft's, inferred."""
    incs = open_incidents(feed(cat, LOAD_TARGET, LOAD_DRAFT, SLOTS, NEW_SLOT, CUDA_OOM, GALLOCR, MODEL_LOADED))
    assert [(i.kind, i.confidence) for i in incs] == [("draft_context_failed", "inferred")]


def test_target_context_failure_before_the_slots_stays_the_targets(cat: Catalogue) -> None:
    """With a draft configured, a failure before the slots exist is still the target's own."""
    incs = open_incidents(feed(cat, LOAD_DRAFT, LOAD_TARGET, CUDA_OOM, GALLOCR, CTX_FAILED))
    assert [i.kind for i in incs] == ["main_model_oom"]


def test_speculative_setup_line_makes_the_next_failure_the_drafts(cat: Catalogue) -> None:
    """A line of the speculative set-up (here ik_llama.cpp's DFlash context) owns the allocation after it."""
    incs = open_incidents(feed(
        cat, "main: build = 4858 (3741452b4)",
        "common_speculative_init: DFlash context target/slot=384000 logical=384000 cross_ctx=383995 query_block=5",
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 24050.69 MiB on device 0: cudaMalloc failed: out of "
        "memory"))
    assert [(i.kind, i.confidence) for i in incs] == [("draft_context_failed", "inferred")]


def test_second_model_loaded_before_serving_is_the_draft(cat: Catalogue) -> None:
    """llama-speculative (2023) loads the target, then the draft: a load failure naming the second file is the
    draft's, even in the old 'llama_init_from_gpt_params: error: failed to load model' wording."""
    a = feed(cat,
             "llama_model_loader: loaded meta data with 19 key-value pairs and 363 tensors from "
             "models/llama-2-13b.Q8_0.gguf (version GGUF V2)",
             "llama_model_loader: loaded meta data with 19 key-value pairs and 291 tensors from "
             "models/llama-2-7b.Q2_K.gguf (version GGUF V2)",
             "error loading model: llama_model_loader: failed to load model from models/llama-2-7b.Q2_K.gguf",
             "llama_init_from_gpt_params: error: failed to load model 'models/llama-2-7b.Q2_K.gguf'")
    incs = open_incidents(a)
    assert [i.kind for i in incs] == ["draft_load_failed"]
    assert incs[0].draft_model == "models/llama-2-7b.Q2_K.gguf" and incs[0].model == "models/llama-2-13b.Q8_0.gguf"


def test_draft_named_on_the_command_line_owns_its_load_failure(cat: Catalogue) -> None:
    """The draft known only from '-md PATH' (a pasted command line): its load failure is the draft's."""
    incs = open_incidents(feed(
        cat,
        "./llama-server -m /models/Qwen3-32B-Q4_K_M.gguf -md /models/Qwen3-0.6B-Q8_0.gguf -ngl 99",
        LOAD_TARGET,
        "llama_model_load: error loading model: invalid vector subscript",
        "common_init_from_params: failed to load model '/models/Qwen3-0.6B-Q8_0.gguf'"))
    assert [i.kind for i in incs] == ["draft_load_failed"]


def test_draft_only_architecture_is_the_drafts_even_without_draft_lines(cat: Catalogue) -> None:
    """A DFlash/EAGLE/assistant head the build does not know is a draft that failed to load, not the target."""
    incs = open_incidents(feed(
        cat, LOAD_TARGET,
        "llama_model_load: error loading model: unknown model architecture: 'gemma4-assistant'",
        "llama_model_load_from_file_impl: failed to load model",
        "common_init_from_params: failed to load model '/models/gemma-4-26b-A4B-it-assistant-QAT-Q4_0.gguf'"))
    assert [i.kind for i in incs] == ["draft_load_failed"]
    assert "gemma4-assistant" in incs[0].reason


def test_draft_spec_type_without_a_draft_model_is_reported(cat: Catalogue) -> None:
    """'--spec-type draft-simple' with no -md is said, inferred from the command line; a later draft load
    resolves it."""
    line = "llama-server -m /models/Qwen3.6-27B-Q4_K_M.gguf --spec-type draft-simple --port 8080"
    incs = open_incidents(feed(cat, line, LOAD_TARGET, MODEL_LOADED))
    assert [(i.kind, i.confidence) for i in incs] == [("spec_disabled", "inferred")]
    assert open_incidents(feed(cat, line, LOAD_TARGET, LOAD_DRAFT, MODEL_LOADED)) == []


def test_mtp_spec_type_needs_no_draft_model(cat: Catalogue) -> None:
    """draft-mtp drafts with the target's own layers: no draft model is needed, nothing is said."""
    line = "llama-server -m /models/Qwen3.6-27B-MTP-Q4_K_M.gguf --spec-type draft-mtp --port 8080"
    assert open_incidents(feed(cat, line, LOAD_TARGET, MODEL_LOADED)) == []


def test_metal_command_buffer_oom_while_serving_is_reported(cat: Catalogue) -> None:
    """Metal's status 5 / kIOGPUCommandBufferCallbackErrorOutOfMemory while serving is the target's OOM."""
    incs = open_incidents(feed(
        cat, LOAD_TARGET, MODEL_LOADED, TIMING,
        "ggml_metal_graph_compute: command buffer 1 failed with status 5",
        "error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)"))
    assert [(i.kind, i.confidence, i.device) for i in incs] == [("main_model_oom", "inferred", "Metal")]


def test_relayed_ollama_cause_is_read(cat: Catalogue) -> None:
    """ollama's 'llama runner process has terminated: error loading model: unable to allocate CUDA0 buffer'
    is the target's weights not fitting on CUDA0."""
    incs = open_incidents(feed(cat, "Error: llama runner process has terminated: error loading model: unable to "
                                    "allocate CUDA0 buffer"))
    assert [(i.kind, i.device) for i in incs] == [("main_model_oom", "CUDA0")]


def test_fitting_ends_at_the_warm_up_even_without_its_end_line(cat: Catalogue) -> None:
    """From b9151 the fit's end line is hidden at default verbosity: the warm-up of the real context ends the
    probe, so the draft's allocation failure after it is reported (engine sample b9538 draft-kv-oom)."""
    incs = open_incidents(feed(
        cat, LOAD_TARGET, FIT_START,
        "0.00.218.582 I common_params_fit_impl: projected to use 640 MiB of host memory vs. 24105 MiB of total host "
        "memory",
        "0.00.583.190 I common_init_from_params: warming up the model with an empty run - please wait ... "
        "(--no-warmup to disable)",
        "0.00.603.528 I srv    load_model: loading draft model '/models/wide-kv.gguf'",
        "0.00.727.348 E ggml_aligned_malloc: insufficient memory (attempted to allocate 131072.00 MB)",
        "0.00.727.387 E alloc_tensor_range: failed to allocate CPU buffer of size 137438953472"))
    assert [(i.kind, i.confidence, i.device) for i in incs] == [("draft_context_failed", "inferred", "CPU")]


def test_draft_implementation_without_a_draft_context_is_spec_disabled(cat: Catalogue) -> None:
    """'ctx_dft=no' in a draft implementation's set-up: --spec-type draft-simple was given without -md."""
    incs = open_incidents(feed(
        cat, LOAD_TARGET, "0.00.015.512 I srv    load_model: initializing slots, n_slots = 1",
        "0.00.015.629 I common_speculative_impl_draft_simple: adding speculative implementation 'draft-simple'",
        "0.00.015.677 I common_speculative_impl_draft_simple: - gpu_layers=-1, cache_k=f16, cache_v=f16, ctx_tgt=no, "
        "ctx_dft=no, devices=[default]"))
    assert [(i.kind, i.confidence) for i in incs] == [("spec_disabled", "certain")]


def test_vocabulary_mismatch_with_nothing_after_it_is_draft_incompatible(cat: Catalogue) -> None:
    """The 2023 speculative example stops at its vocabulary check: the mismatch alone says the draft cannot
    serve this target (inferred); a BOS/EOS warning alone, on which speculation goes on, says nothing."""
    incs = open_incidents(feed(cat, "main: error: draft model vocab must match target model to use speculation but "
                                    "target vocab size 152064 does not match draft vocab size 32002"))
    assert [(i.kind, i.confidence) for i in incs] == [("draft_incompatible", "inferred")]
    assert open_incidents(feed(cat, "common_speculative_are_compatible: draft model bos tokens must match target "
                                    "model to use speculation. add: 0 - 1, id: 151643 - 128000)")) == []


def test_ollama_bare_cudamalloc_cause_is_the_targets_oom(cat: Catalogue) -> None:
    """ollama's scheduler line quoting the runner's 'cudaMalloc failed: out of memory' is the target's OOM."""
    incs = open_incidents(feed(cat, 'time=2025-06-05T17:54:37.891-05:00 level=ERROR source=sched.go:489 '
                                    'msg="error loading llama server" error="llama runner process has terminated: '
                                    'cudaMalloc failed: out of memory"'))
    assert [(i.kind, i.confidence) for i in incs] == [("main_model_oom", "inferred")]


def test_banner_says_what_an_inferred_finding_rests_on(cat: Catalogue) -> None:
    """The alert of an inferred incident names the line and the silence it was drawn from."""
    inc = open_incidents(feed(cat, LOAD_TARGET, CUDA_OOM, GALLOCR))[0]
    text = banner(inc, colour=False)
    assert "inferred    allocation failure at line 2, then the log ends there" in text


def test_a_quiet_source_concludes_what_its_last_lines_left_open(cat: Catalogue) -> None:
    """Silence after an allocation failure concludes it while the source is still open (a pipe, a followed file):
    the analyzer's ``quiet`` draws the end-of-input conclusion without waiting for the end."""
    a = Analyzer(cat, source="t.log")
    a.feed(("\n".join([LOAD_TARGET, CUDA_OOM, GALLOCR]) + "\n").encode())
    assert a.incidents() == []
    a.quiet(10)
    inc = a.incidents()[0]
    assert (inc.kind, inc.confidence) == ("main_model_oom", "inferred")
    assert "10 s of silence" in inc.extra["inferred_from"]


def test_the_pipe_analysis_tells_the_analyzer_of_a_silence(cat: Catalogue) -> None:
    """The pipe's analysis thread, idle past its quiet period with a failure open, concludes it before input ends."""
    a = Analyzer(cat, source="stdin")
    side = SideAnalysis(a, lambda: None, lambda _: None, idle=0.01, quiet=0.0)
    try:
        side.put(("\n".join([LOAD_TARGET, CUDA_OOM, GALLOCR]) + "\n").encode())
        inc = wait_for(a.incidents, "the silence's conclusion")[0]
        assert "of silence" in inc.extra["inferred_from"]
    finally:
        side.close(5)
