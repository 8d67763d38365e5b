"""Code every page shares: settings, device choice, the model registry and cache, offline assets, UI helpers.

Nothing here loads a model or imports torch at import time; the app must start fast.
"""
