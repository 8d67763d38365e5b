"""The Stable Diffusion page: text to image you can watch, stop, replay and reproduce, and a tiny Stable Diffusion
trained here."""
