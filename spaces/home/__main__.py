"""Serve the home page alone: python -m spaces.home [--port N] [--offline]."""

from shared.launch import serve_page

serve_page("home")
