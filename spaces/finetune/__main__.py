"""Serve the fine-tuning page alone: python -m spaces.finetune [--port N] [--offline]."""

from app import serve_page

serve_page("finetune")
