#!/usr/bin/env bash
# Build llama-cpp-python once per set of CPU features into ~/.cache/tandem/wheels/<features>/ and
# print that directory (setup.sh installs from it). llama.cpp's default `-march=native` also turns on
# AMX on CPUs that report it; where the kernel does not grant AMX tiles to the process (some VMs),
# every decode dies with a general protection fault. So on such CPUs the build names the vector
# extensions the CPU has and leaves AMX out.
set -euo pipefail
VERSION="${1:?usage: llama_build.sh VERSION PYTHON}"
PY="${2:?usage: llama_build.sh VERSION PYTHON}"
flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
args=""
if [[ "$flags" == *" amx_int8 "* || "$flags" == *" amx_tile "* ]]; then
  args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512vbmi:AVX512_VBMI \
              avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    if [[ "$flags" == *" ${pair%%:*} "* ]]; then args="$args -DGGML_${pair##*:}=ON"; fi
  done
fi
key="$(echo "$VERSION $args $(uname -m) $("$PY" -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-16)"
dir="${TANDEM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem}/wheels/$key"
if ! ls "$dir"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  mkdir -p "$dir"
  echo "==> building llama-cpp-python $VERSION (~5 minutes)${args:+ without AMX}" >&2
  CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-cache-dir \
    -w "$dir" "llama-cpp-python==$VERSION" >&2
fi
echo "$dir"
