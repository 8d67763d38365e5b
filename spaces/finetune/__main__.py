"""Serve the fine-tuning page alone: python -m spaces.finetune [--port N] [--offline]."""

from shared.launch import serve_page

serve_page("finetune")
