"""The CLIP retrieval page: search images by text or by image, zero-shot labels, and a CLIP trained here."""
