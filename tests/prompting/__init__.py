"""Tests of the prompting page: logic (fast), the app through gradio_client, and the browser."""
