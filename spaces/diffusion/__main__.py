"""Serve the Stable Diffusion page alone: python -m spaces.diffusion [--port N] [--offline]."""

from shared.launch import serve_page

serve_page("diffusion")
