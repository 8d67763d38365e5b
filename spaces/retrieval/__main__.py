"""Serve the CLIP retrieval page alone: python -m spaces.retrieval [--port N] [--offline]."""

from shared.launch import serve_page

serve_page("retrieval")
