"""beam_gpu_runner.transforms (folder transforms/ at the repository top)."""
