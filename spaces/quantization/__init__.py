"""The quantization page: one model in every precision and runtime side by side. (In progress: the memory
calculator only; the page is not served until its ui.py exists.)"""
