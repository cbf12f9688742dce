"""Models: loading a Hub id, a folder, a .gguf file or a PyPI-shipped model, quantized or not, with
LoRA (loading.py); batched sampling, greedy decoding and teacher-forced perplexity (inference.py)."""
