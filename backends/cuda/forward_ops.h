// Element-wise and GEMM ops of the Llama forward pass on a CUDA device (issue "CUDA backend",
// "every op of the forward pass"): RMSNorm, rotate-half RoPE, SwiGLU's silu(gate)·up, residual add,
// embedding gather from an f16 table, and y = x·Wᵀ through cuBLAS with f16 weights and f32
// accumulation. Semantics are those of the CPU scalar kernels (backends/cpu/kernels.h) and
// LlamaModel::apply_rope (angle = (float)pos · inv_freq[i] in f32, cos/sin in double rounded to
// float); the conformance tests compare them.
//
// Pointers are device memory unless a parameter says "host". Work is queued on `stream` (a
// cudaStream_t as void*; nullptr = default stream) and the calls return without waiting, except
// embedding_gather_cuda, which validates and copies the host token ids first.
// Errors: INVALID_ARGUMENT naming the value; CUDA/cuBLAS failures INTERNAL. Nothing aborts.
// Thread-safety: functions are reentrant; a CublasHandle is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/base/status.h"
#include "backends/cuda/cuda_allocator.h"

namespace palu::backends::cuda {

// y[r, i] = x[r, i] / sqrt(mean_i(x[r]²) + eps) · w[i]; x, y: [rows, n] (y may alias x).
Status rms_norm_cuda(const float* x, const float* w, float eps, float* y, int rows, int n, void* stream);

// In place on x [tokens, heads, d_h]: rotate-half RoPE of token t at position positions[t]
// (host array of `tokens` positions ≥ 0), inv_freq: host [d_h/2].
Status rope_cuda(float* x, int tokens, int heads, int d_h, const int32_t* positions, const float* inv_freq,
                 CudaAllocator* workspace, void* stream);

// y[i] = gate[i] · sigmoid(gate[i]) · up[i] (y may alias gate).
Status silu_mul_cuda(const float* gate, const float* up, float* y, size_t n, void* stream);

// y[i] += x[i].
Status add_cuda(const float* x, float* y, size_t n, void* stream);

// out[t, :] = float(table[ids[t], :]); table: [vocab, d] f16 bits; ids: host [n], each in
// [0, vocab) (else INVALID_ARGUMENT naming the position and the id).
Status embedding_gather_cuda(const uint16_t* table, int vocab, int d, const int32_t* ids, int n, float* out,
                             CudaAllocator* workspace, void* stream);

// A cuBLAS handle (RAII).
class CublasHandle {
 public:
  CublasHandle() = default;
  static Result<CublasHandle> make(int device);
  ~CublasHandle();
  CublasHandle(CublasHandle&& o) noexcept;
  CublasHandle& operator=(CublasHandle&& o) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  void* handle() const { return h_; }

 private:
  void* h_ = nullptr;
};

// y[m, n] = x[m, k] · W[n, k]ᵀ (+ beta·y): x f32 (rounded to f16 on the device, like the weights),
// W f16 bits row-major (uploaded once), f32 accumulation and output (cuBLAS GemmEx).
Status gemm_f16w_cuda(const CublasHandle& blas, const float* x, const uint16_t* w, float* y, int m, int n, int k,
                      float beta, CudaAllocator* workspace, void* stream);

}  // namespace palu::backends::cuda
