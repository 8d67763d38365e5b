"""Serve the Inside-the-transformer page alone: python -m spaces.inside [--port N] [--offline]."""

from shared.launch import serve_page

serve_page("inside")
