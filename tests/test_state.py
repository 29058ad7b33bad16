"""State rules for the catalogue's newer events, fed real log lines (samples/ and llama.cpp's format strings)."""

from __future__ import annotations

from watcher.catalogue import Catalogue
from watcher.incidents import Incident
from watcher.pipeline import Analyzer
from watcher.state import Run

PROBE = ("0.03.621.477 E llama_init_from_model: failed to initialize the context: Gemma4Assistant requires "
         "ctx_other to be set (this warning is normal during memory fitting)")
MEASURE = ("0.00.887.866 W srv    load_model: [spec] failed to measure draft model memory: failed to create "
           "llama_context from model")
EXTRA = ("0.00.006.147 W operator(): failed to measure the memory of the extra model, fitting without it: failed "
         "to create llama_context from model")
HEAD_CTX = ("0.03.621.509 E cmn  common_init_: failed to create context with model "
            "'D:\\lmstudio\\models\\unsloth\\gemma-4-26B-A4B-it-qat-GGUF\\mtp-gemma-4-26B-A4B-it-Q8_0.gguf'")
STARTUP = ('0.03.621.514 LMSTUDIO_STARTUP_ERROR:{"schemaVersion":1,"code":"model_load_failed","message":"Failed to '
           'initialize the context: Gemma4Assistant requires ctx_other to be set (this warning is normal during '
           'memory fitting)"}')
SRV_CTX = ("0.03.621.529 E srv    load_model: failed to create context with model "
           "'D:\\lmstudio\\models\\unsloth\\gemma-4-26B-A4B-it-qat-GGUF\\mtp-gemma-4-26B-A4B-it-Q8_0.gguf': Failed to "
           "initialize the context: Gemma4Assistant requires ctx_other to be set (this warning is normal during "
           "memory fitting)")
LOAD_TARGET = "srv    load_model: loading model '/models/gemma-4-26B-A4B-it-Q4_K_M.gguf'"
LOAD_DRAFT = "srv    load_model: loading draft model '/models/qwen3-0.6b-q8_0.gguf'"
MTP_CREATE = ("0.00.056.143 I common_speculative_init_result: creating MTP draft context against the target model "
              "'/models/target.gguf'")
NO_MTP = "0.00.056.195 W llama_init_from_model: context type MTP requested but model doesn't contain MTP layers"
MTP_FAILED = "0.00.056.229 E common_speculative_init_result: failed to create MTP context"
FIT_START = ("common_init_result: fitting params to device memory, for bugs during this step try to reproduce them "
             "with -fit off, or provide --verbose logs if the bug only occurs with -fit on")
FIT_DONE = "common_fit_params: successfully fit params to free device memory"
MODEL_LOADED = "srv  llama_server: model loaded"
CUDA_OOM = ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 2645.29 MiB on device 0: cudaMalloc failed: out "
            "of memory")
GPU_IGNORED = "warning: no usable GPU found, --gpu-layers-draft option will be ignored"


def feed(cat: Catalogue, *lines: str) -> Analyzer:
    """Analyse these lines as one log, to its end."""
    a = Analyzer(cat, source="t.log")
    a.feed(("\n".join(lines) + "\n").encode())
    a.finish()
    return a


def kinds(a: Analyzer) -> list[str]:
    """Open incident kinds, oldest first."""
    return [i.kind for i in a.incidents() if i.status == "open"]


def only(a: Analyzer) -> Incident:
    """The one incident of this analysis."""
    incs = a.incidents()
    assert len(incs) == 1, [i.kind for i in incs]
    return incs[0]


def run1(a: Analyzer) -> Run:
    """The first (usually only) run."""
    return a.stream.runs[0]


# -- draft heads that need their target's context (fit_probe_note) ----------------------------------------

def test_fit_probe_note_alone_is_not_a_failure(cat: Catalogue) -> None:
    """Ollama 17951: the probe line and the draft-measure warning, then a working server: no incident."""
    a = feed(cat, PROBE, MEASURE, LOAD_TARGET, MODEL_LOADED)
    assert kinds(a) == []
    assert run1(a).draft_head == "Gemma4Assistant"


def test_ctx_other_then_create_context_is_a_real_draft_head_failure(cat: Catalogue) -> None:
    """LM Studio 2153: the caller's 'failed to create context with model' right after it makes it real."""
    a = feed(cat, PROBE, HEAD_CTX, STARTUP, HEAD_CTX, SRV_CTX)
    inc = only(a)
    assert inc.kind == "draft_context_failed"
    assert inc.extra["cause"] == "draft_head_alone"
    assert inc.server_state == "exited"
    assert inc.attempts == 1  # one failure reported up the call chain, not five attempts
    assert [e.lineno for e in inc.evidence] == [1, 2, 3, 4, 5]
    assert "Gemma4Assistant draft head" in inc.title
    # LMSTUDIO_STARTUP_ERROR says the log is LM Studio's: the draft is chosen in its settings, not with -md.
    assert "Speculative Decoding settings" in inc.hint and "-md" not in inc.hint


def test_head_loaded_as_the_main_model_says_so(cat: Catalogue) -> None:
    """When the failing file is the one loaded with -m, the reason says it was loaded as the main model."""
    load = ("srv    load_model: loading model "
            "'D:\\lmstudio\\models\\unsloth\\gemma-4-26B-A4B-it-qat-GGUF\\mtp-gemma-4-26B-A4B-it-Q8_0.gguf'")
    inc = only(feed(cat, load, PROBE, HEAD_CTX))
    assert "loaded as the main model" in inc.reason


def test_reason_in_the_server_line_alone_is_enough(cat: Catalogue) -> None:
    """The server's own line carries the ctx_other exception text: no probe line needed before it."""
    inc = only(feed(cat, SRV_CTX))
    assert inc.kind == "draft_context_failed" and inc.extra["cause"] == "draft_head_alone"


def test_target_oom_after_the_probe_stays_the_targets(cat: Catalogue) -> None:
    """Probe, then the target's own compute buffer fails: the last context error is the OOM, not ctx_other."""
    a = feed(cat, PROBE, MEASURE, CUDA_OOM,
             "E ggml_gallocr_reserve_n_impl: failed to allocate CUDA0 buffer of size 2773782656",
             "E llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers",
             "E cmn  common_init_: failed to create context with model '/models/gemma-4-26B-A4B-it-Q4_K_M.gguf'")
    assert kinds(a) == ["main_model_oom"]


def test_stale_probe_line_does_not_claim_a_later_failure(cat: Catalogue) -> None:
    """A ctx_other line many lines earlier is the probe; a later context failure is judged on its own."""
    filler = ["llama_model_loader: - kv   0:                       general.architecture str = gemma4"] * 8
    a = feed(cat, PROBE, *filler,
             "E cmn  common_init_: failed to create context with model '/models/gemma-4-26B-A4B-it-Q4_K_M.gguf'")
    assert kinds(a) == []


def test_named_context_failure_ends_a_stale_fit_window(cat: Catalogue) -> None:
    """llama-cli 24343: the fit started, never said it finished; the named failure after it still counts."""
    a = feed(cat, FIT_START, PROBE, PROBE, HEAD_CTX)
    assert kinds(a) == ["draft_context_failed"]


def test_spec_batch_failure_with_a_head_hints_at_mtp(cat: Catalogue) -> None:
    """LM Studio 2229: an assistant head and failing speculative batches: the hint names --spec-type draft-mtp."""
    inc = only(feed(cat, PROBE, "E srv        decode: failed to process speculative batch"))
    assert inc.kind == "spec_runtime_error"
    assert "draft-mtp" in inc.hint and "Gemma4Assistant" in inc.hint


# -- MTP requested on a model without MTP layers (mtp_unavailable) -----------------------------------------

def test_mtp_unavailable_gives_the_reason_of_the_mtp_failure(cat: Catalogue) -> None:
    """Engine b11549: 'doesn't contain MTP layers' then 'failed to create MTP context': one incident saying why."""
    a = feed(cat, "0.00.003.418 I srv    load_model: loading model '/models/target.gguf'",
             MTP_CREATE, NO_MTP, MTP_FAILED, "0.00.056.260 E srv    load_model: failed to create MTP context",
             "0.00.060.043 E srv          init: exiting due to model loading error")
    inc = only(a)
    assert inc.kind == "draft_context_failed"
    assert inc.extra["cause"] == "no_mtp_layers"
    assert inc.title == "Server exited: MTP requested, but target.gguf has no MTP layers"
    assert 3 in [e.lineno for e in inc.evidence]


def test_mtp_unavailable_without_a_context_failure_raises_it_itself(cat: Catalogue) -> None:
    """A build that carries on after the warning: the incident opens once the server is up."""
    a = feed(cat, MTP_CREATE, NO_MTP, MODEL_LOADED)
    inc = only(a)
    assert inc.kind == "draft_context_failed" and inc.extra["cause"] == "no_mtp_layers"
    assert inc.server_state == "serving_without_speculation"


def test_mtp_unavailable_inside_the_fit_probe_is_ignored(cat: Catalogue) -> None:
    """The fit probe measures the MTP context too; its warning there is not the real context's."""
    a = feed(cat, FIT_START, NO_MTP, EXTRA, FIT_DONE, MODEL_LOADED)
    assert kinds(a) == []


# -- per-step acceptance (draft_step_accepted) ------------------------------------------------------------

def test_step_lines_feed_slot_acceptance(cat: Catalogue) -> None:
    """PR 18211: per-step 'accepted N/M draft tokens' lines alone give the slot's drafted/accepted figures."""
    a = feed(cat, "slot update_slots: id  3 | task 0 | accepted 1/16 draft tokens, new n_tokens = 661",
             "slot update_slots: id  3 | task 0 | accepted 16/16 draft tokens, new n_tokens = 681",
             "slot update_slots: id  3 | task 0 | accepted 3/4 draft tokens, new n_tokens = 702")
    r = run1(a)
    assert (r.drafted, r.accepted) == (36, 20)
    assert (r.slots[3].drafted, r.slots[3].accepted, r.slots[3].speculative) == (36, 20, "on")
    assert r.speculation == "on"


def test_step_counts_are_not_replaced_by_a_later_summary(cat: Catalogue) -> None:
    """Steps and the task's summary count the same tokens: the kind seen first is counted, so counts never drop."""
    a = feed(cat, "slot update_slots: id  0 | task 5 | accepted 2/8 draft tokens, new n_past = 120",
             "slot update_slots: id  0 | task 5 | accepted 8/8 draft tokens, new n_past = 129",
             "slot print_timing: id  0 | task 5 | draft acceptance = 0.62500 (   10 accepted /    16 generated), "
             "mean len =  2.50",
             "slot update_slots: id  0 | task 9 | accepted 1/8 draft tokens, new n_past = 140")
    r = run1(a)
    assert (r.drafted, r.accepted) == (24, 11)
    assert (r.slots[0].drafted, r.slots[0].accepted) == (24, 11)


def test_steps_after_summaries_are_not_counted_twice(cat: Catalogue) -> None:
    """In a run that prints per-task summaries first, later step lines add nothing."""
    a = feed(cat, "slot print_timing: id  0 | task 5 | draft acceptance = 0.62500 (   10 accepted /    16 generated), "
                  "mean len =  2.50",
             "slot update_slots: id  0 | task 9 | accepted 1/8 draft tokens, new n_past = 140")
    assert (run1(a).drafted, run1(a).accepted) == (16, 10)


def test_steps_that_are_nearly_always_rejected_raise_low_acceptance(cat: Catalogue) -> None:
    """Five steps of 0/16 (80 drafted tokens, none accepted) are conclusive without a summary line."""
    step = "slot update_slots: id  0 | task 0 | accepted 0/16 draft tokens, new n_tokens = 100"
    inc = only(feed(cat, *[step] * 5))
    assert inc.kind == "low_acceptance" and inc.slots == [0]


# -- the draft on the CPU (draft_gpu_ignored) -------------------------------------------------------------

def test_gpu_layers_draft_ignored_warns_draft_on_cpu(cat: Catalogue) -> None:
    """'no usable GPU found, --gpu-layers-draft option will be ignored' with nothing on a GPU: draft_on_cpu."""
    a = feed(cat, GPU_IGNORED, "build: 4589 (aa6fb132) with cc (Debian 12.2.0-14) 12.2.0 for x86_64-linux-gnu",
             LOAD_TARGET, LOAD_DRAFT, MODEL_LOADED)
    inc = only(a)
    assert inc.kind == "draft_on_cpu" and inc.severity == "warning"
    assert inc.title.startswith("Draft qwen3-0.6b-q8_0.gguf runs on the CPU: no usable GPU found")
    assert run1(a).speculation != "failed"


def test_gpu_layers_draft_warning_is_dropped_when_the_draft_is_offloaded(cat: Catalogue) -> None:
    """A build that loads its GPU backends late prints the warning yet offloads: the offload line wins."""
    a = feed(cat, GPU_IGNORED, LOAD_TARGET, "load_tensors: offloaded 49/49 layers to GPU",
             LOAD_DRAFT, "load_tensors: offloaded 29/29 layers to GPU", MODEL_LOADED)
    assert kinds(a) == []


def test_gpu_layers_draft_warning_without_a_draft_raises_nothing(cat: Catalogue) -> None:
    """-ngld given but no draft loaded (or the draft already failed): there is no draft on the CPU to warn of."""
    assert kinds(feed(cat, GPU_IGNORED, LOAD_TARGET, MODEL_LOADED)) == []
    a = feed(cat, GPU_IGNORED, LOAD_TARGET, "srv    load_model: loading draft model '/models/missing.gguf'",
             "srv    load_model: failed to load draft model, '/models/missing.gguf'")
    assert kinds(a) == ["draft_load_failed"]


def test_gpu_layers_draft_warning_belongs_to_the_next_launch(cat: Catalogue) -> None:
    """Printed while options are parsed: after a served run it is the next launch's, not the served one's."""
    a = feed(cat, LOAD_TARGET, LOAD_DRAFT, MODEL_LOADED, GPU_IGNORED,
             "build: 4589 (aa6fb132) with cc (Debian 12.2.0-14) 12.2.0 for x86_64-linux-gnu", LOAD_TARGET,
             LOAD_DRAFT, MODEL_LOADED)
    inc = only(a)
    assert inc.kind == "draft_on_cpu" and inc.run == 2


# -- fitting and allocator context (fit_extra_unmeasured, fit_spec_estimate, alloc_retry, alloc_warning) ---

def test_fit_and_allocator_notes_alone_raise_nothing(cat: Catalogue) -> None:
    """Unmeasured draft, a draft estimate, a retry and a working-set warning are context, never incidents."""
    a = feed(cat, EXTRA, "srv    load_model: [spec] estimated memory usage of draft is 1234.50 MiB",
             "sched_reserve: compute buffer allocation failed, retrying without pipeline parallelism",
             "ggml_metal_log_allocated_size: warning: current allocated size is greater than the recommended max "
             "working set size", LOAD_TARGET, MODEL_LOADED)
    assert kinds(a) == []
    assert run1(a).ledger.estimated == {"draft": 1234.5}


def test_unmeasured_draft_explains_a_later_draft_oom(cat: Catalogue) -> None:
    """-fit left the draft out; the draft's KV cache then fails: the incident shows that line and says why."""
    a = feed(cat, EXTRA, "srv    load_model: [spec] estimated memory usage of draft is 1234.50 MiB", LOAD_DRAFT,
             "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 7168.00 MiB on device 1: cudaMalloc failed: "
             "out of memory",
             "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",
             "srv    load_model: failed to create draft context")
    inc = only(a)
    assert inc.kind == "draft_context_failed" and inc.device == "CUDA1"
    assert 1 in [e.lineno for e in inc.evidence]
    assert "could not measure the draft" in inc.hint and "-fitt" in inc.hint
    assert "1,234 MiB" in inc.hint or "1,235 MiB" in inc.hint


def test_unmeasured_draft_is_not_blamed_for_a_missing_file(cat: Catalogue) -> None:
    """Engine draft-missing: the same fit warning before a draft that does not exist adds nothing to it."""
    a = feed(cat, "0.00.004.516 W operator(): failed to measure the memory of the extra model, fitting without it: "
                  "failed to load model",
             "srv    load_model: loading draft model '/models/missing.gguf'",
             "llama_model_load: error loading model: llama_model_loader: failed to load model from "
             "/models/missing.gguf",
             "srv    load_model: failed to load draft model, '/models/missing.gguf'")
    inc = only(a)
    assert inc.kind == "draft_load_failed"
    assert 1 not in [e.lineno for e in inc.evidence]


DRAFT_FAIL_CHAIN = (
    "common_speculative_init_result: loading draft model 'Qwen3.8-27B-DFlash2-Q4_K_M.gguf'",
    "llama_model_load: error loading model: invalid vector subscript",
    "common_speculative_init_result: failed to load draft model",
    "srv    load_model: failed to load draft model",
)


def test_draft_load_failure_reported_up_the_call_chain_is_one_attempt(cat: Catalogue) -> None:
    """The speculative init's and the server's 'failed to load draft model' lines make one incident, one attempt."""
    inc = only(feed(cat, *DRAFT_FAIL_CHAIN))
    assert inc.kind == "draft_load_failed"
    assert inc.attempts == 1
    assert [e.lineno for e in inc.evidence if e.lineno in (3, 4)] == [3, 4]


def test_index_error_while_loading_a_draft_is_not_called_a_bad_file(cat: Catalogue) -> None:
    """'invalid vector subscript' / '_M_range_check' is llama.cpp's placement bug, not a corrupt GGUF."""
    inc = only(feed(cat, *DRAFT_FAIL_CHAIN))
    assert "not a file error" in inc.reason
    assert "Re-download" not in inc.hint and "-ngld" in inc.hint
    gnu = only(feed(cat, "E llama_model_load: error loading model: vector::_M_range_check: __n (which is 1) >= "
                         "this->size() (which is 1)",
                    "E srv    load_model: failed to load draft model, '/m/Llama-3.2-1B-Instruct-Q8_0.gguf'"))
    assert "not a file error" in gnu.reason
    corrupt = only(feed(cat, LOAD_DRAFT, "llama_model_load: error loading model: tensor 'blk.0.attn_q.weight' data "
                                         "is not within the file bounds, model is corrupted or incomplete",
                        "srv    load_model: failed to load draft model, '/models/qwen3-0.6b-q8_0.gguf'"))
    assert corrupt.reason == "file is not a valid GGUF"


def test_old_context_constructor_failures_are_the_targets_oom(cat: Catalogue) -> None:
    """Before b4881 a context constructor's compute-buffer or KV-cache failure is the target's OOM by itself."""
    inc = only(feed(cat,
                    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 144.00 MiB on device 4: cudaMalloc "
                    "failed: out of memory",
                    "ggml_gallocr_reserve_n: failed to allocate CUDA4 buffer of size 150995968",
                    "llama_new_context_with_model: failed to allocate compute buffers",
                    "Traceback (most recent call last):"))
    assert (inc.kind, inc.device, inc.mib) == ("main_model_oom", "CUDA4", 144.0)
    kv = only(feed(cat, "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 17179869216",
                   "llama_kv_cache_init: failed to allocate buffer for kv cache",
                   "llama_new_context_with_model: llama_kv_cache_init() failed for self-attention cache"))
    assert (kv.kind, kv.device) == ("main_model_oom", "CPU")


def test_old_draft_context_compute_failure_is_the_drafts(cat: Catalogue) -> None:
    """The same old constructor line while the draft loads is a draft context failure, not the target's."""
    a = feed(cat, LOAD_TARGET, LOAD_DRAFT,
             "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 826.00 MiB on device 0: cudaMalloc failed: out "
             "of memory",
             "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 866125824",
             "llama_new_context_with_model: failed to allocate compute buffers",
             "common_init_from_params: failed to create context with model '/models/qwen3-0.6b-q8_0.gguf'")
    assert kinds(a) == ["draft_context_failed"]
    inc = a.incidents()[0]
    assert (inc.device, inc.mib) == ("CUDA0", 826.0)


def test_no_draft_context_refused_for_configuration_is_not_an_oom(cat: Catalogue) -> None:
    """A target context refused for a setting (V cache quantisation without flash attention) raises nothing."""
    a = feed(cat, "0.10.692.115 E llama_init_from_model: V cache quantization requires flash_attn",
             "0.10.692.118 E cmn  common_init_: failed to create context with model '/g/DeepSeek-V4-Flash.gguf'",
             "0.10.692.156 Segmentation fault (core dumped)")
    assert kinds(a) == []


def test_unnamed_context_failure_followed_by_the_draft_line_is_the_drafts(cat: Catalogue) -> None:
    """A nameless context failure read as the target's moves to the draft on 'failed to create draft context'."""
    a = feed(cat, "main: build = 4857 (850320be8)",
             "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1412.77 MiB on device 0: cudaMalloc failed: out "
             "of memory",
             "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1481392128",
             "llama_init_from_model: failed to allocate compute buffers",
             "failed to create draft context")
    assert kinds(a) == ["draft_context_failed"]
    draft = next(i for i in a.incidents() if i.kind == "draft_context_failed")
    assert (draft.device, draft.mib) == ("CUDA0", 1412.77)
    assert [e.lineno for e in draft.evidence] == [2, 4, 5]
    main = next(i for i in a.incidents() if i.kind == "main_model_oom")
    assert main.status == "resolved" and "draft's" in main.resolution


def test_target_context_failure_named_by_the_caller_stays_the_targets(cat: Catalogue) -> None:
    """When the caller names the target's model after the nameless line, no later draft line can take it over."""
    a = feed(cat, "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 2048.00 MiB on device 0: cudaMalloc "
                  "failed: out of memory",
             "alloc_tensor_range: failed to allocate ROCm0 buffer of size 2147483648",
             "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",
             "common_init_result: failed to create context with model '/m/Qwen3.5-27B-Q4_K_M.gguf'",
             "failed to create draft context")
    assert "main_model_oom" in kinds(a)


# -- host draft failures: LM Studio's MLX engine, koboldcpp, the server line that quotes the loader --------
MLX_REFUSED = (" lmstudio-llama-cpp: failed to load model. Error: SpeculativeDecodingNotSupportedError: "
               "Speculative decoding is not supported for batched MLX models.")


def test_mlx_batched_refusal_is_spec_unsupported_once_per_attempts(cat: Catalogue) -> None:
    """Two refused MLX drafts are one spec_unsupported incident with two attempts and the MLX hint."""
    a = feed(cat, "2026-02-12 17:10:22 [DEBUG]", MLX_REFUSED, "2026-02-12 17:12:05 [DEBUG]", MLX_REFUSED)
    inc = only(a)
    assert inc.kind == "spec_unsupported" and inc.attempts == 2
    assert "Max Concurrent Predictions to 1" in inc.hint
    assert run1(a).speculation == "failed"


def test_mlx_draft_vocab_mismatch_is_draft_incompatible(cat: Catalogue) -> None:
    """mlx-engine's ValueError for a draft of another vocabulary size is draft_incompatible."""
    a = feed(cat, "lmstudio-llama-cpp: failed to load model. Error: ValueError: Draft model is not "
                  "compatible with main model")
    assert kinds(a) == ["draft_incompatible"]


def test_koboldcpp_draft_of_unknown_architecture_names_draft_and_cause(cat: Catalogue) -> None:
    """koboldcpp's load failure takes the draft's path and llama.cpp's cause from the lines before it."""
    path = "C:/m/gemma-4-26b-A4B-it-assistant-QAT-Q4_0.gguf"
    a = feed(cat,
             "Attempting to load draft model for speculative decoding. It will be fully offloaded if possible. "
             "Vocab must match the main model.",
             f"llama_model_loader: loaded meta data with 50 key-value pairs and 49 tensors from {path} "
             "(version GGUF V3 (latest))",
             "llama_model_load: error loading model: unknown model architecture: 'gemma4-assistant'",
             "llama_model_load_from_file_impl: failed to load model",
             f"Error: failed to load speculative decoding draft model '{path}'",
             "Speculative Decoding will not be used!")
    inc = only(a)
    assert inc.kind == "draft_load_failed"
    assert inc.draft_model == path and inc.model is None
    assert inc.reason == "unknown model architecture: 'gemma4-assistant'"
    assert "'gemma4-assistant'" in inc.hint and inc.server_state == "serving_without_speculation"


def test_server_line_quoting_the_loader_error_is_the_drafts(cat: Catalogue) -> None:
    """'failed to load draft model, PATH: error loading model: X' is the draft's failure, with X's meaning."""
    a = feed(cat, "E llama_model_load: error loading model: invalid vector subscript",
             "E llama_model_load_from_file_impl: failed to load model",
             "E srv load_model: failed to load draft model, '...\\mtp-gemma-4-31B-it.gguf': error loading model: "
             "invalid vector subscript")
    inc = only(a)
    assert inc.kind == "draft_load_failed" and "index error" in inc.reason
    assert run1(a).speculation == "failed"


def test_acceptance_bound_is_honest_at_zero_and_small_counts() -> None:
    """The Wilson upper bound stays above the plain rate, reaches below 0.30 only with enough tokens."""
    from watcher.state import acceptance_upper_bound

    assert acceptance_upper_bound(0, 0) == 1.0
    assert 0 < acceptance_upper_bound(0, 10) < 1
    assert acceptance_upper_bound(0, 6) > 0.30 > acceptance_upper_bound(0, 8)
    for acc, gen in ((3, 32), (70, 304), (38, 68)):
        assert acceptance_upper_bound(acc, gen) > acc / gen


def _acceptance_lines(pairs: list[tuple[int, int]]) -> bytes:
    lines = [f"slot print_timing: id  0 | task {i} | draft acceptance = {a / g:.5f} ({a:5d} accepted / {g:5d} "
             f"generated), mean len =  1.00\n" for i, (a, g) in enumerate(pairs)]
    return "".join(lines).encode()


def test_a_useless_draft_is_reported_before_the_window_fills(cat) -> None:
    """0 of 30 accepted in each of two tasks is already low acceptance; one such task is not yet."""
    one = Analyzer(cat, source="t")
    one.feed(_acceptance_lines([(0, 30)]))
    one.finish()
    assert "low_acceptance" not in {i.kind for i in one.incidents()}
    two = Analyzer(cat, source="t")
    two.feed(_acceptance_lines([(0, 30), (0, 30)]))
    two.finish()
    assert "low_acceptance" in {i.kind for i in two.incidents() if i.status == "open"}


def test_two_poor_rounds_of_a_healthy_draft_are_not_conclusive(cat) -> None:
    """Per-round debug lines accepting 1/16 then 2/16 do not raise low acceptance before better rounds."""
    text = "".join(f"slot update_slots: id  3 | task 0 | accepted {a}/{g} draft tokens, new n_tokens = {600 + i}\n"
                   for i, (a, g) in enumerate([(1, 16), (2, 16), (16, 16), (16, 16), (3, 4)]))
    a = Analyzer(cat, source="t")
    a.feed(text.encode())
    a.finish()
    assert "low_acceptance" not in {i.kind for i in a.incidents()}
