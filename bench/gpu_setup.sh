# Source on the GPU machine (device tool): installs the carried wheels and makes qlora_studio
# importable from the checkout without pip-installing it.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
fi
mkdir -p /tmp/ns/qlora_studio
for p in core gui resources; do ln -sfn "$PWD/$p" /tmp/ns/qlora_studio/$p; done
export PYTHONPATH=/tmp/ns:/tmp/site:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export QLORA_STUDIO_CACHE=/tmp/qs-cache HF_DATASETS_CACHE=/tmp/hf-datasets
