"""beam_gpu_runner.pipelines (folder pipelines/ at the repository top)."""
