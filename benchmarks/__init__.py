"""Benchmarks of GpuRunner against Beam's local runner (see benchmarks/README.md)."""
