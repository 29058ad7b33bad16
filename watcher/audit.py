"""Check the catalogue against a llama.cpp source tree: which log messages it recognises and which it misses.

llama.cpp rewords its log lines often. The audit reads the C/C++ sources, pulls out every log call on
the paths that matter to specwatch (speculative decoding, draft loading, context and KV creation,
backend allocation, memory sizes, slots, statistics), turns each format string into the line the
program would print (``%d`` -> a number, ``%s`` of ``__func__`` -> the enclosing function, the
``srv  %12.*s: `` prefixes of the server macros expanded) and classifies that line with the catalogue.
The parser is deliberately small: a comment/string-aware scanner, not a C++ front end.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from watcher.catalogue import Catalogue, Pattern
from watcher.classify import Classifier
from watcher.events import Record

#: Files on the paths that matter, relative to the llama.cpp root (globs; old and new layouts).
RELEVANT_FILES = (
    "common/speculative.cpp", "common/common.cpp", "common/fit.cpp", "common/arg.cpp",
    "tools/server/server.cpp", "tools/server/server-context.cpp", "tools/server/server-common.cpp",
    "examples/server/server.cpp", "examples/server/utils.hpp",
    "src/llama.cpp", "src/llama-context.cpp", "src/llama-kv-cache*.cpp", "src/llama-memory*.cpp",
    "src/llama-model-loader.cpp", "src/llama-model.cpp", "src/llama-vocab.cpp",
    "ggml/src/ggml-alloc.c", "ggml/src/ggml-backend.cpp", "ggml/src/ggml.c",
    "ggml/src/gguf.cpp", "ggml/src/ggml-cuda/ggml-cuda.cu", "ggml/src/ggml-vulkan/ggml-vulkan*.cpp",
    "ggml/src/ggml-metal/*.m", "ggml/src/ggml-metal/*.cpp", "ggml/src/ggml-cpu/ggml-cpu.c",
    "ggml/src/ggml-cpu/ggml-cpu.cpp", "ggml/src/ggml-backend-reg.cpp",
)

#: What a message must talk about to matter (searched in the format string).
TOPIC = re.compile(
    r"draft|specul|\bMTP\b|eagle|dflash|accept|"
    r"alloc|out of memory|\bOOM\b|MiB|\bMB\b|buffer size|free memory|device memory|"
    r"kv cache|KV (?:self|buffer)|initialize the context|create[ _]context|n_slots|new slot|"
    r"failed to load model|loading model|error loading model|model loaded|exiting due|"
    r"statistics|fit params|fitting params|failed to measure|vocab type|vocab must",
    re.IGNORECASE)

#: Messages that contain a topic word but say nothing specwatch acts on, with the reason.
#: Matched against the instantiated line; each entry is (regex, why).
IGNORED: tuple[tuple[str, str], ...] = (
    (r"draft candidate|generate_draft:|max possible draft|add accepted tokens|truncating draft|"
     r"ngram|n_max=|n_draft=|draft:\s*$|mod size=|ignoring small draft|max possible draft is too small",
     "per-token speculation debugging"),
    (r"ctx_dft pos_max|target embeddings of size|Drafts may degrade",
     "draft quality warnings (speculation still runs)"),
    (r"synthetic (?:speculative )?acceptance", "synthetic acceptance (benchmark mode)"),
    (r"saving prompt|prompt cache|cache state|checkpoint|state_read_|state_write_|llama_io_",
     "prompt cache / session state"),
    (r"\bmmap\b|mlock|tensor data|tensor '|tensor \w+ \(|tensors? of type|repacked|extra buffer|- tensor split|"
     r"lazy read|loading model tensors|file size\s+=|print_info:", "model metadata and weight loading"),
    (r"graph nodes|graph splits|n_ctx_per_seq|n_ctx_seq|n_batch|n_ubatch|flash_attn|causal_attn|freq_|"
     r"n_seq_max|kv_unified|\bswa\b|KV cache shifting|shifting KV cache|purging positions|copying KV buffer|"
     r"does not have KV cache|creating [\w\s-]*KV cache|DSV4|dsv4|indexer", "context parameters and KV layout"),
    (r"reallocating|already allocated|max_size\[|^\S+ \[\d+: |graph copy|reallocate multi buffer",
     "allocator tracing"),
    (r"host buffer|pinned memory|output buffer size|host allocation|hipMallocManaged|vm_allocate|calloc failed|"
     r"Behavior may be unexpected when allocating 0 bytes", "host memory details"),
    (r"Device \d+: .*VRAM|found \d+ CUDA devices|alloc\[\d+\]: \d+ buffers|recommendedMaxWorkingSetSize|"
     r"allocated buffer, size =|ggml_metal_(?:init|free): (?:de)?allocating|MiB free\)|\(\d+ MiB, \d+ MiB free\)",
     "device inventory"),
    (r"compute buffer size (?:is|of) [\d.]+ MiB, (?:does not )?match", "compute buffer self-check at teardown"),
    (r"getting device memory data|projected memory use|targets for free memory|memory for test allocation|"
     r"MoE tensors moved|\[mtmd\] (?:adding|estimated)", "fit probe tracing"),
    (r"vocab:|vocab only|special_eos|special_bos|token to piece|tokenizer|\bBPE\b|\bSPM\b",
     "vocabulary loading"),
    (r"failed to find KV cache slot|does not have a KV cache|KV cache updates|defragmenting|clearing KV cache|"
     r"kv cache rm|context reuse", "KV cache maintenance while serving"),
    (r"decoding speculative batch", "per-token speculation debugging"),
    (r"mem_pool|max_size(?:\[\d+\])? =|^\S+ \[[\d:\s-]+\] \(", "allocator tracing"),
    (r"^main: loading model$", "old server banner (the loader lines carry the path)"),
    (r"exiting due to HTTP server error", "HTTP server start-up (not about models)"),
    (r"bad_alloc error while reading value|memory size overflow while allocating ggml context",
     "corrupt GGUF header (followed by the load failure lines)"),
)
_IGNORED = [(re.compile(rx), why) for rx, why in IGNORED]

#: Log macros and how each prints: (level, prefix format, prefix arguments, index of the format argument).
_SRV = ("srv  %12.*s: ", ["12", "__func__"])
_SLT = ("slot %12.*s: id %2d | task %d | ", ["12", "__func__", "0", "-1"])
_SPC = ("spec %12.*s: ", ["12", "__func__"])
_COM = ("cmn  %12.*s: ", ["12", "__func__"])
_PLAIN: tuple[str, list[str]] = ("", [])
MACROS: dict[str, tuple[str, tuple[str, list[str]], int]] = {}
for _lvl in ("DBG", "TRC", "INF", "WRN", "ERR", "CNT"):
    MACROS[f"LOG_{_lvl}"] = (_lvl, _PLAIN, 0)
    MACROS[f"SRV_{_lvl}"] = (_lvl, _SRV, 0)
    MACROS[f"SLT_{_lvl}"] = (_lvl, _SLT, 1)
    MACROS[f"SPC_{_lvl}"] = (_lvl, _SPC, 0)
    MACROS[f"COM_{_lvl}"] = (_lvl, _COM, 0)
for _lvl, _name in (("DBG", "DEBUG"), ("INF", "INFO"), ("WRN", "WARN"), ("ERR", "ERROR"), ("CNT", "CONT")):
    MACROS[f"LLAMA_LOG_{_name}"] = (_lvl, _PLAIN, 0)
    MACROS[f"GGML_LOG_{_name}"] = (_lvl, _PLAIN, 0)
MACROS["LOG"] = ("OUT", _PLAIN, 0)
MACROS["fprintf"] = ("ERR", _PLAIN, 1)  # only fprintf(stderr, ...)
#: Levels a default run prints (llama.cpp hides TRC from b9151 and DBG always).
VISIBLE = {"INF", "WRN", "ERR", "OUT", "CNT", "STREAM"}

_CALL = re.compile(r"\b(" + "|".join(sorted(MACROS, key=len, reverse=True)) + r")\s*\(|std::cerr\s*<<")
_CONV = re.compile(r"%([-+ #0]*)(\*|\d+)?(?:\.(\*|\d+))?(hh|h|ll|l|z|j|t|L|q)?([diouxXeEfFgGcspn%])")
_INT_MACRO = re.compile(r'"\s*PRI([diuxX])(?:8|16|32|64|MAX|PTR)\s*"')
_KEYWORDS = {"if", "for", "while", "switch", "catch", "return", "sizeof", "do", "else", "try", "defined",
             "decltype", "static_assert", "alignof", "GGML_ASSERT", "GGML_ABORT"}
#: String macros pasted into format strings, with what they expand to.
STRING_MACROS = {"GGML_CUDA_NAME": "CUDA", "GGML_CUBLAS_NAME": "cuBLAS", "GGML_METAL_NAME": "Metal",
                 "LOG_COL_DEFAULT": "", "LOG_COL_BOLD": "", "LOG_COL_RED": "", "LOG_COL_YELLOW": ""}
_SOURCE_EXT = (".c", ".cc", ".cpp", ".cu", ".cuh", ".h", ".hpp", ".m", ".mm")


@dataclass(frozen=True)
class Message:
    """One log call found in the source and the line it prints."""

    file: str
    line: int
    function: str
    macro: str
    level: str
    fmt: str
    example: str

    @property
    def lines(self) -> list[str]:
        """The printed lines (a message with embedded newlines prints several; the first keeps the prefix)."""
        return [ln for ln in self.example.split("\n") if ln.strip()]

    @property
    def visible(self) -> bool:
        """Whether llama.cpp prints it at its default verbosity (TRC/DBG need -lv 4 / -v)."""
        return self.level in VISIBLE

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"file": self.file, "line": self.line, "function": self.function, "macro": self.macro,
                "level": self.level, "format": self.fmt, "example": self.example}


@dataclass
class Report:
    """The audit's findings for one source tree."""

    root: str
    files: int = 0
    calls: int = 0
    recognised: list[tuple[Message, str]] = field(default_factory=list)
    missed: list[Message] = field(default_factory=list)
    ignored: list[tuple[Message, str]] = field(default_factory=list)
    seen_patterns: dict[str, int] = field(default_factory=dict)
    absent: list[Pattern] = field(default_factory=list)  # llama.cpp patterns no message here matches
    foreign: list[Pattern] = field(default_factory=list)  # patterns of other programs (LM Studio, koboldcpp)

    def coverage(self, visible_only: bool = False) -> float:
        """Share of relevant messages the catalogue recognises (0..1)."""
        rec = [m for m, _ in self.recognised if m.visible or not visible_only]
        miss = [m for m in self.missed if m.visible or not visible_only]
        total = len(rec) + len(miss)
        return len(rec) / total if total else 1.0

    def as_dict(self) -> dict[str, object]:
        """JSON form for ``patterns audit --json``."""
        return {
            "root": self.root,
            "files": self.files,
            "log_calls": self.calls,
            "relevant": len(self.recognised) + len(self.missed),
            "coverage": round(self.coverage(), 4),
            "coverage_default_verbosity": round(self.coverage(visible_only=True), 4),
            "recognised": [dict(m.as_dict(), pattern=pid) for m, pid in self.recognised],
            "missed": [m.as_dict() for m in self.missed],
            "ignored": [dict(m.as_dict(), reason=why) for m, why in self.ignored],
            "patterns_seen": self.seen_patterns,
            "patterns_absent": [{"id": p.id, "until": p.until, "since": p.since, "retired": bool(p.until)}
                                for p in self.absent],
            "patterns_foreign": [p.id for p in self.foreign],
        }


def is_llama_pattern(p: Pattern) -> bool:
    """Patterns of llama.cpp's own code; the others (LM Studio, koboldcpp, llama-swap) cannot appear in it."""
    return p.origin.lower().startswith(("llama.cpp", "ggml"))


def relevant_file(rel: str) -> bool:
    """Whether a source file is on the paths the audit reads."""
    return any(fnmatch.fnmatchcase(rel, g) for g in RELEVANT_FILES)


def source_files(root: Path) -> Iterator[Path]:
    """Relevant source files under ``root`` (a llama.cpp checkout or a package that vendors one)."""
    base = find_llama_root(root)
    for path in sorted(base.rglob("*")):
        if path.suffix in _SOURCE_EXT and path.is_file() and relevant_file(path.relative_to(base).as_posix()):
            yield path


def find_llama_root(root: Path) -> Path:
    """The llama.cpp directory inside ``root``: itself, or a vendored copy (``vendor/llama.cpp``)."""
    for cand in (root, root / "vendor" / "llama.cpp", root / "llama.cpp", *sorted(root.glob("*/vendor/llama.cpp"))):
        if (cand / "common").is_dir() or (cand / "src").is_dir() or (cand / "ggml").is_dir():
            return cand
    return root


def audit(root: Path, catalogue: Catalogue) -> Report:
    """Extract, instantiate and classify every relevant log message under ``root``."""
    base = find_llama_root(root)
    report = Report(str(root))
    classifier = Classifier(catalogue)
    for path in source_files(root):
        report.files += 1
        rel = path.relative_to(base).as_posix()
        for msg in extract(path.read_text(encoding="utf-8", errors="replace"), rel):
            report.calls += 1
            matches: list[Pattern] = []
            for text in msg.lines:
                matches.extend(p for p in classifier.matches(Record(text, msg.line, rel)) if p not in matches)
            for p in matches:
                report.seen_patterns[p.id] = report.seen_patterns.get(p.id, 0) + 1
            if not TOPIC.search(msg.fmt):
                continue
            specific = [p for p in matches if not p.generic]
            if specific:
                report.recognised.append((msg, specific[0].id))
                continue
            why = next((w for rx, w in _IGNORED if rx.search(msg.example)), None)
            if why is not None:
                report.ignored.append((msg, why))
            else:
                report.missed.append(msg)
    for p in catalogue.patterns:
        if p.id in report.seen_patterns:
            continue
        (report.absent if is_llama_pattern(p) else report.foreign).append(p)
    return report


# -- extraction --------------------------------------------------------------------------------------

def extract(text: str, rel: str = "-") -> list[Message]:
    """Every log call of ``text`` (C/C++ source) as a Message with its instantiated example line."""
    masked = _mask(text)
    src = _Source(text, masked, rel, _function_spans(masked))
    out: list[Message] = []
    for m in _CALL.finditer(masked):
        name = m.group(1) or "std::cerr"
        if name == "std::cerr":
            end = masked.find(";", m.end())
            if end < 0:
                continue
            msg = _stream(src, m.start(), m.end(), end)
        else:
            close = _close_paren(masked, m.end() - 1)
            if close < 0:
                continue
            msg = _call(src, name, m.start(), m.end(), close)
        if msg is not None:
            out.append(msg)
    return out


def _mask(text: str) -> str:
    """``text`` with comments and preprocessor lines blanked and string/char bodies replaced by '_'.

    Offsets are kept, so a match in the mask points at the same place in the source.
    """
    out = list(text)
    i, n = 0, len(text)
    line_start = True
    while i < n:
        c = text[i]
        if line_start and c in " \t":
            i += 1
            continue
        if line_start and c == "#":
            j = i
            while j < n and text[j] != "\n":
                if text[j] == "\\" and j + 1 < n and text[j + 1] == "\n":
                    j += 1
                j += 1
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
            continue
        line_start = c == "\n"
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c == "R" and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(\s]{0,16})\(', text[i:])
            if m is None:
                i += 1
                continue
            close = text.find(")" + m.group(1) + '"', i + m.end())
            j = n if close < 0 else close + len(m.group(1)) + 2
            for k in range(i + 2, j - 1):
                if out[k] != "\n":
                    out[k] = "_"
            i = j
        elif c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum():  # digit separator 1'000
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = "_"
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _close_paren(masked: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(masked)):
        c = masked[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        elif c == ";" and depth <= 1:
            return -1
    return -1


def _split_args(text: str, masked: str, start: int, end: int) -> list[str]:
    """Top-level comma-separated arguments of the call whose body is ``[start, end)``."""
    args, depth, last = [], 0, start
    for i in range(start, end):
        c = masked[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[last:i].strip())
            last = i + 1
    args.append(text[last:end].strip())
    return args


_STR_LIT = re.compile(r'(?:u8|L|u|U)?"((?:[^"\\\n]|\\.)*)"')


def _literal(expr: str) -> str | None:
    """The value of a (concatenated) string literal expression, or None if it is not one."""
    expr = _INT_MACRO.sub(lambda m: '"' + "ll" + m.group(1) + '"', expr)
    for name, value in STRING_MACROS.items():
        if name in expr:
            expr = re.sub(r"\b" + name + r"\b", '"' + value + '"', expr)
    parts = list(_STR_LIT.finditer(expr))
    if not parts:
        return None
    rest = _STR_LIT.sub("", expr).strip()
    if rest and not re.fullmatch(r"[\s\w]*", rest):  # e.g. a ternary or a function call
        return None
    if rest and not all(w in ("fmt", "") for w in rest.split()):
        return None
    return "".join(_unescape(p.group(1)) for p in parts)


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}.get(m.group(1), ""), s)


@dataclass(frozen=True)
class _Source:
    text: str
    masked: str
    rel: str
    funcs: list[tuple[int, int, str]]


def _call(src: _Source, name: str, start: int, body: int, close: int) -> Message | None:
    text, masked, rel, funcs = src.text, src.masked, src.rel, src.funcs
    level, (prefix, prefix_args), fmt_index = MACROS[name]
    args = _split_args(text, masked, body, close)
    if name == "fprintf" and (not args or args[0] != "stderr"):
        return None
    if len(args) <= fmt_index:
        return None
    fmt = _literal(args[fmt_index])
    if fmt is None:
        return None
    lineno = text.count("\n", 0, start) + 1
    func = _enclosing(funcs, start)
    values = prefix_args + args[fmt_index + 1:]
    example = instantiate(prefix + fmt, values, func)
    shown = inline_literals(fmt, args[fmt_index + 1:])
    return Message(rel, lineno, func, name, level, shown.rstrip("\n"), example.strip("\n"))


def _stream(src: _Source, start: int, body: int, end: int) -> Message | None:
    """``std::cerr << "a" << x << "b" << std::endl;`` as one line (Vulkan prints this way)."""
    text, masked, rel, funcs = src.text, src.masked, src.rel, src.funcs
    pieces = _split_stream(text, masked, body, end)
    fmt_parts, example_parts = [], []
    for expr in pieces:
        lit = _literal(expr)
        if lit is not None:
            fmt_parts.append(lit)
            example_parts.append(lit)
        elif expr.strip() in ("std::endl", "std::flush"):
            continue
        else:
            fmt_parts.append("%s")
            example_parts.append(_value_for(expr, "d"))
    if not any(p.strip() for p in fmt_parts if p != "%s"):
        return None
    fmt = "".join(fmt_parts)
    example = "".join(example_parts).split("\n")[0]
    lineno = text.count("\n", 0, start) + 1
    return Message(rel, lineno, _enclosing(funcs, start), "std::cerr", "STREAM", fmt.rstrip("\n"), example)


def _split_stream(text: str, masked: str, start: int, end: int) -> list[str]:
    out, depth, last = [], 0, start
    i = start
    while i < end:
        c = masked[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif masked.startswith("<<", i) and depth == 0:
            out.append(text[last:i].strip())
            last = i + 2
            i += 2
            continue
        i += 1
    out.append(text[last:end].strip())
    return [p for p in out if p]


def instantiate(fmt: str, args: list[str], func: str = "func") -> str:
    """The line ``printf(fmt, args...)`` prints, with plausible values chosen from each argument's expression."""
    it = iter(args)
    out: list[str] = []
    pos = 0
    for m in _CONV.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, _length, conv = m.groups()
        if conv == "%":
            out.append("%")
            continue
        if width == "*":
            width = _int_of(next(it, "12"))
        if prec == "*":
            prec = _int_of(next(it, "12"))
        expr = next(it, "")
        spec = "%" + (flags or "") + (width or "") + ("." + prec if prec is not None else "")
        if conv == "s":
            lit = _literal(expr)
            value: object = func if expr.strip() == "__func__" else lit if lit is not None else _value_for(expr, "s")
            out.append((spec + "s") % value)
        elif conv in "di":
            out.append((spec + "d") % int(_value_for(expr, "d")))
        elif conv in "ouxX":
            out.append((spec + conv) % abs(int(_value_for(expr, "d"))))
        elif conv in "eEfFgG":
            out.append((spec + conv) % float(_value_for(expr, "f")))
        elif conv == "c":
            out.append("x")
        elif conv == "p":
            out.append("0x55d0c0ffee00")
    out.append(fmt[pos:])
    return "".join(out)


def inline_literals(fmt: str, args: list[str]) -> str:
    """``fmt`` with each ``%s`` whose argument is a string literal replaced by that literal.

    llama.cpp often writes ``LOG_WRN("%s", "the message\\n")``; the message is what matters.
    """
    it = iter(args)
    out: list[str] = []
    pos = 0
    for m in _CONV.finditer(fmt):
        if m.group(5) == "%":
            continue
        for starred in (m.group(2), m.group(3)):
            if starred == "*":
                next(it, "")
        expr = next(it, "")
        lit = _literal(expr) if m.group(5) == "s" else None
        if lit is not None:
            out.append(fmt[pos:m.start()] + lit.replace("%", "%%"))
            pos = m.end()
    out.append(fmt[pos:])
    return "".join(out)


def _int_of(expr: str) -> str:
    expr = expr.strip()
    return expr if expr.isdigit() else "12"


_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?[fFuUlL]*$")


def _value_for(expr: str, kind: str) -> str:
    """A realistic value for an argument, guessed from the argument's own text."""
    e = re.sub(r"^\((?:const\s+)?[\w:]+(?:\s*\*)?\)\s*", "", expr.strip())  # drop a C cast
    low = e.lower()
    if _NUMBER.match(e):
        return e.rstrip("fFuUlL")
    if re.search(r"\.size\(\)|\bn_|count|\bid\b", low) and kind != "s":
        return "4"
    if kind == "s":
        if "build" in low or "commit" in low:
            return "b11549-0c1e570"
        if "path" in low or "fname" in low or ("model" in low and ("c_str" in low or "name" in low)):
            return "/models/model.gguf"
        if "what()" in low or "err" in low or "strerror" in low:
            return "out of memory"
        if "buft" in low or "buffer_type" in low or "backend" in low or "dev" in low or "buf_name" in low:
            return "CUDA0"
        if "type" in low:
            return "f16"
        return "text"
    if kind == "f":
        if "1024" in e or "mib" in low or "size" in low:
            return "1536.00"
        return "0.50000"
    if "size" in low or "bytes" in low:
        return "1610612736"
    return "4"


# -- function names ------------------------------------------------------------------------------------

_LAMBDA = re.compile(r"\[[^\[\]]*\]\s*(?:\([^()]*(?:\([^()]*\)[^()]*)*\))?\s*(?:mutable\s*)?(?:->[^{]*)?$")
_FUNC = re.compile(r"(~?[A-Za-z_][\w:]*)\s*\(")


def _function_spans(masked: str) -> list[tuple[int, int, str]]:
    """(open, close, name) of every function body, lambdas as ``operator()`` (what ``__func__`` says)."""
    spans: list[tuple[int, int, str]] = []
    stack: list[tuple[int, str | None, bool]] = []
    last_stmt = 0
    parens = 0
    for i, c in enumerate(masked):
        if c == "(":
            parens += 1
        elif c == ")":
            parens = max(0, parens - 1)
        elif c == "{":
            header = masked[last_stmt:i].strip()
            if _LAMBDA.search(header):
                stack.append((i, "operator()", True))
                last_stmt = i + 1
            elif parens:
                stack.append((i, None, False))  # brace initialiser inside a call: not a statement
            else:
                stack.append((i, _header_name(header), True))
                last_stmt = i + 1
        elif c == "}":
            if stack:
                start, name, statement = stack.pop()
                if name:
                    spans.append((start, i, name))
                if statement:
                    last_stmt = i + 1
            else:
                last_stmt = i + 1
        elif c == ";" and not parens:
            last_stmt = i + 1
    return spans


def _header_name(header: str) -> str | None:
    if not header or "(" not in header:
        return None
    if _LAMBDA.search(header):
        return "operator()"
    if re.search(r"(?:^|\s)=\s*$", header) or header.endswith(","):
        return None  # initialiser list
    for m in _FUNC.finditer(header):
        name = m.group(1).split("::")[-1]
        if name in _KEYWORDS:
            return None
        if name.startswith("__attribute__") or name in ("alignas", "GGML_CALL", "LLAMA_API", "GGML_API"):
            continue
        return name
    return None


def _enclosing(spans: list[tuple[int, int, str]], pos: int) -> str:
    best: tuple[int, int, str] | None = None
    for s in spans:
        if s[0] < pos < s[1] and (best is None or s[0] > best[0]):
            best = s
    if best is None:
        return "func"
    if best[2] == "operator()":
        return "operator()"
    return best[2]


def iter_relevant(report: Report) -> Iterable[Message]:
    """Every relevant message, recognised or not (for callers that want one list)."""
    yield from (m for m, _ in report.recognised)
    yield from report.missed
