"""Serve the prompting page alone: python -m spaces.prompting [--port N] [--offline]."""

from shared.launch import serve_page

serve_page("prompting")
