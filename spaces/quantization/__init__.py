"""The quantization page: one model in every precision and runtime side by side (speed, size, memory, quality),
the number formats, and a memory calculator. `ui.py` builds the page; `runner.py` measures each variant in a
process of its own; `classifier.py` and `lm.py` are the two model families."""
