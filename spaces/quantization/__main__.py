"""Serve the quantization page alone: python -m spaces.quantization [--port N] [--offline]."""

from shared.launch import serve_page

if __name__ == "__main__":
    serve_page("quantization")
