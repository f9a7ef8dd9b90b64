// palu-cuda-attention-bench: decode attention on the GPU at the Llama-2-7B shape (batch 1,
// 32 heads × 128, group size 4 → 8 groups), our full-cache f16 kernel and the fused latent
// kernel (f16 256/256, 4-bit 256/256, 4-bit 128/384), timed with CUDA events, one decode per
// event pair, L2 flushed (a 256 MiB memset, not timed) before each, median of --iters.
// Also measured in the same run: device-to-device copy bandwidth (2·bytes/time of a 1 GiB
// cudaMemcpy) and the f16 tensor rate (cuBLAS GemmEx 8192³, f16 inputs, f32 compute). Each row
// gets bytes moved, FLOPs and its bound = max(bytes / copy bandwidth, FLOPs / tensor rate).
// Prints CSV on stdout: a `# ` header with the device and the two measured peaks, then rows
//   kernel,T,time_us,bytes,flops,bound_us,gbps,tflops
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backends/cuda/attention_cuda.h"
#include "backends/cuda/cuda_allocator.h"
#include "backends/cuda/latent_attention_sm90.h"  // plan_latent_sm90: whether a row runs the ring (no RoPE table)

using namespace palu;
using namespace palu::backends;
using namespace palu::backends::cuda;

#define CK(x)                                                                          \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

namespace {

__global__ void fill_kernel(uint16_t* p, size_t n, uint32_t seed, bool as_f16) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t x = (uint32_t)i * 2654435761u ^ seed * 2246822519u;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    x *= 3266489917u;
    x ^= x >> 16;
    p[i] = as_f16 ? __half_as_ushort(__float2half(((float)(x & 0xffff) / 65536.f - 0.5f) * 2.f)) : (uint16_t)x;
  }
}

// Device-side pseudo-random fill (f16 values in [-1, 1), or random bits for packed codes).
void fill_random(void* dev, size_t bytes, uint32_t seed, bool as_f16) {
  fill_kernel<<<1024, 256>>>(static_cast<uint16_t*>(dev), bytes / 2, seed, as_f16);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
}

void* dmalloc(size_t bytes) {
  void* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(bytes, 256)));
  return p;
}

template <typename F>
double time_median_us(F&& body, int iters, void* flush, size_t flush_bytes, cudaStream_t s) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < iters + 2; ++i) {
    CK(cudaMemsetAsync(flush, i & 0xff, flush_bytes, s));
    CK(cudaEventRecord(a, s));
    body();
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    if (i >= 2) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1000.0 * t[t.size() / 2];
}

struct LatentConfig {
  const char* name;
  RowStorage st;
  int rk, rv;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> Ts = {4096, 16384, 65536, 131072};
  int iters = 20;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
    else if (a == "--T" && i + 1 < argc) {
      Ts.clear();
      std::stringstream ss(argv[++i]);
      std::string x;
      while (std::getline(ss, x, ',')) Ts.push_back(std::atoi(x.c_str()));
    } else {
      std::fprintf(stderr, "usage: palu-cuda-attention-bench [--T 4096,16384,65536,131072] [--iters 20]\n");
      return 2;
    }
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::fprintf(stderr, "palu-cuda-attention-bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const size_t flush_bytes = size_t{256} << 20;
  void* flush = dmalloc(flush_bytes);

  // ---- peaks measured in this run
  const size_t cbytes = size_t{1} << 30;
  void* c0 = dmalloc(cbytes);
  void* c1 = dmalloc(cbytes);
  CK(cudaMemset(c0, 1, cbytes));
  const double copy_us = time_median_us([&] { CK(cudaMemcpyAsync(c1, c0, cbytes, cudaMemcpyDeviceToDevice, s)); }, 10,
                                        flush, flush_bytes, s);
  const double copy_bw = 2.0 * (double)cbytes / (copy_us * 1e-6);  // read + write, B/s
  CK(cudaFree(c0));
  CK(cudaFree(c1));
  const int M = 8192;
  void* ga = dmalloc((size_t)M * M * 2);
  void* gb = dmalloc((size_t)M * M * 2);
  void* gc = dmalloc((size_t)M * M * 4);
  fill_random(ga, (size_t)M * M * 2, 1, true);
  fill_random(gb, (size_t)M * M * 2, 2, true);
  cublasHandle_t blas;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cublasCreate failed\n");
    return 1;
  }
  cublasSetStream(blas, s);
  const float one = 1.f, zero = 0.f;
  auto gemm = [&] {
    cublasStatus_t st = cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, M, M, M, &one, ga, CUDA_R_16F, M, gb, CUDA_R_16F,
                                     M, &zero, gc, CUDA_R_32F, M, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "cublasGemmEx failed: %d\n", (int)st);
      std::exit(1);
    }
  };
  const double gemm_us = time_median_us(gemm, 10, flush, flush_bytes, s);
  const double tensor_rate = 2.0 * M * (double)M * M / (gemm_us * 1e-6);  // FLOP/s
  cublasDestroy(blas);
  CK(cudaFree(ga));
  CK(cudaFree(gb));
  CK(cudaFree(gc));
  std::printf("# device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::printf("# copy_bandwidth_GBps: %.1f\n", copy_bw / 1e9);
  std::printf("# f16_tensor_TFLOPs: %.1f\n", tensor_rate / 1e12);
  std::printf("kernel,T,time_us,bytes,flops,bound_us,gbps,tflops\n");

  const int H = 32, Hkv = 32, d = 128, s_grp = 4, G = Hkv / s_grp;
  CudaAllocator alloc(0);
  void* scratch = dmalloc(size_t{256} << 20);
  CudaDecodeOptions opt;
  opt.scratch = scratch;
  opt.scratch_bytes = size_t{256} << 20;
  if (const char* e = std::getenv("PALU_BENCH_HEADS_PER_BLOCK")) opt.heads_per_block = std::atoi(e);
  // PALU_BENCH_SM80=1: the sm_80 latent kernel even on an H100 (before/after comparisons)
  if (const char* e = std::getenv("PALU_BENCH_SM80")) opt.force_sm80 = std::atoi(e) != 0;
  // PALU_BENCH_SM90_SERIAL=1: the sm_90a kernel without the wgmma / p·z^V overlap
  if (const char* e = std::getenv("PALU_BENCH_SM90_SERIAL")) opt.sm90_pipeline = std::atoi(e) == 0;
  // (PALU_CUDA_SM90_WS=0 / 1, read by the library: the f16 rows' ring without the TMA producer warp
  // / without the ping-pong)
  float* q = static_cast<float*>(dmalloc(H * d * 4));
  float* out = static_cast<float*>(dmalloc(H * 512 * 4));
  std::vector<float> hq(H * d), hinv(d / 2);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& x : hq) x = nd(rng);
  for (int i = 0; i < d / 2; ++i) hinv[i] = (float)std::pow(10000.0, -2.0 * i / d);
  float* inv = static_cast<float*>(dmalloc(d / 2 * 4));
  CK(cudaMemcpy(q, hq.data(), hq.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(inv, hinv.data(), hinv.size() * 4, cudaMemcpyHostToDevice));

  auto row = [&](const char* name, int T, double us, double bytes, double flops) {
    const double bound = std::max(bytes / copy_bw, flops / tensor_rate) * 1e6;
    std::printf("%s,%d,%.2f,%.0f,%.0f,%.2f,%.1f,%.1f\n", name, T, us, bytes, flops, bound, bytes / (us * 1e-6) / 1e9,
                flops / (us * 1e-6) / 1e12);
    std::fflush(stdout);
  };

  const LatentConfig configs[] = {{"latent f16 256/256", RowStorage::kF16, 256, 256},
                                  {"latent q4 256/256", RowStorage::kQ4, 256, 256},
                                  {"latent q4 128/384", RowStorage::kQ4, 128, 384}};
  for (int T : Ts) {
    {  // full cache
      const size_t kv = (size_t)T * Hkv * d * 2;
      void* k = dmalloc(kv);
      void* v = dmalloc(kv);
      fill_random(k, kv, 3, true);
      fill_random(v, kv, 4, true);
      const CudaAttentionShape sh{H, Hkv, d, 0};
      Status st = full_attention_decode_cuda(sh, (const uint16_t*)k, (const uint16_t*)v, T, q, out, &alloc, s, opt);
      if (!st.is_ok()) {
        std::fprintf(stderr, "full: %s\n", st.to_string().c_str());
        return 1;
      }
      const double us = time_median_us(
          [&] { (void)full_attention_decode_cuda(sh, (const uint16_t*)k, (const uint16_t*)v, T, q, out, &alloc, s, opt); },
          iters, flush, flush_bytes, s);
      row("full f16 (ours)", T, us, 2.0 * kv + H * d * 8.0, 4.0 * H * (double)T * d);
      CK(cudaFree(k));
      CK(cudaFree(v));
    }
    for (const LatentConfig& c : configs) {
      const bool packed = row_storage_bits(c.st) != 0;
      const size_t rbk = row_storage_bytes(c.st, c.rk), rbv = row_storage_bytes(c.st, c.rv);
      std::vector<void*> bufs;
      std::vector<CudaLatentGroup> groups(G);
      // q and out, the per-call folded q·B^K matrices (written once, read once: 2·H·d·r_k f16) and,
      // where the kernel reads it (all but the sm_90a ring schedule, which computes cos/sin in
      // registers), the per-call RoPE cos/sin table (written once, read at least once: 2·T·(d/2)·8 B)
      const bool sm90 = !opt.force_sm80 && plan_latent_launch({H, Hkv, d, s_grp}, [&] {
                                              CudaLatentGroup g;
                                              g.k.storage = g.v.storage = c.st;
                                              g.k.rank = c.rk;
                                              g.v.rank = c.rv;
                                              return g;
                                            }()).sm90;
      // (the ring schedules, and the decoding producer's unless PALU_CUDA_SM90_WS=0)
      const detail::Sm90Plan s9 = detail::plan_latent_sm90(s_grp * (H / Hkv), c.rk, c.rv, (int)c.st, (int)c.st,
                                                           (int)rbk, (int)rbv, (int)prop.sharedMemPerBlockOptin);
      const char* ws_env = std::getenv("PALU_CUDA_SM90_WS");
      const bool ring = sm90 && opt.sm90_pipeline && (s9.ring || (s9.dec_ring && (ws_env == nullptr || std::atoi(ws_env) >= 1)));
      double bytes = H * d * 4.0 + H * c.rv * 4.0 + 2.0 * H * d * c.rk * 2 + (ring ? 0.0 : 2.0 * T * (d / 2) * 8);
      for (int g = 0; g < G; ++g) {
        CudaLatentGroup& gr = groups[g];
        gr.k.storage = gr.v.storage = c.st;
        gr.k.rank = c.rk;
        gr.v.rank = c.rv;
        void* zk = dmalloc(rbk * T);
        void* zv = dmalloc(rbv * T);
        fill_random(zk, rbk * T, 10 + g, c.st == RowStorage::kF16);
        fill_random(zv, rbv * T, 20 + g, c.st == RowStorage::kF16);
        gr.k.rows = zk;
        gr.v.rows = zv;
        bufs.push_back(zk);
        bufs.push_back(zv);
        bytes += (double)(rbk + rbv) * T;
        if (packed) {
          std::vector<float> sc(T, 0.01f), zr(T, -0.1f);
          for (int w = 0; w < 4; ++w) {
            void* p = dmalloc((size_t)T * 4);
            CK(cudaMemcpy(p, (w % 2 == 0 ? sc : zr).data(), (size_t)T * 4, cudaMemcpyHostToDevice));
            bufs.push_back(p);
          }
          gr.k.scale = (const float*)bufs[bufs.size() - 4];
          gr.k.zero = (const float*)bufs[bufs.size() - 3];
          gr.v.scale = (const float*)bufs[bufs.size() - 2];
          gr.v.zero = (const float*)bufs[bufs.size() - 1];
          bytes += 16.0 * T;
        }
        void* bk = dmalloc((size_t)s_grp * d * c.rk * 2);
        fill_random(bk, (size_t)s_grp * d * c.rk * 2, 30 + g, true);
        gr.b_k = (const uint16_t*)bk;
        bufs.push_back(bk);
        bytes += (double)s_grp * d * c.rk * 2;
      }
      const CudaAttentionShape sh{H, Hkv, d, s_grp};
      Status st = latent_attention_decode_cuda(sh, groups.data(), T, T, q, inv, out, &alloc, s, opt);
      if (!st.is_ok()) {
        std::fprintf(stderr, "%s: %s\n", c.name, st.to_string().c_str());
        return 1;
      }
      const double us = time_median_us(
          [&] { (void)latent_attention_decode_cuda(sh, groups.data(), T, T, q, inv, out, &alloc, s, opt); }, iters,
          flush, flush_bytes, s);
      const double flops = (double)G * T * 2.0 * c.rk * s_grp * d + (double)H * T * 2.0 * d + (double)H * T * 2.0 * c.rv;
      row(c.name, T, us, bytes, flops);
      for (void* p : bufs) CK(cudaFree(p));
    }
  }
  for (const LatentConfig& c : configs) {
    const LatentLaunchPlan p = plan_latent_launch({H, Hkv, d, s_grp}, [&] {
      CudaLatentGroup g;
      g.k.storage = g.v.storage = c.st;
      g.k.rank = c.rk;
      g.v.rank = c.rv;
      return g;
    }());
    std::printf("# latent launch (%s): %s kernel, %d query heads per block, %d threads, %zu B shared memory\n",
                c.name + 7, p.sm90 && !opt.force_sm80 ? "sm_90a (wgmma)" : "sm_80 (mma.sync)", p.heads_per_block,
                p.threads, p.smem_bytes);
  }
  return 0;
}
