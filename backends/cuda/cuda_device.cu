#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "backends/cuda/cuda_device.h"

namespace palu::backends::cuda {
namespace {

class CudaDevice final : public Device {
 public:
  CudaDevice(int index, const cudaDeviceProp& prop) {
    info_.kind = DeviceKind::kCuda;
    info_.index = index;
    info_.name = prop.name;
    info_.memory_bytes = prop.totalGlobalMem;
  }
  const DeviceInfo& info() const override { return info_; }
  // forward_ops.h and attention_cuda.h; softmax and prefill attention are not implemented yet.
  bool supports(OpKind op) const override {
    switch (op) {
      case OpKind::kMatMul:
      case OpKind::kRmsNorm:
      case OpKind::kRope:
      case OpKind::kSiluMul:
      case OpKind::kAttentionDecode:
      case OpKind::kLatentAttentionDecode: return true;
      default: return false;
    }
  }

 private:
  DeviceInfo info_;
};

__global__ void rms_norm_kernel(const float* x, const float* w, float eps, float* y, int n) {
  const int row = blockIdx.x;
  const float* xr = x + (size_t)row * n;
  float* yr = y + (size_t)row * n;
  __shared__ float partial[256];
  float s = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const float inv = rsqrtf(partial[0] / (float)n + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::ok();
  (void)cudaGetLastError();  // reset the last-error slot (see cuda_status.h)
  return internal_error(std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

void append_cuda_devices(std::vector<std::unique_ptr<Device>>* devices, std::vector<std::string>* log) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    log->push_back(std::string("cuda: no device (") +
                   (e != cudaSuccess ? cudaGetErrorString(e) : "0 GPUs visible") + ")");
    return;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    devices->push_back(std::make_unique<CudaDevice>(i, prop));
    log->push_back("cuda: device " + std::to_string(i) + ": " + prop.name);
  }
}

Status rms_norm_on_gpu(int device, const float* x, const float* w, float eps, float* y, int rows, int n) {
  if (rows <= 0 || n <= 0) return invalid_argument("rms_norm_on_gpu: rows and n must be positive");
  PALU_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device), "cudaSetDevice"));
  float *dx = nullptr, *dw = nullptr, *dy = nullptr;
  const size_t bytes = (size_t)rows * n * sizeof(float);
  Status st = cuda_status(cudaMalloc(&dx, bytes), "cudaMalloc");
  if (st.is_ok()) st = cuda_status(cudaMalloc(&dw, n * sizeof(float)), "cudaMalloc");
  if (st.is_ok()) st = cuda_status(cudaMalloc(&dy, bytes), "cudaMalloc");
  if (st.is_ok()) st = cuda_status(cudaMemcpy(dx, x, bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
  if (st.is_ok()) st = cuda_status(cudaMemcpy(dw, w, n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  if (st.is_ok()) {
    rms_norm_kernel<<<rows, 256>>>(dx, dw, eps, dy, n);
    st = cuda_status(cudaGetLastError(), "rms_norm_kernel launch");
  }
  if (st.is_ok()) st = cuda_status(cudaMemcpy(y, dy, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  return st;
}

}  // namespace palu::backends::cuda
