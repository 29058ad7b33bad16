"""Which log lines look like they matter for speculation or memory, whether or not a pattern knows them."""

from __future__ import annotations

import re

#: Words that make a line look like it matters for speculation or memory. A line with one of them that
#: no pattern matches is the early sign that a llama.cpp build says something new.
RELEVANT = re.compile(r"draft|specul|\bMTP\b|alloc|out of memory|\bOOM\b|vocab|failed|cannot|unable|error",
                      re.IGNORECASE)
#: Lines that contain a relevant word but are known noise (model metadata dumps, tokenizer tables).
NOISE = re.compile(r"llama_model_loader: - kv|print_info:|- type\s+\w+:|load: control token|^\s*$")
