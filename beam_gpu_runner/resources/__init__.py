"""The external resource framework (Flink FLIP-108 style).

api            plugin contract: driver factory, driver, ExternalResourceInfo
config         Flink keys (external-resources, external-resource.<name>.*)
loader         entry points / module:Class -> drivers
hints          Beam resource hints -> StageRequirements; accelerator type matching
leases         host-wide device leases (file lock, pid + start time, shares)
assignment     DeviceAllocator: acquire/release devices per worker
runtime_context what a worker's DoFns see
report, emitters  per-stage hint status; Flink / Kubernetes / YARN equivalents
commands       `beam-gpu-runner resources` and `beam-gpu-runner plan`

Nothing here imports the runner core (engine, execution, workers, placement,
jobservice, runner); tests/resources/test_resource_layering.py checks it.
"""
