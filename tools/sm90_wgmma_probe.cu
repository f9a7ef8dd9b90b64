// A probe of wgmma throughput on sm_90a (measurements for docs/perf/cuda.md, round 10; not part of
// the build): one block per SM, operands of zeros in shared memory, SM cycles by clock64.
//   nvcc -O3 -gencode arch=compute_90a,code=sm_90a -o sm90_wgmma_probe tools/sm90_wgmma_probe.cu
//   ./sm90_wgmma_probe
// Prints: the p·z^V shape (16 m64n8k16, A transposed or K-major; one or two warpgroups), a chain
// of 16 m64n128k16 while another warpgroup runs FFMA / MUFU / shared loads / shuffles, and chains
// of m64n128k16 and m64n256k16 (K = 256 or 128) from one or two warpgroups with their TFLOP/s.
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
__device__ __forceinline__ uint32_t su32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ uint64_t desc(uint32_t s) {
  uint64_t d = 0; d |= (uint64_t)((s & 0x3FFFF) >> 4); d |= (uint64_t)1 << 16; d |= (uint64_t)(1024 >> 4) << 32; d |= (uint64_t)1 << 62; return d; }
__device__ __forceinline__ uint64_t adv(uint64_t d, uint32_t b) { return d + (b >> 4); }

__device__ __forceinline__ void mma_n128(float (&d)[64], uint64_t a, uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) : "l"(a), "l"(b), "n"(1));
}
__device__ __forceinline__ void mma_n256(float (&d)[128], uint64_t a, uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127]) : "l"(a), "l"(b), "n"(1));
}
__device__ __forceinline__ void mma_n8(float (&d)[4], uint64_t a, uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, %4, %5, p, 1, 1, 0, 0;\n}\n"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "l"(a), "l"(b), "n"(1));
}
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

__device__ __forceinline__ uint64_t desc_mn(uint32_t s, uint32_t lbo) {
  uint64_t d = 0; d |= (uint64_t)((s & 0x3FFFF) >> 4); d |= (uint64_t)((lbo >> 4) & 0x3FFF) << 16; d |= (uint64_t)(1024 >> 4) << 32; d |= (uint64_t)1 << 62; return d; }
__device__ __forceinline__ void mma_n8t(float (&d)[4], uint64_t a, uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, %4, %5, p, 1, 1, 1, 0;\n}\n"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "l"(a), "l"(b), "n"(1));
}
__device__ __forceinline__ void mma_n8k(float (&d)[4], uint64_t a, uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
    "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, %4, %5, p, 1, 1, 0, 0;\n}\n"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "l"(a), "l"(b), "n"(1));
}
// mode 0: pv as in the kernel (4 m-tiles x 4 k-steps, A transposed), mode 1: A K-major
template <int MODE>
__global__ void __launch_bounds__(256, 1) kpv(int reps, int nwg, float* out, long long* cyc) {
  extern __shared__ __align__(1024) uint8_t smr[];
  uint8_t* sm = smr + ((1024u - (su32(smr) & 1023u)) & 1023u);
  const int wg = threadIdx.x >> 7;
  for (int i = threadIdx.x; i < 40 * 1024 / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(sm)[i] = 0u;
  __syncthreads();
  if (wg >= nwg) return;
  const uint32_t a0 = su32(sm), b0 = su32(sm + 32768);
  float o[4][4] = {};
  long long t0 = clock64();
  for (int r = 0; r < reps; ++r) {
    fence();
    const uint64_t dv = MODE == 0 ? desc_mn(a0, 64 * 128) : desc(a0), dp = desc(b0);
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        if (MODE == 0) mma_n8t(o[mt], adv(dv, mt * 64 * 128 + ks * 2048), adv(dp, ks * 32));
        else mma_n8k(o[mt], adv(dv, mt * 64 * 128 + ks * 32), adv(dp, ks * 32));
      }
    commit();
    wait0();
  }
  long long t1 = clock64();
  float s = 0; for (int i = 0; i < 4; ++i) for (int e = 0; e < 4; ++e) s += o[i][e];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x % 128 == 0) cyc[blockIdx.x * 2 + wg] = t1 - t0;
}
template <int MODE>
void runpv(int nwg, int reps) {
  auto kern = kpv<MODE>;
  const int smem = 42 * 1024;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  float* out; long long* cyc; cudaMalloc(&out, 132 * 256 * 4); cudaMalloc(&cyc, 132 * 2 * 8);
  kern<<<132, 256, smem>>>(reps, nwg, out, cyc);
  cudaDeviceSynchronize();
  long long c[264]; cudaMemcpy(c, cyc, sizeof c, cudaMemcpyDeviceToHost);
  printf("pv mode %d wgs=%d: cycles per 16-wgmma chain %.1f (per wgmma %.1f) err=%s\n", MODE, nwg, (double)c[0] / reps,
         (double)c[0] / reps / 16, cudaGetErrorString(cudaGetLastError()));
}

// WG0: n128 RK=256 chains; WG1: interference of kind MODE for the same time
template <int MODE>
__global__ void __launch_bounds__(256, 1) kint(int reps, float* out, long long* cyc, float seed) {
  extern __shared__ __align__(1024) uint8_t smr[];
  uint8_t* sm = smr + ((1024u - (su32(smr) & 1023u)) & 1023u);
  const int wg = threadIdx.x >> 7;
  constexpr int RK = 256, N = 128;
  for (int i = threadIdx.x; i < (64 * RK * 2 + N * RK * 2) / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(sm)[i] = 0u;
  __shared__ volatile int stop;
  if (threadIdx.x == 0) stop = 0;
  __syncthreads();
  long long t0 = clock64();
  if (wg == 0) {
    const uint64_t da = desc(su32(sm)), db = desc(su32(sm + 64 * RK * 2));
    float d[64];
    for (int i = 0; i < 64; ++i) d[i] = 0.f;
    for (int r = 0; r < reps; ++r) {
      fence();
#pragma unroll
      for (int k0 = 0; k0 < RK; k0 += 16) {
        const uint32_t ko = k0 >> 6, kin = (k0 & 63) * 2;
        mma_n128(d, adv(da, ko * 64 * 128 + kin), adv(db, ko * N * 128 + kin));
      }
      commit();
      wait0();
    }
    long long t1 = clock64();
    if (threadIdx.x == 0) stop = 1;
    float s = 0; for (int i = 0; i < 64; ++i) s += d[i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
    if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
  } else {
    float a[8];
    for (int i = 0; i < 8; ++i) a[i] = seed + i + threadIdx.x;
    int it = 0;
    while (!stop) {
#pragma unroll
      for (int u = 0; u < 32; ++u) {
        if (MODE == 1) {
#pragma unroll
          for (int i = 0; i < 8; ++i) a[i] = fmaf(a[i], 1.0001f, 0.3f);
        } else if (MODE == 2) {
#pragma unroll
          for (int i = 0; i < 8; ++i) a[i] = __sinf(a[i]);
        } else if (MODE == 3) {
#pragma unroll
          for (int i = 0; i < 8; ++i) a[i] += reinterpret_cast<const float*>(sm)[(threadIdx.x * 4 + i * 128 + u * 32) & 16383];
        } else if (MODE == 4) {
#pragma unroll
          for (int i = 0; i < 8; ++i) a[i] += __shfl_xor_sync(0xffffffffu, a[i], 1 + (i & 3));
        }
      }
      ++it;
    }
    float s = 0; for (int i = 0; i < 8; ++i) s += a[i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s + it;
  }
}
template <int MODE>
void runint(int reps) {
  auto kern = kint<MODE>;
  const int smem = 64 * 256 * 2 + 128 * 256 * 2 + 2048;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  float* out; long long* cyc; cudaMalloc(&out, 132 * 256 * 4); cudaMalloc(&cyc, 132 * 8);
  kern<<<132, MODE == 0 ? 128 : 256, smem>>>(reps, out, cyc, 0.5f);
  cudaDeviceSynchronize();
  long long c[132]; cudaMemcpy(c, cyc, sizeof c, cudaMemcpyDeviceToHost);
  printf("interference %d (0 none, 1 FFMA, 2 MUFU, 3 LDS, 4 SHFL): cycles per n128 chain of 16: %.1f err=%s\n", MODE, (double)c[0] / reps,
         cudaGetErrorString(cudaGetLastError()));
}
template <int N, int RK>
__global__ void __launch_bounds__(256, 1) k(int reps, int nwg, float* out, long long* cyc) {
  extern __shared__ __align__(1024) uint8_t smr[];
  uint8_t* sm = smr + ((1024u - (su32(smr) & 1023u)) & 1023u);
  const int wg = threadIdx.x >> 7;
  for (int i = threadIdx.x; i < (64 * RK * 2 + N * RK * 2) / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(sm)[i] = 0u;
  __syncthreads();
  if (wg >= nwg) return;
  // A = key tile [64 x RK] at 0 (RK/64 atoms of 64 rows x 128 B), B = M [N rows x RK] after it
  const uint32_t a0 = su32(sm), b0 = su32(sm + 64 * RK * 2);
  const uint64_t da = desc(a0), db = desc(b0);
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
  long long t0 = clock64();
  for (int r = 0; r < reps; ++r) {
    fence();
#pragma unroll
    for (int k0 = 0; k0 < RK; k0 += 16) {
      const uint32_t ko = k0 >> 6, kin = (k0 & 63) * 2;
      if constexpr (N == 128) mma_n128(d, adv(da, ko * 64 * 128 + kin), adv(db, ko * N * 128 + kin));
      else mma_n256(d, adv(da, ko * 64 * 128 + kin), adv(db, ko * N * 128 + kin));
    }
    commit();
    wait0();
  }
  long long t1 = clock64();
  float s = 0; for (int i = 0; i < N / 2; ++i) s += d[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x % 128 == 0) cyc[blockIdx.x * 2 + wg] = t1 - t0;
}
template <int N, int RK>
void run(int nwg, int reps) {
  auto kern = k<N, RK>;
  const int smem = 64 * RK * 2 + N * RK * 2 + 2048;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  float* out; long long* cyc; cudaMalloc(&out, 132 * 256 * 4); cudaMalloc(&cyc, 132 * 2 * 8);
  kern<<<132, 256, smem>>>(reps, nwg, out, cyc);
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  cudaEventRecord(e0);
  kern<<<132, 256, smem>>>(reps, nwg, out, cyc);
  cudaEventRecord(e1); cudaEventSynchronize(e1);
  float ms; cudaEventElapsedTime(&ms, e0, e1);
  long long c[264]; cudaMemcpy(c, cyc, sizeof c, cudaMemcpyDeviceToHost);
  const double flops = 2.0 * 64 * N * RK * (double)reps * nwg * 132;
  printf("N=%d RK=%d wgs=%d: %.1f TFLOP/s, cycles per chain (wg0, block 0) %.1f, per wgmma %.1f  err=%s\n", N, RK, nwg,
         flops / ms / 1e9, (double)c[0] / reps, (double)c[0] / reps / (RK / 16), cudaGetErrorString(cudaGetLastError()));
}
int main() {
  runint<0>(2000); runint<1>(2000); runint<2>(2000); runint<3>(2000); runint<4>(2000);
  runpv<0>(1, 2000); runpv<1>(1, 2000); runpv<0>(2, 2000);
  for (int w = 1; w <= 2; ++w) { run<128, 256>(w, 2000); run<256, 256>(w, 1000); run<128, 128>(w, 4000); run<256, 128>(w, 2000); }
}
