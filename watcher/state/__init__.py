"""Per-stream state: server runs, their slots and memory, and the incidents their events add up to.

A *stream* is one log source (a pipe, a file, a child's output). It holds a sequence of *runs*: one
load of a target model, possibly with a draft, and the slots that serve it. Events update the
current run; state changes open or update incidents. The rules follow llama.cpp's behaviour by era
(see patterns/README.md): which lines mean speculation is off, which mean it failed, and which
error lines are normal (the memory-fitting probe). Each concern has its module: model (runs and
slots), loading, memory, failures, serving, conclusions, and stream (which puts them together).
"""

from watcher.state.model import Run, Settings, Slot
from watcher.state.serving import acceptance_upper_bound, settled_by_speculation
from watcher.state.stream import HANDLERS, IGNORED, Stream

__all__ = ["HANDLERS", "IGNORED", "Run", "Settings", "Slot", "Stream", "acceptance_upper_bound",
           "settled_by_speculation"]
