# Source on the GPU machine (device tool) after bench/gpu_setup.sh, for side_by_side.py's unsloth arm.
# Here, first: bash ../shared/tools/unsloth-pack.sh (writes .carry/unsloth-site.tgz) and put the
# xformers wheel that `pip install unsloth` brings for torch 2.11 into .carry/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .carry xformers==0.0.35
# then carry .whl and .carry. It installs:
#   /tmp/site  datasets 5 for the project's arms (.whl/ds5: the image has no datasets)
#   /tmp/base  bitsandbytes, pydantic, dill, multiprocess, platformdirs from the project's wheels (not
#              its transformers: Unsloth pins transformers <= 5.17, the image's own)
#   /tmp/us    Unsloth, unsloth_zoo, trl 1.15, datasets 4, ... (the payload) and xformers
# and exports UNSLOTH_PYTHONPATH=/tmp/us:/tmp/base for the arm's child process.
pipt() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
if [ -d .whl/ds5 ]; then pipt /tmp/site .whl/ds5/*.whl || return 1; fi
base=()
for n in bitsandbytes pydantic pydantic_core annotated_types typing_inspection dill multiprocess platformdirs; do
  base+=(.whl/$n-[0-9]*.whl)
done
pipt /tmp/base "${base[@]}" || return 1
mkdir -p /tmp/us && tar xzf .carry/unsloth-site.tgz -C /tmp/us || return 1
for w in .carry/xformers-*.whl; do [ -f "$w" ] && python3 -m zipfile -e "$w" /tmp/us; done
export UNSLOTH_PYTHONPATH=/tmp/us:/tmp/base
