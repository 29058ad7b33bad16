"""specwatch: a watchdog for llama.cpp-family servers whose speculative decoding fails silently."""

__version__ = "0.1.0"
