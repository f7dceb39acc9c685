"""beam_gpu_runner.drivers (folder drivers/ at the repository top)."""
