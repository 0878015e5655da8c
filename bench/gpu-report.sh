#!/usr/bin/env bash
# The GPU report of the kernel families (issue 16), in one run on a machine with a real GPU:
#   bash bench/gpu-report.sh            writes bench/reports/<date>-<adapter>*.md and gpu-step-<date>.txt
# 1. npm run bench: the device's peaks; the tiny step (eager, compiled, the WebGPU peers); matmul
#    at 1024³, 4096³ and the GPT shapes against tfjs-webgpu and jax-webgpu; unfused vs flash
#    attention at T = 128…1024. Compiled mode uses the adapter's kernel family (the GPU family on a GPU).
# 2. bench/step.mts on GPT-2 124M (4×1024 tokens): compiled with the software family and with the
#    adapter's, with a per-kernel profile of each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
npm run bench -- --systems eager,compiled,tfjs-webgpu,jax-webgpu --sections peak,step,matmul,attention --squares 1024,4096 --steps 20
npx tsx bench/step.mts --preset gpt2 --engines compiled-software,compiled --steps 3 --profile | tee "bench/reports/gpu-step-$(date +%F).txt"
