// The Hopper (sm_90a) path of the fused latent decode kernel (not a public header; see
// attention_cuda.h for the math and the contract, latent_attention_sm90.cu for the design).
// latent_attention.cu plans and launches it on devices of compute capability 9.0 for the
// configurations plan_latent_sm90 accepts, and runs the sm_80 kernel otherwise. The kernel is
// compiled for sm_90a only (its own object library, backends/cuda/CMakeLists.txt).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backends/base/status.h"

namespace palu::backends::cuda::detail {

constexpr int kSm90MaxBatch = 16;  // groups per launch
constexpr int kSm90Tile = 64;      // tokens per tile (the wgmma M dimension)
constexpr int kSm90Threads = 256;  // two warpgroups, one query head each
constexpr int kSm90MaxSegBlocks = 256;  // the pair schedule's segmented grid: blocks per head pair

struct Sm90Group {
  const uint8_t* zk;  // [T, row_bytes_k] key latents
  const uint8_t* zv;  // [T, row_bytes_v] value latents
  const float* sk;    // [T] key scale / zero (packed storage), else nullptr
  const float* zrk;
  const float* sv;  // [T] value scale / zero (packed storage), else nullptr
  const float* zrv;
  int first_head;      // global index of the group's first query head
  int out_off;         // float offset of the group's first head in the output
  const __half* bk;    // [kv heads of the group, 128, rk] the key up-projection B^K (f16)
  const float* kbias;  // [kv heads of the group, 128] key bias, nullptr = none
};

struct Sm90Params {
  Sm90Group g[kSm90MaxBatch];
  int T;
  int rk, rv;
  int stor_k, stor_v;  // RowStorage values
  int row_bytes_k, row_bytes_v;
  int chunks;           // query heads per group / 2 (blockIdx.y = group · chunks + chunk)
  int splits;           // partial splits per head: gridDim.x (one per block; the pair schedule: see pair)
  int k_stages, v_stages;
  int pipeline;  // 1: the wgmma of tile i+1 is issued before p·z^V of tile i (k_stages, v_stages ≥ 2),
                 // else the ring where planned; 0: the serial schedule with k_stages / v_stages
  int ring;      // 1: the plan's ring of 3 tile buffers fits (used when pipeline = 1 and v_stages < 2)
  int ws;        // 1: where the ring runs on f16 keys and values, a 9th (producer) warp fills it with TMA
                 // boxes into mbarrier-guarded buffers instead (kSm90Threads + 32 threads)
  int pingpong;  // 1 (with ws): the two warpgroups take turns issuing their key wgmma chain
  int dec_ring;  // 1 (with ws, q4 keys and values): a producer warpgroup decodes the codes into the f16
                 // ring the f16 schedule reads (kSm90Threads + 128 threads; plan: Sm90Plan::dec_ring)
  int dec_wgs;     // (with dec_ring) producer warpgroups: 1 (kSm90Threads + 128 threads) or 2 (+ 256)
  int dec_ablate;  // (measurements) the decoding producer skips 1: its stores, 2: its global loads
  int wg_combine;  // 1: (pair) the block's two warpgroups combine their partials into one split per block
  int fold_all;    // 1: (pair) every thread, the producer warpgroup's too, folds M in the prologue
  int wait_sleep;  // 1: the consumers' full-barrier waits carry a suspend-time hint (sleep, not spin)
  int share_pv;    // 1 (the producer schedules): one p·z^V chain per tile for both heads, see the kernel
  int pair;        // 1 (f16, ring, ws; value rank ≤ 256): the pair schedule, splits = gridDim.x or, with
                   // segments, the most blocks a group's tiles fall in (twice that without wg_combine; see the
                   // kernel; kSm90Threads + 128 threads)
  int seg_groups;  // (pair) > 0: grid (chunks, blocks), the groups' tiles flattened (group g's tile t at
                   // g · tiles + t) and block (chunk, y) taking [seg_lo[y], seg_lo[y + 1]) of them, a range
                   // spanning groups where it falls so (see the kernel; splits: see pair). 0: grid (splits,
                   // groups · chunks)
  int pair_reg;    // (the q4 pair schedule) its register-operand form: 1 where it applies, 0 never, −1 the
                   // environment's setting (sm90_pair_reg_enabled)
  int reg_bufs;    // (the q4 pair schedule with register operands, kPairReg) ring buffers of raw code tiles
  int seg_lo[kSm90MaxSegBlocks + 1];
  int seg_first[kSm90MaxBatch];  // the block holding group g's first tile
  float inv_sqrt_d;
  // Each block folds its two heads' q into B^K itself (M_h = [a; b], the same f16 values as the
  // sm_80 path's fold_q_kernel) and the key bias into α, β.
  const float* q;  // [H, 128] queries (f32)
  int n_rep;       // query heads per kv head
  int any_bias;    // 1: some group has a key bias (the scores add Σ cos·α + sin·β)
  const float4* trig;     // [T, 64] (cos, sin) pairs as float2, read two at a time (not the ring)
  const float* inv_freq;  // [64] RoPE inverse frequencies (the ring computes cos/sin itself)
  float* pm;              // [H, splits]
  float* pl;              // [H, splits]
  float* pacc;            // [(out offset) · splits + split · rv + c]
};

struct Sm90Plan {
  bool ok = false;
  int k_stages = 0, v_stages = 0;
  bool ring = false;  // v_stages < 2 and a ring of 3 tile buffers also fits (the default schedule then)
  bool dec_ring = false;  // q4 keys and values (value rank % 32 == 0, ≤ 384) and a ring of 3 f16 tile buffers
                          // fits: the decoding producer warpgroup's schedule (the default then)
  size_t smem = 0;    // enough for both the stages and the ring
};

// Whether this configuration runs on the sm_90a kernel, with which stage counts and shared
// memory (bytes): two query heads per block (hq even), rk a multiple of 64 and ≤ 256, rv ≤ 512,
// and the tiles fitting in max_smem with ≥ 2 key stages.
Sm90Plan plan_latent_sm90(int hq, int rk, int rv, int stor_k, int stor_v, int row_bytes_k, int row_bytes_v,
                          int max_smem);

// Queues the kernel: grid (splits / 4, groups · chunks), kSm90Threads threads (+ 32: the TMA
// producer warp where `ws` applies to f16 keys and values; + 128: the decoding producer warpgroup
// where `ws` and `dec_ring` apply), `smem` bytes.
Status launch_latent_sm90(const Sm90Params& p, dim3 grid, size_t smem, cudaStream_t stream);

// Whether the driver's cuTensorMapEncodeTiled entry point is there (the TMA producers).
bool sm90_tma_available();

// Whether the pair schedule on q4 keys and values (its decoding producer) takes these ranks.
bool sm90_pair_dec_shape(int rk, int rv);

// Whether the q4 pair schedule's register-operand form (the consumers decode the codes into the
// wgmma A fragments; a TMA producer) takes these ranks.
bool sm90_pair_reg_shape(int rk, int rv);

// Whether that form runs where it applies: `force` 1 / 0, or (−1) PALU_CUDA_SM90_PAIR_REG (default
// 1) and the driver's tensor-map entry point.
bool sm90_pair_reg_enabled(int force);

}  // namespace palu::backends::cuda::detail
