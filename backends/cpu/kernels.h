// CPU kernels: one table of function pointers per ISA. The scalar table is the reference
// every other implementation (AVX2 and AVX-512 here, CUDA and Vulkan elsewhere) is tested
// against.
//
// All pointers are float32 row vectors unless the name says otherwise; `n` is an element
// count. Thread-safety: the tables are immutable; kernels are reentrant.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/cpu/cpu_isa.h"

namespace palu::backends::cpu {

struct KernelTable {
  CpuIsa isa;
  // Σ a[i]·b[i]
  float (*dot)(const float* a, const float* b, size_t n);
  // y[i] += alpha · x[i]
  void (*axpy)(float alpha, const float* x, float* y, size_t n);
  // y[i] = x[i] / sqrt(mean(x²) + eps) · w[i]   (y may alias x)
  void (*rms_norm)(const float* x, const float* w, float eps, float* y, size_t n);
  // x[i] = exp(x[i] − max) / Σ, in place
  void (*softmax)(float* x, size_t n);
  // y[i] = gate[i] · sigmoid(gate[i]) · up[i]   (y may alias gate)
  void (*silu_mul)(const float* gate, const float* up, float* y, size_t n);
  // y[i] += x[i]
  void (*add)(const float* x, float* y, size_t n);
  // dst[i] = float(src[i]) for IEEE half and bfloat16 bit patterns
  void (*f16_to_f32)(const uint16_t* src, float* dst, size_t n);
  void (*bf16_to_f32)(const uint16_t* src, float* dst, size_t n);
  // Single-threaded block of C[M,N] = A[M,K]·B[N,K]ᵀ + beta·C (row-major, leading dims).
  void (*gemm_nt)(int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                  float* c, int ldc, float beta);
  // x[i] = exp(x[i] − m) in place; returns Σ x[i] (float, summed in index order by the scalar
  // table): the step of an online softmax.
  float (*exp_sum)(float* x, size_t n, float m);
};

// The reference (always built).
const KernelTable& scalar_kernels();
// The AVX2 + FMA + F16C table; only call when detect_cpu_isa() ≥ kAvx2.
const KernelTable& avx2_kernels();
// The AVX-512 table; only call when detect_cpu_isa() == kAvx512.
const KernelTable& avx512_kernels();
// The table of one ISA (the caller checked detect_cpu_isa() ≥ isa).
const KernelTable& kernels_for(CpuIsa isa);
// The table for active_cpu_isa(), chosen once.
const KernelTable& kernels();

}  // namespace palu::backends::cpu
