// Forward-pass ops on the GPU (see forward_ops.h). Simple, bandwidth-bound kernels; the GEMMs go
// through cuBLAS.
#include <cublas_v2.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/cuda_status.h"
#include "backends/cuda/forward_ops.h"

namespace palu::backends::cuda {
namespace {

Status blas_status(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::ok();
  return internal_error(std::string(what) + ": cuBLAS status " + std::to_string((int)s));
}

__global__ void rms_norm_rows(const float* x, const float* w, float eps, float* y, int n) {
  const float* xr = x + (size_t)blockIdx.x * n;
  float* yr = y + (size_t)blockIdx.x * n;
  __shared__ float part[32];
  float s = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float inv = 1.0f / sqrtf(part[0] / (float)n + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// cos/sin [tokens, half] precomputed on the host in double (the CPU's rounding), then applied.
__global__ void rope_apply(float* x, int heads, int d_h, const float* cs, const float* sn) {
  const int t = blockIdx.x, half = d_h / 2;
  for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    float* v = x + ((size_t)t * heads + h) * d_h;
    const float c = cs[(size_t)t * half + i], s = sn[(size_t)t * half + i];
    const float x0 = v[i], x1 = v[i + half];
    v[i] = x0 * c - x1 * s;
    v[i + half] = x1 * c + x0 * s;
  }
}

__global__ void silu_mul_kernel(const float* g, const float* u, float* y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const float a = g[i];
    y[i] = a / (1.f + expf(-a)) * u[i];
  }
}

__global__ void add_kernel(const float* x, float* y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] += x[i];
}

__global__ void gather_kernel(const __half* table, const int32_t* ids, int d, float* out) {
  const __half* row = table + (size_t)ids[blockIdx.x] * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) out[(size_t)blockIdx.x * d + i] = __half2float(row[i]);
}

__global__ void to_half_kernel(const float* x, __half* y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = __float2half_rn(x[i]);
}

int grid_for(size_t n) { return (int)std::min<size_t>((n + 255) / 256, 4096); }

}  // namespace

Status rms_norm_cuda(const float* x, const float* w, float eps, float* y, int rows, int n, void* stream) {
  if (x == nullptr || w == nullptr || y == nullptr) return invalid_argument("cuda rms_norm: null pointer");
  if (rows <= 0 || n <= 0)
    return invalid_argument("cuda rms_norm: rows and n must be > 0, found " + std::to_string(rows) + ", " +
                            std::to_string(n));
  rms_norm_rows<<<rows, 256, 0, static_cast<cudaStream_t>(stream)>>>(x, w, eps, y, n);
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

Status rope_cuda(float* x, int tokens, int heads, int d_h, const int32_t* positions, const float* inv_freq,
                 CudaAllocator* workspace, void* stream) {
  if (x == nullptr || positions == nullptr || inv_freq == nullptr || workspace == nullptr)
    return invalid_argument("cuda rope: null pointer");
  if (tokens <= 0 || heads <= 0 || d_h <= 0 || d_h % 2 != 0)
    return invalid_argument("cuda rope: tokens, heads > 0 and d_h even > 0 required, found " + std::to_string(tokens) +
                            ", " + std::to_string(heads) + ", " + std::to_string(d_h));
  const int half = d_h / 2;
  std::vector<float> cs((size_t)tokens * 2 * half);
  for (int t = 0; t < tokens; ++t) {
    if (positions[t] < 0)
      return invalid_argument("cuda rope: positions[" + std::to_string(t) + "] must be ≥ 0, found " +
                              std::to_string(positions[t]));
    for (int i = 0; i < half; ++i) {
      const float angle = (float)positions[t] * inv_freq[i];
      cs[(size_t)t * half + i] = (float)std::cos((double)angle);
      cs[(size_t)tokens * half + (size_t)t * half + i] = (float)std::sin((double)angle);
    }
  }
  PALU_ASSIGN_OR_RETURN(CudaBuffer buf, CudaBuffer::make(workspace, cs.size() * sizeof(float)));
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  PALU_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buf.data(), cs.data(), cs.size() * 4, cudaMemcpyHostToDevice, st));
  rope_apply<<<tokens, 256, 0, st>>>(x, heads, d_h, buf.as<float>(), buf.as<float>() + (size_t)tokens * half);
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  PALU_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));  // the table goes back to the allocator
  return Status::ok();
}

Status silu_mul_cuda(const float* gate, const float* up, float* y, size_t n, void* stream) {
  if (gate == nullptr || up == nullptr || y == nullptr) return invalid_argument("cuda silu_mul: null pointer");
  if (n == 0) return Status::ok();
  silu_mul_kernel<<<grid_for(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(gate, up, y, n);
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

Status add_cuda(const float* x, float* y, size_t n, void* stream) {
  if (x == nullptr || y == nullptr) return invalid_argument("cuda add: null pointer");
  if (n == 0) return Status::ok();
  add_kernel<<<grid_for(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(x, y, n);
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

Status embedding_gather_cuda(const uint16_t* table, int vocab, int d, const int32_t* ids, int n, float* out,
                             CudaAllocator* workspace, void* stream) {
  if (table == nullptr || ids == nullptr || out == nullptr || workspace == nullptr)
    return invalid_argument("cuda embedding: null pointer");
  if (vocab <= 0 || d <= 0 || n <= 0)
    return invalid_argument("cuda embedding: vocab, d and n must be > 0, found " + std::to_string(vocab) + ", " +
                            std::to_string(d) + ", " + std::to_string(n));
  for (int t = 0; t < n; ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      return invalid_argument("cuda embedding: ids[" + std::to_string(t) + "] = " + std::to_string(ids[t]) +
                              " is outside [0, " + std::to_string(vocab) + ")");
  PALU_ASSIGN_OR_RETURN(CudaBuffer buf, CudaBuffer::make(workspace, (size_t)n * sizeof(int32_t)));
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  PALU_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buf.data(), ids, (size_t)n * 4, cudaMemcpyHostToDevice, st));
  gather_kernel<<<n, 256, 0, st>>>(reinterpret_cast<const __half*>(table), buf.as<int32_t>(), d, out);
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  PALU_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  return Status::ok();
}

Result<CublasHandle> CublasHandle::make(int device) {
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cublasHandle_t h = nullptr;
  PALU_RETURN_IF_ERROR(blas_status(cublasCreate(&h), "cublasCreate"));
  CublasHandle out;
  out.h_ = h;
  return Result<CublasHandle>(std::move(out));
}

CublasHandle::~CublasHandle() {
  if (h_ != nullptr) cublasDestroy(static_cast<cublasHandle_t>(h_));
}

CublasHandle::CublasHandle(CublasHandle&& o) noexcept : h_(o.h_) { o.h_ = nullptr; }

CublasHandle& CublasHandle::operator=(CublasHandle&& o) noexcept {
  if (this != &o) {
    if (h_ != nullptr) cublasDestroy(static_cast<cublasHandle_t>(h_));
    h_ = o.h_;
    o.h_ = nullptr;
  }
  return *this;
}

Status gemm_f16w_cuda(const CublasHandle& blas, const float* x, const uint16_t* w, float* y, int m, int n, int k,
                      float beta, CudaAllocator* workspace, void* stream) {
  if (blas.handle() == nullptr || x == nullptr || w == nullptr || y == nullptr || workspace == nullptr)
    return invalid_argument("cuda gemm: null handle or pointer");
  if (m <= 0 || n <= 0 || k <= 0)
    return invalid_argument("cuda gemm: m, n, k must be > 0, found " + std::to_string(m) + ", " + std::to_string(n) +
                            ", " + std::to_string(k));
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  PALU_ASSIGN_OR_RETURN(CudaBuffer xh, CudaBuffer::make(workspace, (size_t)m * k * 2));
  to_half_kernel<<<grid_for((size_t)m * k), 256, 0, st>>>(x, xh.as<__half>(), (size_t)m * k);
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  cublasHandle_t h = static_cast<cublasHandle_t>(blas.handle());
  PALU_RETURN_IF_ERROR(blas_status(cublasSetStream(h, st), "cublasSetStream"));
  const float one = 1.f;
  // Row-major y[m,n] = x[m,k]·W[n,k]ᵀ is column-major yᵀ[n,m] = W[n,k] (as Wᵀ col-major [k,n], op T) · xᵀ.
  PALU_RETURN_IF_ERROR(blas_status(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w, CUDA_R_16F, k,
                                                xh.data(), CUDA_R_16F, k, &beta, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT),
                                   "cublasGemmEx"));
  PALU_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));  // the f16 copy of x goes back to the allocator
  return Status::ok();
}

}  // namespace palu::backends::cuda
