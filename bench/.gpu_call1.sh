source bench/gpu_setup.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,transformers,peft,bitsandbytes as b; print(torch.__version__, transformers.__version__, peft.__version__, b.__version__)"
( timeout 300 python3 -m pytest -q -m gpu tests/gpu/test_gpu.py tests/gpu/test_nan_gpu.py tests/gpu/test_packing_gpu.py -p no:cacheprovider -o addopts="" 2>&1 | tail -25 ) > $OUT/pytest_gpu.txt
tail -8 $OUT/pytest_gpu.txt
timeout 270 python3 bench/side_by_side.py --run a --arms plain,studio,studio:unpacked --quick --out /tmp/sbs > $OUT/sbs_a.txt 2>&1
tail -25 $OUT/sbs_a.txt
tar czf $OUT/call1.tgz -C /tmp sbs bench 2>/dev/null; tar czf $OUT/results1.tgz bench/results 2>/dev/null; ls -la $OUT
