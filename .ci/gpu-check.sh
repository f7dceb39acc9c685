#!/usr/bin/env bash
# The GPU check, run once per task on a lent GPU machine (see BUILD_NOTES.md).
# It needs the wheels in .whl/ (BUILD_NOTES.md: "GPU check") because that machine
# has no network; it writes everything it measures under $OUT (or ./gpu-check-out).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-check-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
cd /tmp   # so the checkout's folders do not shadow the installed package
{
  echo "== machine"; nvidia-smi -L; python3 --version
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
  echo "== NVML discovery"; python3 -m beam_gpu_runner.cli resources
  echo "== gpu tests"
  cp -r "$REPO/tests" /tmp/gpu-tests && cp "$REPO/pytest.ini" /tmp/gpu-tests/
  (cd /tmp/gpu-tests && python3 -m pytest -q -p no:cacheprovider -m gpu -rs \
      --timeout 300 -c pytest.ini . )
  echo "== MNIST streaming on the GPU, 100k images unthrottled"
  python3 -m beam_gpu_runner.pipelines.mnist_streaming --rate=0 --num_images=100000 \
      --batch_size=1000 --output=/tmp/gpu-preds --nofake_gpu_when_none
  if [ -f "$REPO/benchmarks/run.py" ]; then
    echo "== benchmarks (quick)"
    cp -r "$REPO/benchmarks" /tmp/benchmarks && (cd /tmp && python3 -m benchmarks.run --quick --results_dir "$OUT")
  fi
} 2>&1 | tee "$OUT/gpu-check.log"
