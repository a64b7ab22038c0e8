"""Examples that use image-worker as a library (run from the checkout, never shipped)."""
