"""Allocation failures and warnings that the engine or its host recovers from raise nothing, and a second GGUF
that is not a draft (a multimodal projector, a LoRA adapter) is never taken for one. Every line is the format
string of the source cited beside it, filled in as the engine prints it."""

from __future__ import annotations

import pytest

from watcher.catalogue import Catalogue
from watcher.incidents import Incident
from watcher.pipeline import Analyzer

LOAD_TARGET = "srv    load_model: loading model '/models/Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf'"
META = ("llama_model_loader: loaded meta data with 35 key-value pairs and 339 tensors from "
        "/models/Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf (version GGUF V3 (latest))")
SLOTS = "srv    load_model: initializing slots, n_slots = 4"
MODEL_LOADED = "srv  llama_server: model loaded"
TASKS = [f"slot print_timing: id  0 | task {i} | prompt eval time =     948.41 ms /    13 tokens (   72.95 ms per "
         "token,    13.71 tokens per second)" for i in range(12)]
# ggml-cuda.cu ggml_backend_cuda_buffer_type_alloc_buffer / ggml-alloc.c ggml_gallocr_reserve_n
CUDA_OOM = ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 808.35 MiB on device 1: cudaMalloc failed: out of "
            "memory")
GALLOCR = "ggml_gallocr_reserve_n: failed to allocate CUDA1 buffer of size 847616000"
# clip.cpp clip_model_loader: "%s: loaded meta data with %d key-value pairs and %d tensors from %s" (no version);
# server-context.cpp load_model: "loaded multimodal model, '%s'"
PROJECTOR = [
    "clip_model_loader: model name:   Qwen2.5-VL-7B-Instruct",
    "clip_model_loader: loaded meta data with 24 key-value pairs and 519 tensors from "
    "/models/mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf",
    "load_hparams: projector:          qwen2.5vl_merger",
    "srv    load_model: loaded multimodal model, '/models/mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf'",
]
# The 2024 clip.cpp printed the same line from clip_model_load.
PROJECTOR_2024 = ["clip_model_load: loaded meta data with 18 key-value pairs and 455 tensors from "
                  "/models/mmproj-model-f16.gguf"]


def feed(cat: Catalogue, *lines: str) -> list[Incident]:
    """Analyse these lines as one log, to its end; the incidents it leaves open."""
    a = Analyzer(cat, source="t.log")
    a.feed(("\n".join(lines) + "\n").encode())
    a.finish()
    return [i for i in a.incidents() if i.status == "open"]


RECOVERED: dict[str, list[str]] = {
    # llama-context.cpp sched_reserve (b6857+): LLAMA_LOG_WARN("%s: compute buffer allocation failed, retrying
    # without pipeline parallelism\n"), then graph_reserve again; the Vulkan chain is ggml-vulkan.cpp's.
    "pipeline-parallelism retry (CUDA)": [
        LOAD_TARGET, META, CUDA_OOM, GALLOCR, "graph_reserve: failed to allocate compute buffers",
        "sched_reserve: compute buffer allocation failed, retrying without pipeline parallelism",
        "sched_reserve:      CUDA0 compute buffer size =   408.09 MiB", SLOTS, MODEL_LOADED, *TASKS[:2]],
    "pipeline-parallelism retry (Vulkan)": [
        LOAD_TARGET, META, "ggml_vulkan: Device memory allocation of size 455917568 failed.",
        "ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory",
        "ggml_gallocr_reserve_n_impl: failed to allocate Vulkan1 buffer of size 455917568",
        "graph_reserve: failed to allocate compute buffers",
        "sched_reserve: compute buffer allocation failed, retrying without pipeline parallelism",
        SLOTS, MODEL_LOADED, *TASKS[:2]],
    "pipeline-parallelism retry, excerpt ending at the retry": [
        LOAD_TARGET, META, CUDA_OOM, GALLOCR, "graph_reserve: failed to allocate compute buffers",
        "sched_reserve: compute buffer allocation failed, retrying without pipeline parallelism"],
    # ggml-cuda.cu ggml_cuda_host_malloc: "%s: failed to allocate %.2f MiB of pinned memory: %s" (WARN in 2024,
    # DEBUG now); the host buffer type then falls back to a CPU buffer.
    "CUDA pinned host memory falls back to a CPU buffer": [
        LOAD_TARGET, META, "ggml_cuda_host_malloc: failed to allocate 1024.00 MiB of pinned memory: out of memory",
        "llm_load_tensors:        CPU buffer size =  1024.00 MiB", SLOTS, MODEL_LOADED, *TASKS[:2]],
    # 2023 ggml-cuda.cu: fprintf(stderr, "WARNING: failed to allocate %.2f MB of pinned memory: %s\n")
    "CUDA pinned host memory, 2023 wording": [
        LOAD_TARGET, META, "WARNING: failed to allocate 1024.00 MB of pinned memory: out of memory",
        SLOTS, MODEL_LOADED, *TASKS[:2]],
    # ggml-sycl.cpp ggml_sycl_host_malloc: "WARNING: failed to allocate %.2f MB of pinned memory: %s"
    "SYCL pinned host memory": [
        LOAD_TARGET, META,
        "WARNING: failed to allocate 1024.00 MB of pinned memory: syclGetErrorString is not supported",
        SLOTS, MODEL_LOADED, *TASKS[:2]],
    # ggml-vulkan.cpp ggml_backend_vk_host_buffer_type_alloc_buffer: "ggml_vulkan: Failed to allocate pinned
    # memory (<what>)", then ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size).
    "Vulkan pinned host memory, excerpt ending there": [
        LOAD_TARGET, META, "ggml_vulkan: Failed to allocate pinned memory (ErrorOutOfHostMemory)"],
    # llama-mmap.cpp llama_mlock::raw_lock: "warning: failed to mlock %zu-byte buffer (after previously locking
    # %zu bytes): %s\n" + "Try increasing RLIMIT_MEMLOCK ('ulimit -l' as root).\n"; loading goes on.
    "mlock refused": [
        LOAD_TARGET, META,
        "warning: failed to mlock 1433600000-byte buffer (after previously locking 0 bytes): Cannot allocate memory",
        "Try increasing RLIMIT_MEMLOCK ('ulimit -l' as root).", SLOTS, MODEL_LOADED, *TASKS[:2]],
    # ggml-metal.m ggml_backend_metal_log_allocated_size: a warning, not a failure.
    "Metal over its recommended working set": [
        LOAD_TARGET, META, "ggml_backend_metal_log_allocated_size: warning: current allocated size is greater than "
        "the recommended max working set size", SLOTS, MODEL_LOADED, *TASKS[:2]],
    # server update_slots: "failed to find free space in the KV cache, retrying with smaller batch size, i = %d,
    # n_batch = %d, ret = %d" after llama-context decode's "failed to find a memory slot for batch of size %d".
    "KV cache full, batch halved": [
        LOAD_TARGET, META, SLOTS, MODEL_LOADED, TASKS[0],
        "decode: failed to find a memory slot for batch of size 512",
        "srv  update_slots: failed to find free space in the KV cache, retrying with smaller batch size, i = 0, "
        "n_batch = 512, ret = 1", TASKS[1]],
    # server update_slots: context shift, a normal event of a full context.
    "context shift": [
        LOAD_TARGET, META, SLOTS, MODEL_LOADED, TASKS[0],
        "slot update_slots: id  0 | task 5 | slot context shift, n_keep = 0, n_left = 4094, n_discard = 2047",
        TASKS[1]],
    # ollama llm/server.go (ollama engine, 0.11+): an "alloc" load operation that does not fit is retried with
    # fewer GPU layers: slog.Info("model layout did not fit, applying backoff", "backoff", ...), then the runner
    # starts ("llama runner started in %0.2f seconds").
    "ollama's layout backoff": [
        'time=2025-12-02T17:13:47.200-05:00 level=INFO source=runner.go:1252 msg=load request="{Operation:alloc '
        'LoraPath:[] Parallel:1 BatchSize:512 FlashAttention:Auto KvSize:4096 NumThreads:8 GPULayers:41}"',
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1580.00 MiB on device 0: cudaMalloc failed: out of "
        "memory",
        "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1656750080",
        'time=2025-12-02T17:13:47.912-05:00 level=INFO source=server.go:1004 msg="model layout did not fit, '
        'applying backoff" backoff=0.10',
        'time=2025-12-02T17:13:48.200-05:00 level=INFO source=runner.go:1252 msg=load request="{Operation:commit '
        'LoraPath:[] Parallel:1 BatchSize:512 GPULayers:37}"',
        'time=2025-12-02T17:13:52.310-05:00 level=INFO source=server.go:1310 msg="llama runner started in 5.02 '
        'seconds"'],
    # ggml-metal: "%s: command buffer %d failed with status %lu" then "error: %s" (the MTLCommandBuffer error's
    # description). A GPU timeout fails that batch; it is no out-of-memory of the model.
    "Metal GPU timeout after status 5": [
        LOAD_TARGET, META, SLOTS, MODEL_LOADED, TASKS[0],
        "ggml_metal_graph_compute: command buffer 0 failed with status 5",
        "error: Caused GPU Timeout Error (00000002:kIOAccelCommandBufferCallbackErrorTimeout)", TASKS[1]],
    "Metal interactivity kill at the end of an excerpt": [
        LOAD_TARGET, META, SLOTS, MODEL_LOADED, TASKS[0],
        "ggml_metal_graph_compute: command buffer 1 failed with status 5",
        "error: Impacting Interactivity (0000000e:kIOGPUCommandBufferCallbackErrorImpactingInteractivity)"],
    # server prompt cache (server_prompt_cache::alloc): SRV_ERR("failed to allocate memory for prompt cache state:
    # %s") then SRV_WRN(" - cache size limit reduced to %.3f MiB"): the cache shrinks, serving goes on.
    "prompt cache shrinks after bad_alloc": [
        LOAD_TARGET, META, SLOTS, MODEL_LOADED, TASKS[0],
        "srv          alloc: failed to allocate memory for prompt cache state: std::bad_alloc",
        "srv          alloc:  - cache size limit reduced to 3276.800 MiB", TASKS[1]],
    # A multimodal server: the projector is a second GGUF, not a draft; tasks print no draft statistics.
    "vision projector (mmproj) loaded beside the model": [
        LOAD_TARGET, META, *PROJECTOR, SLOTS, MODEL_LOADED, *TASKS],
    "vision projector, 2024 clip.cpp": [LOAD_TARGET, META, *PROJECTOR_2024, SLOTS, MODEL_LOADED, *TASKS],
    # llama-adapter.cpp llama_adapter_lora_init_impl: a LoRA adapter is no second model either.
    "LoRA adapter": [
        LOAD_TARGET, META, "llama_adapter_lora_init_impl: loading lora adapter from '/models/lora.gguf' ...",
        "llama_adapter_lora_init_impl:      CUDA0 LoRA buffer size =    80.00 MiB",
        "llama_adapter_lora_init_impl: loaded 392 tensors from lora file", SLOTS, MODEL_LOADED, *TASKS],
}


@pytest.mark.parametrize("case", sorted(RECOVERED))
def test_recovered_or_normal_sequences_raise_nothing(cat: Catalogue, case: str) -> None:
    """A sequence llama.cpp (or its host) recovers from, or a healthy one with a second non-draft GGUF, is quiet."""
    assert [(i.kind, i.reason) for i in feed(cat, *RECOVERED[case])] == []


def test_a_failure_while_loading_the_projector_is_never_the_drafts(cat: Catalogue) -> None:
    """An allocation failure right after the mmproj's metadata is not blamed on a draft: there is none."""
    incs = feed(cat, LOAD_TARGET, META, *PROJECTOR[:2], CUDA_OOM, GALLOCR)
    assert [i.kind for i in incs] == ["main_model_oom"]
    assert incs[0].draft_model is None


def test_ollama_backoff_that_runs_out_is_still_reported(cat: Catalogue) -> None:
    """ollama's backoff is a retry, not a cure: a failure after it with nothing else reads as out of memory."""
    lines = RECOVERED["ollama's layout backoff"]
    incs = feed(cat, *lines[:4], CUDA_OOM, GALLOCR)
    assert [i.kind for i in incs] == ["main_model_oom"]


def _ollama_runner(blob: str, port: int) -> list[str]:
    """An ollama runner's start as ollama's server log prints it (llm/server.go, 2025)."""
    path = f"/root/.ollama/models/blobs/sha256-{blob}"
    return [
        f'time=2025-02-04T16:56:25.340Z level=INFO source=server.go:376 msg="starting llama server" cmd="/usr/lib/'
        f'ollama/runners/cuda_v12_avx/ollama_llama_server runner --model {path} --ctx-size 8192 --batch-size 512 '
        f'--n-gpu-layers 33 --threads 8 --parallel 4 --port {port}"',
        f"llama_model_loader: loaded meta data with 29 key-value pairs and 292 tensors from {path} (version GGUF V3 "
        "(latest))",
        "llm_load_tensors: offloaded 33/33 layers to GPU",
    ]


def test_a_second_ollama_model_is_not_a_draft(cat: Catalogue) -> None:
    """ollama serving one model and then failing to load another (its own runner) is that model's OOM, not a draft's."""
    served = [*_ollama_runner("6a0746a1ec1a", 34001),
              'time=2025-02-04T16:56:28.100Z level=INFO source=server.go:594 msg="llama runner started in 2.76 '
              'seconds"',
              '[GIN] 2025/02/04 - 16:56:29 | 200 |  4.26s |       127.0.0.1 | POST     "/api/chat"']
    failing = [*_ollama_runner("970aa74c0a90", 34002)[:2],
               "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1288.00 MiB on device 0: cudaMalloc failed: "
               "out of memory", "llama_model_load: error loading model: unable to allocate CUDA0 buffer"]
    incs = feed(cat, *served, *failing)
    assert [(i.kind, i.draft_model) for i in incs] == [("main_model_oom", None)]
    assert incs[0].model is not None and incs[0].model.endswith("970aa74c0a90")


def _router_child(port: int, path: str) -> list[str]:
    """A router child's first lines as the router forwards them (server-models.cpp: LOG("[%5d] %s", port, ...))."""
    return [f"[{port}] build: 7340 (a1b2c3d4) with cc (GCC) 13.2.0 for x86_64-linux-gnu",
            f"[{port}] srv    load_model: loading model '{path}'",
            f"[{port}] llama_model_loader: loaded meta data with 35 key-value pairs and 707 tensors from {path} "
            "(version GGUF V3 (latest))"]


def test_router_children_loading_together_are_not_each_others_drafts(cat: Catalogue) -> None:
    """Two router children (a chat model and an embedding model) load at once: the chat model's weights that do not
    fit are a target's failure, not a draft's, though its lines come after the other child's start."""
    chat = _router_child(41907, "/models/Qwen3-32B-Q4_K_M.gguf")
    embed = _router_child(41911, "/models/bge-m3-Q8_0.gguf")
    oom = ["[41907] ggml_backend_cuda_buffer_type_alloc_buffer: allocating 18288.00 MiB on device 0: cudaMalloc "
           "failed: out of memory",
           "[41907] llama_model_load: error loading model: unable to allocate CUDA0 buffer",
           "[41907] llama_model_load_from_file_impl: failed to load model"]
    incs = feed(cat, "srv          load: spawning server instance with name=qwen on port 41907",
                "srv          load: spawning server instance with name=bge on port 41911",
                *chat[:2], *embed, chat[2], *oom)
    assert [(i.kind, i.draft_model) for i in incs] == [("main_model_oom", None)]


@pytest.mark.parametrize("flag", ["-hfd", "-hfrd", "--hf-repo-draft", "--spec-draft-hf"])
def test_a_draft_from_hugging_face_is_a_draft_model(cat: Catalogue, flag: str) -> None:
    """common/arg.cpp gives the draft by -md or by a Hugging Face repo: --spec-type draft-simple with the latter is
    not 'a draft type without a draft model', even where the draft's loading line is hidden (default verbosity)."""
    cmd = (f"llama-server -hf ggml-org/Qwen3-32B-GGUF {flag} ggml-org/Qwen3-0.6B-GGUF --spec-type draft-simple "
           "--port 8080")
    assert feed(cat, cmd, LOAD_TARGET, META, SLOTS, MODEL_LOADED, *TASKS[:2]) == []


def test_metal_status_5_that_is_out_of_memory_is_still_reported(cat: Catalogue) -> None:
    """Status 5 followed by Metal's Insufficient Memory description stays the target's out of memory."""
    incs = feed(cat, LOAD_TARGET, META, SLOTS, MODEL_LOADED, TASKS[0],
                "ggml_metal_graph_compute: command buffer 0 failed with status 5",
                "error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)", TASKS[1])
    assert [i.kind for i in incs] == ["main_model_oom"]
