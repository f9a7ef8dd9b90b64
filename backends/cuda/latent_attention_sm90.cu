// The Hopper (sm_90a) latent decode kernel: the same math as latent_attention.cu (q folded into
// B^K per call: M_h = [a; b], scores = Σ_i cos·(a_i·z) + sin·(b_i·z)), built for the H100:
//
// * One block = one group, two query heads, one split of the tokens; 2 warpgroups, warpgroup w
//   owns query head w. M for both heads (2 × 128 × r_k f16) stays in shared memory in the
//   128-byte-swizzled K-major layout that wgmma reads (atoms of 64 halves per row).
// * Tokens go in tiles of 64 (the wgmma M dimension). P = Z^K · M_hᵀ is one chain of
//   wgmma.m64n128k16 per warpgroup (A = the key tile, B = M_h, both from shared memory, f32
//   accumulators in registers), so each thread holds a_i·z and b_i·z of its rows and frequencies
//   side by side and finishes its partial score in registers; a quad shuffle completes it.
// * Softmax per warpgroup (one max per tile: each warp's max through shared memory and a named
//   barrier), p·z^V on the tensor cores: O^T[r_v × 8] += Z^V_tileᵀ · P as wgmma.m64n8k16 chains
//   (A = the value tile, transposed / M-major from the same 128-byte-swizzled layout as the key
//   tile; B = P in f16, one useful column), 4 accumulators per thread per 64 value channels.
//   f16 value tiles are read in place; other storages are decoded to f16 once per tile into one
//   swizzled buffer (q4: the exact codes, the scale multiplied into P and Σ p·zero added at the
//   end). Each block writes one split per head for the merge kernel.
// * Key and value tiles stream through cp.async stages (key tiles k_stages deep, value tiles
//   v_stages deep; f16 keys land directly in the swizzled layout, other storages are decoded to
//   f16 into one swizzled buffer).
// * With ≥ 2 key and ≥ 2 value stages (PIPE) the key wgmma chain of tile i + 1 is queued right
//   after the softmax of tile i, ahead of the p·z^V chain of tile i (value decoding runs under
//   it). Otherwise (f16 and q4 256/256: 2 key + 1 value stage) a ring of 3 tile buffers; for f16
//   keys and values (kRingWs) a 9th warp fills the ring with TMA boxes into mbarrier-guarded
//   buffers and the two warpgroups, no longer meeting at block barriers, take turns issuing
//   their key wgmma chain (FA3's ping-pong): f16 256/256 at 64K 553–570 → 388–394 µs (H100).
//   For q4 keys and values (kRingDec2) two producer warpgroups decode into the same f16 ring
//   (keys dequantized, values as exact codes with the scale folded into P, the consumers loading
//   the value scale / zero of their rows), so the q4 rows run the same consumers: at 64K q4
//   256/256 789 → 514–538 µs, q4 128/384 722 → 443–463 µs; waits sleep (try_wait's suspend-time
//   hint) instead of spinning, which the decoding warps need (and f16 256/256: ~404 → ~380 µs).
// * f16 keys and values with a value rank ≤ 256 (with the producer) run the pair schedule
//   instead (kPairWs, below): one warpgroup per tile for both heads, alternate tiles per
//   warpgroup; f16 256/256 at 64K 306–310 → 259–268 µs (with the ping-pong; since the ring race
//   was fixed, its chains may overlap: 1–2% faster).
#include "backends/cuda/latent_attention_sm90.h"

#include <cuda.h>  // CUtensorMap (encoded through the runtime's driver entry point; no libcuda link)
#include <cudaTypedefs.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <utility>
#ifdef PALU_SM90_TRACE
#include <cstdio>
#endif

#include "backends/cuda/cuda_status.h"
#include "backends/cuda/latent_common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PALU_SM90A_DEVICE 1
#endif

namespace palu::backends::cuda::detail {
namespace {

constexpr int kHD = 128;
constexpr int kHalf = 64;
constexpr int kTile = kSm90Tile;

__host__ __device__ inline size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// TMA descriptors of each group's key and value rows ([T, rank] f16, boxes of 64 tokens × 64
// channels, 128-byte swizzle: exactly one atom of the wgmma operand layout); kRingWs only.
struct Sm90Maps {
  CUtensorMap k[kSm90MaxBatch];
  CUtensorMap v[kSm90MaxBatch];
};

struct Sm90Layout {
  size_t ms, zf, vf, kst, kstage, kraw, vst, vstage, vraw, tail, total;
};

// ring: key and value tiles share one ring of 3 equal buffers (k_stages, v_stages ignored).
__host__ __device__ inline Sm90Layout sm90_layout(int rk, int rv, int stor_k, int stor_v, int rbk, int rbv, int ks,
                                                  int vs, bool ring = false) {
  Sm90Layout L{};
  const bool k_f16 = stor_k == (int)RowStorage::kF16, v_f16 = stor_v == (int)RowStorage::kF16;
  const size_t rv64 = align_up((size_t)rv, 64);  // the value tile as wgmma A: whole 64-channel atoms
  const bool k_packed = stor_k >= (int)RowStorage::kQ8, v_packed = stor_v >= (int)RowStorage::kQ8;
  size_t o = 0;
  L.ms = o;
  o += (size_t)2 * kHD * rk * 2;  // multiple of 32 KiB (rk % 64 == 0)
  L.zf = o;
  if (!k_f16) o += (size_t)kTile * rk * 2;
  L.vf = o;
  if (!v_f16) o += (size_t)kTile * rv64 * 2;
  L.kst = o;  // (also the ring's base)
  L.kraw = k_f16 ? (size_t)kTile * rk * 2 : align_up((size_t)kTile * rbk, 128);
  L.kstage = align_up(L.kraw + (k_packed ? 2 * kTile * 4 : 0), 1024);
  L.vraw = v_f16 ? (size_t)kTile * rv64 * 2 : align_up((size_t)kTile * rbv, 128);
  L.vstage = align_up(L.vraw + (v_packed ? 2 * kTile * 4 : 0), v_f16 ? 1024 : 128);
  if (ring) {
    L.kstage = L.vstage = align_up(L.kstage > L.vstage ? L.kstage : L.vstage, 1024);
    L.vst = o;
    o += 3 * L.kstage;
  } else {
    o += (size_t)ks * L.kstage;
    L.vst = o;
    o += (size_t)vs * L.vstage;
  }
  // tail, per warpgroup w at tail + 1024·w: P as the wgmma B operand (row 0 of a swizzled 8 × 64
  // f16 atom: 128 B; rows 1..7 are whatever follows, they only feed output columns 1..7, which are
  // never read), at +128 the head's key-bias terms (128 f32), at +640 (w = 0) the softmax exchange
  // and at +768 (w = 0) the 64 RoPE inverse frequencies
  L.tail = align_up(o, 1024);
  L.total = L.tail + 2048 + 1024;  // the base is aligned up to 1024 B inside the kernel
  return L;
}

// kPairReg: M of both heads, then a ring of nb buffers, each one raw q4 tile (keys or values: 64
// rows of codes as 64-byte-swizzled TMA boxes of 64 rows × 64 bytes, then the rows' 64 scales and
// 64 zeros as f32), then the pair schedule's tail.
__host__ __device__ inline Sm90Layout sm90_reg_layout(int rk, int rv, int nb) {
  Sm90Layout L{};
  L.ms = 0;
  size_t o = (size_t)2 * kHD * rk * 2;
  L.kst = L.vst = o;
  // (kraw = vraw: where a buffer's scales begin, past the larger of the two tiles' codes)
  L.kraw = L.vraw = (size_t)kTile * (rk > rv ? rk : rv) / 2;
  L.kstage = L.vstage = align_up(L.kraw + 2 * kTile * 4, 1024);
  o += (size_t)nb * L.kstage;
  L.tail = align_up(o, 1024);
  L.total = L.tail + 2048 + 1024;
  return L;
}
constexpr int kRegMaxBufs = 8;
// (kMmaV) the lazy softmax rescaling's margin: P against a running max m stays ≤ e^8 ≈ 2981
constexpr float kLazyMax = 8.f;

// Byte offset of 16-byte chunk ch of row r in a K-major operand of `rows` rows stored as
// 128-byte-swizzled atoms of 64 halves (the layout TMA's SWIZZLE_128B writes and wgmma reads).
__host__ __device__ inline uint32_t swz(int rows, int r, int ch) {
  return (uint32_t)((ch >> 3) * rows * 128 + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
}

// Byte offset of 16-byte chunk ch of row r in a tile of kTile rows of q4 codes as TMA
// SWIZZLE_64B boxes of 64 bytes (kPairReg's raw tiles: box ch / 4, chunk ch % 4 XOR (r / 2) % 4).
__host__ __device__ inline uint32_t swz64(int r, int ch) {
  return (uint32_t)((ch >> 2) * (kTile * 64) + r * 64 + (((ch & 3) ^ ((r >> 1) & 3)) << 4));
}

#ifdef PALU_SM90A_DEVICE
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t saddr) {
  uint64_t d = 0;
  d |= (uint64_t)((saddr & 0x3FFFF) >> 4);
  d |= (uint64_t)1 << 16;             // leading byte offset (unused for swizzled K-major)
  d |= (uint64_t)(1024 >> 4) << 32;   // stride byte offset: 8 rows × 128 B
  d |= (uint64_t)1 << 62;             // 128-byte swizzle
  return d;
}
// A descriptor with its address field advanced by `bytes` (a multiple of 16). Only the low word
// changes and it cannot carry: shared-window addresses are below 256 KiB, so (addr >> 4) + bytes / 16
// stays within the 14-bit field for any operand inside the block's buffer. One integer add per
// wgmma operand instead of rebuilding the descriptor from the address (mask, shift, or).
__device__ __forceinline__ uint64_t desc_adv(uint64_t d, uint32_t bytes) {
  const uint32_t lo = (uint32_t)d + (bytes >> 4), hi = (uint32_t)(d >> 32);
  return ((uint64_t)hi << 32) | lo;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Pins the accumulators in place around an asynchronous wgmma (no read or write of d is moved
// across the issue or the wait).
__device__ __forceinline__ void fence_operands(float (&d)[64]) {
#pragma unroll
  for (int k = 0; k < 64; ++k) asm volatile("" : "+f"(d[k])::"memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}
// The 128 accumulator operands of an m64n256 wgmma (f32 D): the register list %0..%127 of its
// PTX and the matching constraints.
#define PALU_WGMMA_D128_REGS \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"  \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"  \
  "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"  \
  "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
#define PALU_WGMMA_D128_OUT(d) \
  "+f"((d)[0]), "+f"((d)[1]), "+f"((d)[2]), "+f"((d)[3]), "+f"((d)[4]), "+f"((d)[5]), "+f"((d)[6]), "+f"((d)[7]), "+f"((d)[8]), "+f"((d)[9]), "+f"((d)[10]), "+f"((d)[11]), "+f"((d)[12]), "+f"((d)[13]), "+f"((d)[14]), "+f"((d)[15]), \
  "+f"((d)[16]), "+f"((d)[17]), "+f"((d)[18]), "+f"((d)[19]), "+f"((d)[20]), "+f"((d)[21]), "+f"((d)[22]), "+f"((d)[23]), "+f"((d)[24]), "+f"((d)[25]), "+f"((d)[26]), "+f"((d)[27]), "+f"((d)[28]), "+f"((d)[29]), "+f"((d)[30]), "+f"((d)[31]), \
  "+f"((d)[32]), "+f"((d)[33]), "+f"((d)[34]), "+f"((d)[35]), "+f"((d)[36]), "+f"((d)[37]), "+f"((d)[38]), "+f"((d)[39]), "+f"((d)[40]), "+f"((d)[41]), "+f"((d)[42]), "+f"((d)[43]), "+f"((d)[44]), "+f"((d)[45]), "+f"((d)[46]), "+f"((d)[47]), \
  "+f"((d)[48]), "+f"((d)[49]), "+f"((d)[50]), "+f"((d)[51]), "+f"((d)[52]), "+f"((d)[53]), "+f"((d)[54]), "+f"((d)[55]), "+f"((d)[56]), "+f"((d)[57]), "+f"((d)[58]), "+f"((d)[59]), "+f"((d)[60]), "+f"((d)[61]), "+f"((d)[62]), "+f"((d)[63]), \
  "+f"((d)[64]), "+f"((d)[65]), "+f"((d)[66]), "+f"((d)[67]), "+f"((d)[68]), "+f"((d)[69]), "+f"((d)[70]), "+f"((d)[71]), "+f"((d)[72]), "+f"((d)[73]), "+f"((d)[74]), "+f"((d)[75]), "+f"((d)[76]), "+f"((d)[77]), "+f"((d)[78]), "+f"((d)[79]), \
  "+f"((d)[80]), "+f"((d)[81]), "+f"((d)[82]), "+f"((d)[83]), "+f"((d)[84]), "+f"((d)[85]), "+f"((d)[86]), "+f"((d)[87]), "+f"((d)[88]), "+f"((d)[89]), "+f"((d)[90]), "+f"((d)[91]), "+f"((d)[92]), "+f"((d)[93]), "+f"((d)[94]), "+f"((d)[95]), \
  "+f"((d)[96]), "+f"((d)[97]), "+f"((d)[98]), "+f"((d)[99]), "+f"((d)[100]), "+f"((d)[101]), "+f"((d)[102]), "+f"((d)[103]), "+f"((d)[104]), "+f"((d)[105]), "+f"((d)[106]), "+f"((d)[107]), "+f"((d)[108]), "+f"((d)[109]), "+f"((d)[110]), "+f"((d)[111]), \
  "+f"((d)[112]), "+f"((d)[113]), "+f"((d)[114]), "+f"((d)[115]), "+f"((d)[116]), "+f"((d)[117]), "+f"((d)[118]), "+f"((d)[119]), "+f"((d)[120]), "+f"((d)[121]), "+f"((d)[122]), "+f"((d)[123]), "+f"((d)[124]), "+f"((d)[125]), "+f"((d)[126]), "+f"((d)[127])
// D[64 × 256] (+)= A[64 × 16] · B[16 × 256], both K-major from shared memory (the pair schedule)
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
      PALU_WGMMA_D128_REGS "}, "
      "%128, %129, p, 1, 1, 0, 0;\n}\n"
      : PALU_WGMMA_D128_OUT(d)
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}
__device__ __forceinline__ void fence_operands128(float (&d)[128]) {
#pragma unroll
  for (int k = 0; k < 128; ++k) asm volatile("" : "+f"(d[k])::"memory");
}
// Matrix descriptor of an MN-major (transposed) operand in 128-byte-swizzled atoms of 64 halves
// × 8 k-rows: k-row stride 128 B, 8 k-rows apart SBO = 1024 B, 64-element M blocks LBO apart.
__device__ __forceinline__ uint64_t wgmma_desc_mn(uint32_t saddr, uint32_t lbo) {
  uint64_t d = 0;
  d |= (uint64_t)((saddr & 0x3FFFF) >> 4);
  d |= (uint64_t)((lbo >> 4) & 0x3FFF) << 16;
  d |= (uint64_t)(1024 >> 4) << 32;
  d |= (uint64_t)1 << 62;
  return d;
}
// D[64 × 8] (+)= A[64 × 16] · B[16 × 8], A transposed (M-major) from shared memory, B K-major.
__device__ __forceinline__ void wgmma_m64n8k16_ta(float (&d)[4], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, %4, %5, p, 1, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "l"(desc_a), "l"(desc_b), "n"(1));
}
// The register-operand forms (kPairReg): A[64 × 16] from registers, the fragment of mma.m16n8k16
// per warp (warp w: rows 16w + lane/4 (+8), columns 2·(lane%4) (+1) (+8)), B K-major from shared memory.
__device__ __forceinline__ void wgmma_m64n8k16_ra(float (&d)[4], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(1));
}
__device__ __forceinline__ void wgmma_m64n256k16_ra(float (&d)[128], const uint32_t (&a)[4], uint64_t desc_b,
                                                    int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
      PALU_WGMMA_D128_REGS "}, "
      "{%128,%129,%130,%131}, %132, p, 1, 1, 0;\n}\n"
      : PALU_WGMMA_D128_OUT(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// ldmatrix: four 8 × 8 b16 matrices (lane l gives row l % 8 of matrix l / 8); register i holds
// matrix i's row lane/4, elements 2·(lane%4) and + 1 (.trans: rows 2·(lane%4) and + 1 of column lane/4)
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
// mma.sync m16n8k16 (f16 in, f32 accumulators): A (row) the fragment wgmma_m64n8k16_ra takes for
// one warp's 16 rows, B (col) two registers: k 2·(lane%4) + {0, 1} (+ 8) of column lane/4, D += A·B
// in the layout of the m64n8 accumulators' rows of that warp.
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void ldsm_x2_trans(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr) : "memory");
}
// codes n of the two 16-bit halves of x (bits 4n..4n+3 of each) → the half2 q·scale + zero (f16
// arithmetic, the bits of dq4x8_half2_perm). Codes 0 and 2 go under the exponent of 1024 (the
// f16 spacing 1 there), codes 1 and 3 in place under that of 64 (spacing 1/16: 64 + q): one shift
// per four pairs instead of three. The mask and the exponent bits in one lop3 (ptxas splits the
// C++ (xs & m) | e into two LOP3s, each with its immediate).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t m, uint32_t e) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(a), "r"(m), "r"(e));  // (a & b) | c
  return r;
}
__device__ __forceinline__ uint32_t dq4_pair(uint32_t x, int n, __half2 scale, __half2 zero) {
  const uint32_t xs = n >= 2 ? x >> 8 : x;
  const bool odd = (n & 1) != 0;
  const uint32_t y = and_or(xs, odd ? 0x00F000F0u : 0x000F000Fu, odd ? 0x54005400u : 0x64006400u);
  const __half2 h = __hfma2(__hsub2(*reinterpret_cast<const __half2*>(&y), __float2half2_rn(odd ? 64.f : 1024.f)),
                            scale, zero);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// 8 q4 codes (one 32-bit word, code e in bits 4e..4e+3) → 8 exact halves q (1024 + q built in
// the f16 bits, then − 1024).
__device__ __forceinline__ uint4 q4x8_half(uint32_t w) {
  const uint32_t lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;  // codes 0,2,4,6 / 1,3,5,7
  uint4 out;
  uint32_t* o = reinterpret_cast<uint32_t*>(&out);
  const __half2 k1024 = __float2half2_rn(1024.f);
  constexpr uint32_t kSel[4] = {0x4400u, 0x5511u, 0x6622u, 0x7733u};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const uint32_t x = (__byte_perm(lo, hi, kSel[e]) & 0x00FF00FFu) | 0x64006400u;
    const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&x), k1024);
    o[e] = *reinterpret_cast<const uint32_t*>(&h);
  }
  return out;
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// the arrival of two threads (a warpgroup releasing a buffer for both)
__device__ __forceinline__ void mbar_arrive2(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0], 2;\n" ::"r"(smem_u32(bar)) : "memory");
}
// waits until the phase of parity `parity` of `bar` has completed
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra DONE;\nbra WAIT;\nDONE:\n}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
// The same with a suspend-time hint (10 ms, ended early by the phase's completion): the waiting
// warps sleep instead of spinning on try_wait and taking issue slots from the warps they wait for
// (the decoding producer's 4 warps and the consumers' 8 share the 4 schedulers).
__device__ __forceinline__ void mbar_wait_sleep(uint64_t* bar, uint32_t parity, uint32_t hint_ns = 10000000u) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1, %2;\n"
      "@p bra DONE;\nbra WAIT;\nDONE:\n}\n" ::"r"(smem_u32(bar)),
      "r"(parity), "r"(hint_ns)
      : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
// one 64 × 64 f16 box (8 KiB, 128-byte swizzled) at channel c0, token t0 → dst; rows past T zeroed
__device__ __forceinline__ void tma_load_box(void* dst, const CUtensorMap* map, int c0, int t0, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(t0), "r"(smem_u32(bar))
      : "memory");
}
// `bytes` (a multiple of 16) from global `src` to shared `dst` (both 16-byte aligned) by the
// bulk-copy engine, completing on `bar`'s transaction count
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}
// The L2 prefetch of `bytes` (a multiple of 16) at `src` (16-byte aligned): the decoding producer
// asks for its tiles two tiles ahead of its own loads.
__device__ __forceinline__ void prefetch_l2(const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}
// The L2 prefetch of a packed tile: its `bytes` of codes and its rows' scales and zeros (when
// 16-byte aligned; whole 16-byte chunks of them), for the decoding producers.
__device__ __forceinline__ void prefetch_tile_l2(const uint8_t* rows, uint32_t bytes, const float* sc, const float* zr,
                                                 int nvalid) {
  prefetch_l2(rows, bytes);
  const uint32_t sb = (uint32_t)(nvalid * 4) & ~15u;
  if (sb != 0 && (reinterpret_cast<uintptr_t>(sc) & 15) == 0 && (reinterpret_cast<uintptr_t>(zr) & 15) == 0) {
    prefetch_l2(sc, sb);
    prefetch_l2(zr, sb);
  }
}
__device__ __forceinline__ uint4 ldg_nc16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
// 8 q4 codes (one 32-bit word, code e in bits 4e..4e+3) → 8 halves fl(fl(q·scale) + zero), the
// bits decode8_half gives (the code made exact in f32 as 2^23 + q − 2^23; no FMA, as the CPU).
// (lo / hi: codes 2e / 2e + 1 in byte e; one PRMT puts a code under the exponent of 2^23)
__device__ __forceinline__ uint32_t dq4x8_word(uint32_t lo, uint32_t hi, int e, float scale, float zero) {
  const float a = __uint_as_float(__byte_perm(lo, 0x4B000000u, 0x7650u | e)) - 8388608.f;
  const float b = __uint_as_float(__byte_perm(hi, 0x4B000000u, 0x7650u | e)) - 8388608.f;
  const __half2 h = __floats2half2_rn(__fadd_rn(__fmul_rn(a, scale), zero), __fadd_rn(__fmul_rn(b, scale), zero));
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint4 dq4x8_half(uint32_t w, float scale, float zero) {
  const uint32_t lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
  return make_uint4(dq4x8_word(lo, hi, 0, scale, zero), dq4x8_word(lo, hi, 1, scale, zero),
                    dq4x8_word(lo, hi, 2, scale, zero), dq4x8_word(lo, hi, 3, scale, zero));
}
// 8 q4 codes (code e in bits 4e..4e+3) → 8 halves q·scale + zero in f16 arithmetic, in the order
// of codes 0 4 1 5 2 6 3 7 (half2 k holds codes k and k + 4: one shift and one LOP3 each, no byte
// permutes), within an f16 rounding or two of dq4x8_half:
// the pair schedule's decoding producer, whose budget per tile the f32 path exceeded (its
// consumers see M's k and the value channels in the same order)
__device__ __forceinline__ uint4 dq4x8_half2_perm(uint32_t w, __half2 scale, __half2 zero) {
  const __half2 k1024 = __float2half2_rn(1024.f);
  uint4 out;
  uint32_t* o = reinterpret_cast<uint32_t*>(&out);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t x = ((w >> (4 * k)) & 0x000F000Fu) | 0x64006400u;  // 1024 + code k, 1024 + code k + 4
    const __half2 h = __hfma2(__hsub2(*reinterpret_cast<const __half2*>(&x), k1024), scale, zero);
    o[k] = *reinterpret_cast<const uint32_t*>(&h);
  }
  return out;
}
__device__ __forceinline__ void cp_async_wait_n(int n) {
  switch (n) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    default: cp_async_wait<6>(); break;
  }
}

#endif  // PALU_SM90A_DEVICE

// RK: the key rank at compile time (the wgmma chain fully unrolled), 64..256. SCHED: kPipe (the
// key wgmma of tile i + 1 queued before p·z^V of tile i; k_stages, v_stages ≥ 2), kRing (serial
// per tile, tiles through a ring of 3 buffers: each load issued as soon as a buffer frees, a tile
// ahead), kSerial.
// kRingWs: the ring's buffers filled by a producer warp (the block's 9th warp; one lane issues
// 64 × 64 TMA boxes, which land in the swizzled operand layout) into mbarrier-guarded buffers
// (full: the tile's bytes landed; empty: both warpgroups are done with it), so the warpgroups
// never meet at block barriers; P.pingpong: the two warpgroups take turns issuing their key
// wgmma chain (named barriers 3 and 4), which keeps them apart: one's scores, softmax and p·z^V
// run while the other's chain is on the tensor cores. f16 keys and values only (no decoding
// shared by the warpgroups). The same producer issuing cp.async from its 32 lanes was 2.2×
// slower than the ring (~3.4 B/clock per SM: a warp's loads in flight are too few).
// kRingDec: kRingWs for q4 keys and values: a producer warpgroup (the block's 3rd; 128 threads)
// loads the codes and per-token scale/zero into registers a load ahead (16 bytes = 32 codes per
// thread and item, the raw tiles also prefetched into L2 two tiles ahead), decodes them to f16
// (the bits decode8_half gives: values too, where the other schedules keep the exact codes and
// fold the scale into P) in the f16 ring layout and arrives on the full barrier (128 arrivals):
// the consumers run the f16 path unchanged.
// kRingDec2: the same with two producer warpgroups (512 threads; setmaxnreg moves registers from
// the producers, 88 each, to the consumers, 168 each, as in the 384-thread launch).
// kRingDec3 (PALU_CUDA_SM90_DEC_WGS=3, measurements): three (640 threads; 96 registers at launch,
// producers 48, consumers 168).
// kRingDec2F: kRingDec2 with the keys kept as exact codes too (no key bias only): the consumers
// apply each row's key scale and zero to its score, s_t·Σ_f (cos·(c·M_a) + sin·(c·M_b)) +
// z_t·Σ_f (cos·m_a + sin·m_b) with m = M·1 (RoPE is linear per token; m is computed per block
// from M in shared memory into the key-bias slot), so the producers' key decode is the values'.
// kPairWs (f16 keys and values, value rank ≤ 256): one warpgroup per tile for both heads, the two
// warpgroups taking alternate tiles (P.wg_combine: the block combines their partials into one
// split, else each writes its own; see Sm90Params::pair for the split counts). The
// key chain is m64n256k16 with B = both heads' M ([k-atom][256 rows] in shared memory), the
// cos/sin are computed once for both heads, p·z^V is one m64n8k16 chain per tile for both heads
// (P rows 0 and 1), issued right after the warpgroup's own scores, while the other warpgroup's
// chain has (mostly) left the tensor pipe: in the per-head schedules it ran beside the other
// chain and each small wgmma waited behind a large one (16 × ~80 cycles, against ~21 alone). A
// producer warpgroup (setmaxnreg 40; one lane issues TMA boxes) fills a ring of 3 buffers in the
// order K(0), then K(j + 1), V(j) for j = 0, 1, ...; the consumers get 232 registers. The
// warpgroups take turns issuing their chains only with P.pingpong (PALU_CUDA_SM90_PAIR=2).
// kPairDec (q4 keys and values; key rank 128 or 256, value rank ≤ 384 or 256): the same
// consumers, the ring filled by a decoding producer warpgroup (setmaxnreg 56, consumers 224):
// each thread holds half a row's codes a load ahead in registers and writes them as f16 into the
// buffer once it is free, in a channel order that needs no byte permutes (M and the output
// channels follow it). At 64K q4 256/256 ~415 µs against ~446 for kRingDec2, 128/384 ~386
// against ~394 (H100, 2026-11-25); without the decoding (results wrong) ~256 / ~229.
// kPairReg (q4 keys and values; key rank 128 or 256, value rank a multiple of 128, ≤ 384 or 256;
// the default where it applies): the pair schedule with register operands. One producer lane
// issues each load's raw codes as 64 × 64-byte TMA boxes (64-byte swizzle) and its scales and
// zeros as bulk copies into a ring of up to kRegMaxBufs small buffers (sm90_reg_layout); each
// consumer warpgroup decodes its own tile into the wgmma A fragments (keys: ldmatrix.x4, the
// m64n256k16 chain with A in registers, two fragment sets a chunk apart; values: ldmatrix.x2.trans,
// m64n8k16 with the value channels as rows, or mma.sync per warp at key rank 128: kMmaV), so no
// thread waits for another's decode; the warpgroups take turns issuing their key chains
// (P.pingpong, set by the launcher). At 64K q4 256/256 ~286–296 µs (~333–341 without the
// ping-pong, round 14) against ~415–444 for kPairDec, 128/384 ~242–253 with kMmaV, its
// step-ahead loads and one barrier a tile (~273–278 before kMmaV) against ~392 (H100,
// 2026-11-25). Where the time goes: docs/perf/cuda.md, rounds 15 (ablations: the parts add up)
// and 16 (phase probe, stall sampling: the consumers' phases in series, latency-bound, ~8% of
// their time load waits).
constexpr int kSerial = 0, kPipe = 1, kRing = 2, kRingWs = 3, kRingDec = 4, kRingDec2 = 5, kRingDec3 = 6,
              kRingDec2F = 7, kPairWs = 8, kPairDec = 9, kPairReg = 10;
constexpr int kDecItems = 6;  // 16-byte items per producer thread and load: 64 rows × ≤ 192 B / 128
template <int RK, int SCHED>
__global__ void __launch_bounds__(SCHED == kRingWs    ? kSm90Threads + 32
                                  : SCHED == kRingDec || SCHED == kPairWs || SCHED == kPairDec || SCHED == kPairReg
                                      ? kSm90Threads + 128
                                  : SCHED == kRingDec2 || SCHED == kRingDec2F ? kSm90Threads + 256
                                  : SCHED == kRingDec3 ? kSm90Threads + 384
                                                      : kSm90Threads,
                                  1)
    latent_sm90_kernel(const __grid_constant__ Sm90Params P, const __grid_constant__ Sm90Maps TM) {
#ifdef PALU_SM90A_DEVICE
  // the merge kernel (a programmatic dependent) may be scheduled now: its blocks wait on the SMs
  // this grid leaves free until it completes, instead of being launched after it
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  extern __shared__ __align__(16) uint8_t smem_raw[];
  // aligned by offset arithmetic on the shared pointer (a cast through an integer would turn
  // every shared access into a generic one)
  uint8_t* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  const int KS = P.k_stages, VS = P.v_stages;
  constexpr bool KF = SCHED == kRingDec2F;  // keys as exact codes, scale / zero applied to the scores
  constexpr bool DEC = SCHED == kRingDec || SCHED == kRingDec2 || SCHED == kRingDec3 || KF,
                 WS = SCHED == kRingWs || DEC;
  constexpr int kProd = SCHED == kRingDec3 ? 384 : SCHED == kRingDec2 || KF ? 256 : 128;  // (DEC) producer threads
  constexpr int KI = (kDecItems * 128 + kProd - 1) / kProd;  // (DEC) items per producer thread
  constexpr bool PDEC = SCHED == kPairDec;  // the pair schedule on q4 keys and values (a decoding producer)
  // the pair schedule on q4 keys and values, the consumers decoding the raw code tiles (TMA) into
  // the wgmma A fragments in registers
  constexpr bool REG = SCHED == kPairReg;
  // (REG) p·z^V by mma.sync per warp at key rank 128 (value rank up to 384), else by m64n8k16 wgmma:
  // at 64K, 128/384 258–268 µs against 274–279, 256/256 306–324 against 299–305 (H100, three
  // interleaved runs, 2026-11-25)
  constexpr bool kMmaV = REG && RK < 256;
  constexpr bool PAIR = SCHED == kPairWs || PDEC || REG;
  // (pair) value accumulators: 64 channels each (rank ≤ 384 with the decoding producer where the
  // ring fits it: key rank ≤ 128)
  constexpr int kOpA = (PDEC || REG) && RK <= 128 ? 6 : 4;
  constexpr bool PIPE = SCHED == kPipe, RING = SCHED == kRing || WS || PAIR;
  // (DEC: the consumers see f16 tiles: the f16 ring's layout)
  constexpr int kF16 = (int)RowStorage::kF16;
  const Sm90Layout L = REG             ? sm90_reg_layout(P.rk, P.rv, P.reg_bufs)
                       : DEC || PDEC ? sm90_layout(P.rk, P.rv, kF16, kF16, 2 * P.rk, 2 * P.rv, 0, 0, true)
                                     : sm90_layout(P.rk, P.rv, P.stor_k, P.stor_v, P.row_bytes_k, P.row_bytes_v, KS, VS, RING);
  // wgi broadcast from lane 0: warp-uniform to ptxas, so the descriptors derived from it (M_h, P)
  // live in uniform registers instead of being moved there (R2UR) before every wgmma
  const int tid = threadIdx.x, wgi = __shfl_sync(0xffffffffu, tid >> 7, 0), warp = (tid >> 5) & 3, lane = tid & 31;
  const int tiles_total = (P.T + kTile - 1) / kTile;
  // The pair schedule's segments (P.seg_groups > 0, grid (chunks, blocks)): the groups' tiles
  // flattened, group g's tile t at g · tiles_total + t, and block (chunk, y) taking
  // [seg_lo[y], seg_lo[y + 1]) of them for its head pair, which may span groups (one segment
  // each; the host gives such blocks fewer tiles for the refold of M). The head pairs of a group
  // read the same latents: their blocks (neighbours in launch order) take the same tiles at the
  // same time, so one of them mostly reads them from L2 (with the (group, head pair) ranges
  // flattened instead, partners ran ~24 tiles apart at 131 blocks and the 64K call took 385 µs
  // against 257). Otherwise block (x, y) takes combo y's tiles split evenly along x.
  long long seg_lo = 0, seg_hi = 0;
  int gl = blockIdx.y / P.chunks, chunk = blockIdx.y % P.chunks;
  if (PAIR && P.seg_groups > 0) {
    seg_lo = P.seg_lo[blockIdx.y];
    seg_hi = P.seg_lo[blockIdx.y + 1];
    gl = (int)(seg_lo / tiles_total);
    chunk = blockIdx.x;
  }
  const Sm90Group& G = P.g[gl];
  const int head0 = G.first_head + chunk * 2;
  constexpr int rk = RK;
  const int rv = P.rv, rbk = P.row_bytes_k, rbv = P.row_bytes_v, T = P.T;
  const bool k_f16 = DEC || PDEC || REG || P.stor_k == kF16;  // (the operand in shared memory)
  const bool k_packed = P.stor_k >= (int)RowStorage::kQ8, v_packed = P.stor_v >= (int)RowStorage::kQ8;
  uint8_t* tail = smem + L.tail;
  const bool v_f16 = DEC || PDEC || REG || P.stor_v == kF16, v_q4 = !DEC && P.stor_v == (int)RowStorage::kQ4;
  // (row, 16-byte chunk) walks of a [64, rk] f16 tile by 256 threads without a division per step
  const int cpr = rk / 8, r_first = tid / cpr, c_first = tid % cpr, r_step = kSm90Threads / cpr,
            c_step = kSm90Threads % cpr;
  // the same for a [64, rv] f16 value tile
  const int cpv = rv / 8, vr_first = tid / cpv, vc_first = tid % cpv, vr_step = kSm90Threads / cpv,
            vc_step = kSm90Threads % cpv;

  // ---- once per block: M of both heads (q folded into B^K, f16, swizzled), bias terms. Row n of
  // the stacked M: head n / 128, then a_i (rows 0..63) and b_i (64..127) of frequency i:
  // a_i = q_i·B[i] + q_{i+64}·B[i+64], b_i = q_{i+64}·B[i] − q_i·B[i+64] (B = the head's kv head's
  // rows of B^K), rounded as fold_q_kernel rounds them.
  // (M by threads [0, nthr): the consumers, or in the pair schedule's prologue every thread, its
  // producer too (the fold is on the critical path there; its first loads wait for the barrier
  // after it either way); the bias terms by consumer threads. The pair schedule calls it again,
  // consumers only, for each further segment of its block, with the segment's group and first head.)
  auto fold = [&](const Sm90Group& fg, int fh0, int nthr) {
    auto m_at = [&](int n, int ch) -> uint8_t* {
      return smem + L.ms + (PAIR ? swz(2 * kHD, n, ch) : (size_t)(n >> 7) * kHD * rk * 2 + swz(kHD, n & 127, ch));
    };
    constexpr int cpr_k = RK / 8;  // 16-byte chunks per row of B^K
    // (the pair schedule: 8 items' loads in flight, the fold at a segment switch being on the
    // critical path; 4 elsewhere, where 8 made the 640-thread schedule spill)
    constexpr int kFoldUnroll = PAIR ? 8 : 4;
    if (tid < nthr) {
#pragma unroll kFoldUnroll
      for (int it = tid; it < 2 * kHalf * cpr_k; it += nthr) {
        const int hh = it / (kHalf * cpr_k), i = (it / cpr_k) % kHalf, ch = it % cpr_k;
        const int lh = fh0 + hh - fg.first_head;  // query head inside the group
        const float* qh = P.q + (size_t)(fh0 + hh) * kHD;
        const __half* B = fg.bk + (size_t)(lh / P.n_rep) * kHD * rk;
        const uint4 r0 = __ldg(reinterpret_cast<const uint4*>(B + (size_t)i * rk) + ch);
        const uint4 r1 = __ldg(reinterpret_cast<const uint4*>(B + (size_t)(i + kHalf) * rk) + ch);
        const float q0 = __ldg(qh + i), q1 = __ldg(qh + i + kHalf);
        const __half* h0 = reinterpret_cast<const __half*>(&r0);
        const __half* h1 = reinterpret_cast<const __half*>(&r1);
        uint4 oa, ob;
        __half* a = reinterpret_cast<__half*>(&oa);
        __half* b = reinterpret_cast<__half*>(&ob);
        if constexpr (REG) {
          // channels 8·ch + e: the key fragments' k order (see the key chain): channels e and e + 4
          // side by side at chunk (ch & ~3) + e, element 2·(ch & 3)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 f = fold_q_pair(q0, q1, __half2float(h0[e]), __half2float(h1[e]));
            const float2 g = fold_q_pair(q0, q1, __half2float(h0[e + 4]), __half2float(h1[e + 4]));
            const __half2 ha = __halves2half2(__float2half_rn(f.x), __float2half_rn(g.x));
            const __half2 hb = __halves2half2(__float2half_rn(f.y), __float2half_rn(g.y));
            *reinterpret_cast<__half2*>(m_at(hh * kHD + i, (ch & ~3) + e) + 4 * (ch & 3)) = ha;
            *reinterpret_cast<__half2*>(m_at(hh * kHD + kHalf + i, (ch & ~3) + e) + 4 * (ch & 3)) = hb;
          }
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float2 f = fold_q_pair(q0, q1, __half2float(h0[e]), __half2float(h1[e]));
            // (PDEC: the key tiles hold each 8 channels in the order 0 4 1 5 2 6 3 7, M's k too)
            const int pe = PDEC ? ((e & 3) << 1) | (e >> 2) : e;
            a[pe] = __float2half_rn(f.x);
            b[pe] = __float2half_rn(f.y);
          }
          *reinterpret_cast<uint4*>(m_at(hh * kHD + i, ch)) = oa;
          *reinterpret_cast<uint4*>(m_at(hh * kHD + kHalf + i, ch)) = ob;
        }
      }
    }
    fence_proxy_async();  // generic-proxy writes, read by wgmma (async proxy) after the barrier
    if (tid < 2 * kHalf) {  // α_i, β_i of head tid / 64
      const int hh = tid >> 6, i = tid & 63, lh = fh0 + hh - fg.first_head;
      const float* qh = P.q + (size_t)(fh0 + hh) * kHD;
      float2 f = make_float2(0.f, 0.f);
      if (fg.kbias != nullptr) {
        const float* bias = fg.kbias + (size_t)(lh / P.n_rep) * kHD;
        f = fold_q_pair(qh[i], qh[i + kHalf], bias[i], bias[i + kHalf]);
      }
      float* dst = reinterpret_cast<float*>(tail + hh * 1024 + (PAIR ? 256 : 128));
      dst[i] = f.x;
      dst[kHalf + i] = f.y;
    }
  };
  fold(G, head0, PAIR && P.fold_all ? (int)blockDim.x : kSm90Threads);
  if (tid < kHalf) reinterpret_cast<float*>(tail + (PAIR ? 1792 : 768))[tid] = P.inv_freq[tid];

  // the tiles split evenly over the blocks along x (ranges differ by at most one tile)
  const int tile_begin = (int)((long long)blockIdx.x * tiles_total / gridDim.x);
  const int tile_end = (int)((long long)(blockIdx.x + 1) * tiles_total / gridDim.x);

  // K(tile) and V(tile): stage (tile − tile_begin) mod KS / VS, or ring buffers 2j and 2j + 1 mod 3
  auto kbuf = [&](int tile) -> uint8_t* {
    const int j = tile - tile_begin;
    return smem + L.kst + (size_t)(RING ? (2 * j) % 3 : j % KS) * L.kstage;
  };
  auto vbuf = [&](int tile) -> uint8_t* {
    const int j = tile - tile_begin;
    return RING ? smem + L.vst + (size_t)((2 * j + 1) % 3) * L.vstage
                          : smem + L.vst + (size_t)(j % VS) * L.vstage;
  };
  auto issue_k = [&](int tile) {
    if (tile < tile_begin || tile >= tile_end) return;
    uint8_t* dst = kbuf(tile);
    const int nvalid = min(kTile, T - tile * kTile);
    const uint8_t* src = G.zk + (size_t)tile * kTile * rbk;
    if (k_f16) {
      for (int r = r_first, ch = c_first; r < nvalid;) {
        cp_async16(dst + swz(kTile, r, ch), src + (size_t)r * rbk + ch * 16);
        r += r_step;
        ch += c_step;
        if (ch >= cpr) ch -= cpr, ++r;
      }
    } else {
      const int bytes = nvalid * rbk, n16 = bytes / 16, nt = (bytes % 16) / 4;
      for (int i = tid; i < n16; i += kSm90Threads) cp_async16(dst + (size_t)i * 16, src + (size_t)i * 16);
      if (tid < nt) cp_async4(dst + (size_t)n16 * 16 + 4 * tid, src + (size_t)n16 * 16 + 4 * tid);
      if (k_packed && tid < nvalid) {
        float* sc = reinterpret_cast<float*>(dst + L.kraw);
        cp_async4(sc + tid, G.sk + (size_t)tile * kTile + tid);
        cp_async4(sc + kTile + tid, G.zrk + (size_t)tile * kTile + tid);
      }
    }
  };
  auto issue_v = [&](int tile) {
    if (tile < tile_begin || tile >= tile_end) return;
    uint8_t* dst = vbuf(tile);
    const int nvalid = min(kTile, T - tile * kTile);
    const uint8_t* src = G.zv + (size_t)tile * kTile * rbv;
    if (v_f16) {  // straight into the swizzled layout; rows past T zeroed (p = 0 there, but 0·NaN)
      for (int r = vr_first, ch = vc_first; r < kTile;) {
        if (r < nvalid) cp_async16(dst + swz(kTile, r, ch), src + (size_t)r * rbv + ch * 16);
        else *reinterpret_cast<uint4*>(dst + swz(kTile, r, ch)) = make_uint4(0, 0, 0, 0);
        r += vr_step;
        ch += vc_step;
        if (ch >= cpv) ch -= cpv, ++r;
      }
      return;
    }
    const int bytes = nvalid * rbv, n16 = bytes / 16, nt = (bytes % 16) / 4;
    for (int i = tid; i < n16; i += kSm90Threads) cp_async16(dst + (size_t)i * 16, src + (size_t)i * 16);
    if (tid < nt) cp_async4(dst + (size_t)n16 * 16 + 4 * tid, src + (size_t)n16 * 16 + 4 * tid);
    if (v_packed && tid < nvalid) {
      float* sc = reinterpret_cast<float*>(dst + L.vraw);
      cp_async4(sc + tid, G.sv + (size_t)tile * kTile + tid);
      cp_async4(sc + kTile + tid, G.zrv + (size_t)tile * kTile + tid);
    }
  };

  // Softmax state: the max is common to the warpgroup (one P per tile feeds its p·z^V wgmma),
  // the sum per warp (the warpgroup's four are added at the end). o[mt]: O^T = Z^V_tileᵀ · P as
  // the m64n8 accumulators of value channels 64·mt + 16·warp + lane/4 (+8), column 2·(lane%4)
  // (+1); column 0 (lanes with lane%4 = 0) is the head's output, the other columns are unused.
  // zacc: Σ p·zero of the q4 value rows this lane wrote into P.
  float m_run = -INFINITY, l_run = 0.f, zacc = 0.f;
  float o[8][4];
  auto fence_operands_o = [&] {
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(o[j][e])::"memory");
  };
  auto scale_o = [&](float f) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[j][e] *= f;
  };
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[j][e] = 0.f;
  const bool has_bias = P.any_bias != 0;
  const uint32_t ms_addr = smem_u32(smem + L.ms + (size_t)wgi * kHD * rk * 2);
  const float* abh = reinterpret_cast<const float*>(tail + wgi * 1024 + 128);
  __half* pb = reinterpret_cast<__half*>(tail + wgi * 1024);  // [64] P (·scale for q4 values)
  const uint32_t pb_addr = smem_u32(pb);
  const uint64_t dm = wgmma_desc(ms_addr), dp = wgmma_desc(pb_addr);  // M_h, P: fixed for the block
  float* red = reinterpret_cast<float*>(tail + 640);  // [2 parity][2 wg][4 warps] maxima, then l, zacc
  const float* fr_s = reinterpret_cast<const float*>(tail + (PAIR ? 1792 : 768));  // [64] RoPE inverse frequencies

  // The key tile of `tile` as the wgmma A operand: f16 keys in place, other storages decoded to
  // f16 into zf (the caller guarantees zf is free; ends with a block barrier).
  auto key_operand = [&](int tile) -> uint32_t {
    uint8_t* kb = kbuf(tile);
    if (k_f16) return smem_u32(kb);
    const int nvalid = min(kTile, T - tile * kTile);
    const float* ksc = reinterpret_cast<const float*>(kb + L.kraw);
    uint8_t* zf = smem + L.zf;
    for (int r = r_first, ch = c_first; r < kTile;) {
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < nvalid)
        v = decode8_half(P.stor_k, kb + (size_t)r * rbk, ch * 8, k_packed ? ksc[r] : 0.f, k_packed ? ksc[kTile + r] : 0.f);
      *reinterpret_cast<uint4*>(zf + swz(kTile, r, ch)) = v;
      r += r_step;
      ch += c_step;
      if (ch >= cpr) ch -= cpr, ++r;
    }
    fence_proxy_async();
    __syncthreads();
    return smem_u32(zf);
  };
  // ---- P = Z^K · M_hᵀ (64 tokens × 128) on the tensor cores, queued (wgmma_wait0 collects it)
  auto mma_issue = [&](float(&d)[64], uint32_t a_addr) {
    fence_operands(d);
    wgmma_fence();
    const uint64_t da = wgmma_desc(a_addr);
#pragma unroll
    for (int k0 = 0; k0 < rk; k0 += 16) {
      const uint32_t ko = (uint32_t)(k0 >> 6), kin = (uint32_t)(k0 & 63) * 2;
      wgmma_m64n128k16(d, desc_adv(da, ko * (kTile * 128) + kin), desc_adv(dm, ko * (kHD * 128) + kin), k0 > 0 ? 1 : 0);
    }
    wgmma_commit();
    fence_operands(d);
  };
  // cos/sin of this thread's rows (16·warp + lane/4 + 8·rh) and frequencies 8j + 2(lane%4) + {0,1}.
  // The ring computes them here exactly as rope_table_kernel computes the table (same bits): the
  // [T, 64] float2 table read by both warpgroups of every block is ~64 KiB of L2 → SM traffic per
  // block and tile, as much as the latents (f16 256/256: 600 → 560 µs at 64K). The pipelined
  // schedule reads the table (computing there cost q4 128/384 706 → 790 µs: the sin/cos sit
  // between the key wgmma issue and p·z^V, on its critical path). Rows past T: the table gives
  // zeros, the computation finite values; their scores are −∞ either way.
  auto load_trig = [&](float4(&tg)[2][8], int t0, int nvalid) {
    if constexpr (!RING) {
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const int row = warp * 16 + (lane >> 2) + rh * 8;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          tg[rh][j] = row < nvalid ? __ldg(P.trig + ((size_t)(t0 + row) * kHalf + 8 * j + 2 * (lane & 3)) / 2)
                                   : make_float4(0.f, 0.f, 0.f, 0.f);
      }
      return;
    }
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      const float t = (float)(t0 + warp * 16 + (lane >> 2) + rh * 8);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 f = *reinterpret_cast<const float2*>(fr_s + 8 * j + 2 * (lane & 3));
        float s0, c0, s1, c1;
        rope_sincos(__fmul_rn(t, f.x), &s0, &c0);
        rope_sincos(__fmul_rn(t, f.y), &s1, &c1);
        tg[rh][j] = make_float4(c0, s0, c1, s1);
      }
    }
  };
  // ---- scores (Σ cos·(a·z + α) + sin·(b·z + β), then the quad) and the online softmax over this
  // warp's 16 rows: p of rows lane/4 (p0) and lane/4 + 8 (p1); acc and zacc rescaled
  // ksz (KF): the key scale of this lane's rows lane/4 + 16·warp (+ 8), then their zeros.
  const float kNoScale[4] = {0.f, 0.f, 0.f, 0.f};
  auto scores_softmax = [&](float(&d)[64], const float4(&tg)[2][8], int nvalid, int par, float& p0, float& p1,
                            const float(&ksz)[4], float* corr_out = nullptr) {
    // d is only read here: in the pipelined schedule it is the operand of the next wgmma, and a
    // write (or a copy at a branch merge) would make ptxas serialize the chain
    float s[2];
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float part = 0.f;
      if constexpr (KF) {  // d holds codes · M: s_t · Σ (cos·d_a + sin·d_b) + z_t · Σ (cos·m_a + sin·m_b)
        float pc = 0.f, pz = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float2 ma = *reinterpret_cast<const float2*>(abh + 8 * j + 2 * (lane & 3));
          const float2 mb = *reinterpret_cast<const float2*>(abh + kHalf + 8 * j + 2 * (lane & 3));
          pc += tg[rh][j].x * d[4 * j + 2 * rh] + tg[rh][j].y * d[4 * (j + 8) + 2 * rh];
          pc += tg[rh][j].z * d[4 * j + 2 * rh + 1] + tg[rh][j].w * d[4 * (j + 8) + 2 * rh + 1];
          pz += tg[rh][j].x * ma.x + tg[rh][j].y * mb.x;
          pz += tg[rh][j].z * ma.y + tg[rh][j].w * mb.y;
        }
        part = ksz[rh] * pc + ksz[2 + rh] * pz;
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float cs = c ? tg[rh][j].z : tg[rh][j].x, sn = c ? tg[rh][j].w : tg[rh][j].y;
            part += cs * d[4 * j + 2 * rh + c] + sn * d[4 * (j + 8) + 2 * rh + c];
          }
        }
        // the key-bias terms Σ cos·α + sin·β as their own sum behind a uniform branch (inside the
        // loop above, predicated, their loads and adds took ~130 issue slots per tile without a bias)
        if (has_bias) {
          float bp = 0.f;
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const float2 al = *reinterpret_cast<const float2*>(abh + 8 * j + 2 * (lane & 3));
            const float2 be = *reinterpret_cast<const float2*>(abh + kHalf + 8 * j + 2 * (lane & 3));
            bp += tg[rh][j].x * al.x + tg[rh][j].y * be.x;
            bp += tg[rh][j].z * al.y + tg[rh][j].w * be.y;
          }
          part += bp;
        }
      }
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      part += __shfl_xor_sync(0xffffffffu, part, 2);
      const int row = warp * 16 + (lane >> 2) + rh * 8;
      s[rh] = row < nvalid ? part * P.inv_sqrt_d : -INFINITY;
    }
    float mt = fmaxf(s[0], s[1]);
#pragma unroll
    for (int k = 4; k < 32; k <<= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, k));
    // the warpgroup's max (consecutive tiles alternate slots; a block barrier separates them too)
    float* rm = red + (par & 1) * 8 + wgi * 4;
    if (lane == 0) rm[warp] = mt;
    named_barrier(1 + wgi, 128);
    mt = fmaxf(fmaxf(rm[0], rm[1]), fmaxf(rm[2], rm[3]));
    const float m_new = fmaxf(m_run, mt);
    float corr = 1.f;
    p0 = 0.f;
    p1 = 0.f;
    if (m_new != -INFINITY) {
      corr = expf(m_run - m_new);
      p0 = expf(s[0] - m_new);
      p1 = expf(s[1] - m_new);
    }
    float sum = p0 + p1;
#pragma unroll
    for (int k = 4; k < 32; k <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, k);
    l_run = l_run * corr + sum;
    m_run = m_new;
    zacc *= corr;
    if (corr_out != nullptr)  // (shared p·z^V: the caller rescales o, per column)
      *corr_out = corr;
    else
      scale_o(corr);
  };
  // o += Z^V_tileᵀ · P (the value tile at a_addr as the transposed A operand, P through dp), queued
  auto pv_issue = [&](uint32_t a_addr) {
    fence_operands_o();
    wgmma_fence();
    const uint64_t dv = wgmma_desc_mn(a_addr, kTile * 128);
#pragma unroll
    for (int mt = 0; mt < 8; ++mt) {
      if (mt * 64 < rv) {
#pragma unroll
        for (int ks = 0; ks < kTile / 16; ++ks)
          wgmma_m64n8k16_ta(o[mt], desc_adv(dv, mt * (kTile * 128) + ks * 2048), desc_adv(dp, ks * 32));
      }
    }
    wgmma_commit();
    fence_operands_o();
  };
  // ---- o += Z^V(i)ᵀ · P(i) on the tensor cores, queued (wgmma_wait0 collects it). V(i) landed
  // and is visible; the previous p·z^V wgmma of this block is done (the caller's schedule).
  // vsz (DEC): the q4 value scale of this lane's rows lane/4 and lane/4 + 8, then their zeros
  // (the producer stores the exact codes, as the other schedules decode them)
  auto values = [&](int i, float p0, float p1, int nvalid, const float(&vsz)[4]) {
    uint8_t* vb = vbuf(i);
    const float* vsc = reinterpret_cast<const float*>(vb + L.vraw);
    uint32_t a_addr = smem_u32(vb);
    if (!v_f16) {  // decode to f16 (q4: the exact codes; the scale goes into P) in the swizzled layout
      uint8_t* vf = smem + L.vf;
      for (int r = vr_first, ch = vc_first; r < kTile;) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < nvalid) {
          const uint8_t* row = vb + (size_t)r * rbv;
          v = v_q4 ? q4x8_half(*reinterpret_cast<const uint32_t*>(row + ch * 4))
                   : decode8_half(P.stor_v, row, ch * 8, v_packed ? vsc[r] : 0.f, v_packed ? vsc[kTile + r] : 0.f);
        }
        *reinterpret_cast<uint4*>(vf + swz(kTile, r, ch)) = v;
        r += vr_step;
        ch += vc_step;
        if (ch >= cpv) ch -= cpv, ++r;
      }
      a_addr = smem_u32(vf);
    }
    if ((lane & 3) == 0) {  // P of this lane's two rows (the quad holds the same p)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const int t = warp * 16 + (lane >> 2) + rh * 8;
        const float p = rh ? p1 : p0;
        float b = p;
        if (v_q4 && t < nvalid) {
          b = p * vsc[t];
          zacc += p * vsc[kTile + t];
        }
        if (DEC && t < nvalid) {
          b = p * vsz[rh];
          zacc += p * vsz[2 + rh];
        }
        pb[t] = __float2half_rn(b);
      }
    }
    fence_proxy_async();
    if (v_f16)
      named_barrier(1 + wgi, 128);
    else
      __syncthreads();  // the decoded tile is shared by both warpgroups
    pv_issue(a_addr);
  };

  // Shared p·z^V (P.share_pv, the WS loop), f16 only: for the decoding schedules it was slower, q4
  // 256/256 at 64K 495–499 against 463–469 µs, q4 128/384 422–433 against 394–398 (warpgroup 1
  // then paces the block).
  const bool spv = SCHED == kRingWs && P.share_pv != 0;
  // (shared p·z^V) P of this lane's rows into row `row` of the atom at tail + 1024
  // (swizzled: chunk c of row n at n·128 + ((c ^ n) << 4))
  float* spv_corr = reinterpret_cast<float*>(tail + 1024 + 688);
  auto write_p = [&](float p0, float p1, int row) {
    if ((lane & 3) == 0) {
      __half* at = reinterpret_cast<__half*>(tail + 1024 + row * 128);
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const int t = warp * 16 + (lane >> 2) + rh * 8;
        at[((((t >> 3) ^ row) << 4) >> 1) + (t & 7)] = __float2half_rn(rh ? p1 : p0);
      }
    }
  };


  if constexpr (PAIR) {
    // tail: [w·1024, +256) warpgroup w's P atom rows 0 (head 0) and 1 (head 1) (rows 2..7 are
    // whatever follows and only feed output columns 2..7, never read); [h·1024 + 256, +512) head
    // h's key-bias terms; [768, 896) the maxima exchange, [896, 960) l; [1792, 2048) the RoPE
    // inverse frequencies. The ring's barriers sit in the 1024 B the layout reserves for aligning
    // the base (before it or after the tail), outside every wgmma operand.
    //
    // Full barriers per (buffer, warpgroup): a buffer's consecutive loads can belong to different
    // warpgroups (buffer 0: K(0), K(2), V(2) for warpgroup 0, then K(5), V(5) for warpgroup 1, ...),
    // and TMA loads land in any order. With one full barrier per buffer, warpgroup 1 waiting for
    // K(5) (its phase parity 1) while V(2) had not landed (phase 2, parity 0, pending) read the
    // phase as done: it computed on the buffer as V(2) landed in it and released it early; on the
    // H100 about one 64K bench run in 30 (L2 flushed before each call, which spreads the loads'
    // latencies) ended in an unspecified launch failure. Each warpgroup now waits only on its own
    // loads' barrier of the buffer: its previous one there it consumed itself, so the phase it
    // waits for is the pending one or just done, never two behind.
    const uint32_t slack = (uint32_t)(smem - smem_raw);
    // (NB: the ring's buffers, 3 but for the register-operand form's raw tiles)
    const int NB = REG ? P.reg_bufs : 3;
    uint64_t* full = reinterpret_cast<uint64_t*>(slack >= 24u * kRegMaxBufs ? smem_raw : tail + 2048);  // [NB][2 wg]
    uint64_t* empty = full + 2 * NB;
    if (tid == 0) {
      // the producer's expect_tx, then the TMA bytes; (PDEC) its 4 warps, each after its stores;
      // (REG) the expect_tx and the 32 lanes of the producer warp, each after its scale stores
      for (int b = 0; b < 2 * NB; ++b) mbar_init(full + b, PDEC ? 4 : REG ? 33 : 1);
      for (int b = 0; b < NB; ++b) mbar_init(empty + b, 128);  // every thread of the warpgroup that read it
    }
    fence_proxy_async();
    __syncthreads();  // M, the bias terms, the frequencies and the barriers visible
    // The block's segments: [lo, hi) of the flattened (group, tile) positions (one group's
    // [tile_begin, tile_end) without P.seg_groups), cut at the groups' ends. The first is the
    // group the prologue folded M for; an empty range is one segment of no tiles (its splits
    // then read as empty: l = 0). The producer and the consumers walk the same segments, and
    // the ring's load index n runs on across them (base: the loads of the earlier segments).
    const bool seg = P.seg_groups > 0;
    const long long lo = seg ? seg_lo : (long long)gl * tiles_total + tile_begin;
    const long long hi = seg ? seg_hi : (long long)gl * tiles_total + max(tile_begin, tile_end);
    // ring load index of K(j) and V(j) (j = tile − t0 inside a segment of nt tiles): K(0), then K(j + 1), V(j), ...
    auto kload = [&](int j) { return j == 0 ? 0 : 2 * j - 1; };
    auto vload = [&](int j, int nt) { return j == nt - 1 ? 2 * j + 1 : 2 * j + 2; };
    // the other way: load n of a segment of nt tiles → (j, 1 for K(j) / 0 for V(j))
    auto load_at = [&](int n, int nt) {
      int j = n == 0 ? 0 : (n & 1) ? (n + 1) / 2 : n / 2 - 1;
      int key = n == 0 || (n & 1);
      if (key && j == nt) key = 0, j = nt - 1;  // (the last tile's V follows its K(j) directly)
      return make_int2(j, key);
    };
    auto rbuf = [&](int n) { return smem + L.kst + (size_t)(n % NB) * L.kstage; };
    if (PDEC && wgi == 2) {  // the decoding producer warpgroup: q4 codes → the f16 ring
      asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
      // Load ng of the ring's order (across the segments as the consumers walk them): thread pt
      // holds half pt % 2 of row pt / 2's codes and the row's scale and zero in registers, loaded
      // while it waits for the buffer (one load ahead), and writes them decoded into the
      // swizzled f16 tile once the buffer is free (q·s + z in f16 arithmetic; keys and values
      // alike, so the consumers run the f16 code), each 8 channels in the order 0 4 1 5 2 6 3 7
      // (M's k and the output channels follow); each warp then arrives on the full barrier of
      // the tile's warpgroup. (P.dec_ablate, measurements: 1 no decoding, 2 no loads)
      struct Ld {
        int g, tile, wg, key;
      };
      auto locate = [&](int ng) {
        Ld x{gl, 0, 0, 1};
        long long p = lo;
        for (int sgl = gl, base = 0;; ++sgl) {
          const int t0 = (int)(p - (long long)sgl * tiles_total);
          const int nt = (int)min((long long)tiles_total - t0, hi - p);
          if (ng < base + 2 * nt) {
            const int2 jk = load_at(ng - base, nt);
            x = Ld{sgl, t0 + jk.x, jk.x & 1, jk.y};
            break;
          }
          base += 2 * nt;
          p += nt;
          if (p >= hi) break;
        }
        return x;
      };
      // (one warpgroup: a second would leave the 512-thread launch 128 registers a thread, and the
      // m64n256k16 key chain needs ≥ 154 — ptxas fails)
      const int total = (int)(2 * (hi - lo)), pt = tid - kSm90Threads, pr = pt >> 1, ph = pt & 1;
      uint4 w[6];
      float sc = 0.f, zr = 0.f;
      Ld x{};
      auto fetch = [&](int ng) {  // load ng's codes, scale and zero of this thread's row into registers
        x = locate(ng);
        const Sm90Group& SG = P.g[x.g];
        const int rb = x.key ? rbk : rbv, u2 = rb / 32, r = x.tile * kTile + pr;
        const uint8_t* src = (x.key ? SG.zk : SG.zv) + (size_t)r * rb + ph * 16;
#pragma unroll
        for (int k = 0; k < 6; ++k)
          if (k < u2 && r < T && P.dec_ablate != 2) w[k] = ldg_nc16(src + 32 * k);
        if (r < T && P.dec_ablate != 2) {
          sc = __ldg((x.key ? SG.sk : SG.sv) + r);
          zr = __ldg((x.key ? SG.zrk : SG.zrv) + r);
        }
      };
      if (total > 0) fetch(0);
      for (int ng = 0; ng < total; ++ng) {
        const int b = ng % 3, rb = x.key ? rbk : rbv, u2 = rb / 32;
        const bool ok = x.tile * kTile + pr < T;  // rows past T: zeros (p = 0 there, but 0·NaN)
        const __half2 s2 = __float2half2_rn(sc), z2 = __float2half2_rn(zr);
        uint8_t* buf = rbuf(ng);
        mbar_wait(empty + b, ((uint32_t)(ng / 3) & 1u) ^ 1u);  // use −1 counts as released
#pragma unroll
        for (int k = 0; k < 6; ++k) {
          if (k < u2 && P.dec_ablate != 1) {
            // 16-byte item 2k + ph of the row (32 codes): f16 chunks 4ph .. 4ph + 3 of atom k, so
            // the 8 lanes of a store phase (rows 4i .. 4i + 3, both halves) hit 8 distinct
            // 16-byte bank groups (with the halves' items contiguous, 2 lanes shared each)
            const uint32_t wd[4] = {w[k].x, w[k].y, w[k].z, w[k].w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              uint4 v = make_uint4(0, 0, 0, 0);
              if (ok) v = dq4x8_half2_perm(wd[e], s2, z2);
              *reinterpret_cast<uint4*>(buf + k * (kTile * 128) + pr * 128 + ((((ph << 2) | e) ^ (pr & 7)) << 4)) = v;
            }
          }
        }
        fence_proxy_async();  // the generic stores → wgmma (async proxy)
        __syncwarp();
        if (lane == 0) mbar_arrive(full + b * 2 + x.wg);
        if (ng + 1 < total) fetch(ng + 1);
        if (pt == 0 && ng + 3 < total) {  // three loads ahead into L2
          const Ld y = locate(ng + 3);
          const Sm90Group& SG = P.g[y.g];
          const int rb = y.key ? rbk : rbv, nv = min(kTile, T - y.tile * kTile);
          const size_t t0 = (size_t)y.tile * kTile;
          prefetch_tile_l2((y.key ? SG.zk : SG.zv) + t0 * rb, (uint32_t)(nv * rb), (y.key ? SG.sk : SG.sv) + t0,
                           (y.key ? SG.zrk : SG.zrv) + t0, nv);
        }
      }
      return;
    }
    if (wgi == 2) {  // the producer warpgroup: one lane issues every tile as TMA boxes
      // (REG: the raw codes as 64-byte boxes, the scales and zeros as bulk copies; the warp's 32
      // lanes copy those of a partial last tile)
      // (a 288-thread launch (REG's producer needs one warp) gives no more registers: ptxas
      // allocates for whole warpgroups, 168 a thread, and only setmaxnreg lends the consumers more)
      asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
      if (warp == 0 && (REG || lane == 0)) {
        long long pos = lo;
        for (int sgl = gl, base = 0;; ++sgl) {
          const int t0 = (int)(pos - (long long)sgl * tiles_total);
          const int nt = (int)min((long long)tiles_total - t0, hi - pos);
          for (int n = 0; n < 2 * nt; ++n) {
            const int2 jk = load_at(n, nt);
            const int j = jk.x;
            const bool key = jk.y != 0;
            const int ng = base + n, b = ng % NB;
            mbar_wait(empty + b, ((ng / NB) & 1) ^ 1);  // use −1 counts as released
            uint8_t* dst = rbuf(ng);
            // boxes: 64 channels of f16 (8 KiB), or (REG) 64 bytes of codes (4 KiB)
            const int atoms = REG ? (key ? rbk : rbv) / 64 : key ? rk / 64 : (rv + 63) / 64;
            const uint32_t box_bytes = REG ? kTile * 64 : kTile * 128;
            const CUtensorMap* map = key ? &TM.k[sgl] : &TM.v[sgl];
            uint64_t* fb = full + b * 2 + (j & 1);  // warpgroup j % 2 takes tile j
            if constexpr (REG) {
              // a whole tile's scales and zeros by the bulk-copy engine too (the host checked their
              // 16-byte alignment); the last, partial tile's by the lanes (rows past T: 0 · code + 0).
              // (Against the lanes loading every tile's: not validly measured, docs/perf/cuda.md round 15.)
              const Sm90Group& SG = P.g[sgl];
              float* sc = reinterpret_cast<float*>(dst + L.kraw);
              const float* gs = (key ? SG.sk : SG.sv) + (size_t)(t0 + j) * kTile;
              const float* gz = (key ? SG.zrk : SG.zrv) + (size_t)(t0 + j) * kTile;
              const int nvalid = min(kTile, T - (t0 + j) * kTile);
              if (nvalid < kTile) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const int r = lane + 32 * h;
                  sc[r] = r < nvalid ? __ldg(gs + r) : 0.f;
                  sc[kTile + r] = r < nvalid ? __ldg(gz + r) : 0.f;
                }
              }
              if (lane == 0) {
                mbar_expect_tx(fb, (uint32_t)atoms * box_bytes + (nvalid == kTile ? 2 * kTile * 4 : 0));
                for (int a = 0; a < atoms; ++a)
                  tma_load_box(dst + (size_t)a * box_bytes, map, 64 * a, (t0 + j) * kTile, fb);
                if (nvalid == kTile) {
                  bulk_copy(sc, gs, kTile * 4, fb);
                  bulk_copy(sc + kTile, gz, kTile * 4, fb);
                }
              }
              mbar_arrive(fb);
              continue;
            }
            if (n == max(0, 2 * nt - 8) && pos + nt < hi) {
              // ~4 tiles before this segment ends, the next group's B^K rows of the block's heads
              // into L2, for the consumers' refold (it came with other changes of round 12 and
              // was not measured apart)
              const Sm90Group& nxt = P.g[sgl + 1];
              const int kv0 = (chunk * 2) / P.n_rep, kv1 = (chunk * 2 + 1) / P.n_rep;
              prefetch_l2(nxt.bk + (size_t)kv0 * kHD * rk, (uint32_t)(kHD * rk * 2));
              if (kv1 != kv0) prefetch_l2(nxt.bk + (size_t)kv1 * kHD * rk, (uint32_t)(kHD * rk * 2));
            }
            mbar_expect_tx(fb, (uint32_t)atoms * kTile * 128);
            for (int a = 0; a < atoms; ++a)
              tma_load_box(dst + (size_t)a * kTile * 128, map, 64 * a, (t0 + j) * kTile, fb);
          }
          base += 2 * nt;
          pos += nt;
          if (pos >= hi) break;
        }
      }
      return;
    }
    // (the decoding producer keeps 56: 128 · 56 + 256 · 224 ≤ 64 Ki)
    if constexpr (PDEC) asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
    else asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const bool pp = P.pingpong != 0;
    const uint32_t hint_ns = P.wait_sleep ? 10000000u : 0u;
    const uint64_t dmp = wgmma_desc(smem_u32(smem + L.ms));
    uint8_t* patom = tail + wgi * 1024;
    const uint64_t dpp = wgmma_desc(smem_u32(patom));
    float* redp = reinterpret_cast<float*>(tail + 768);  // [2 parity][2 wg][2 heads][4 warps]
    float op[kOpA][4];  // o as the m64n8 accumulators: value channel 64·mt + 16·warp + lane/4 (+8), heads in columns 0, 1
    auto fence_op = [&] {
#pragma unroll
      for (int a = 0; a < kOpA; ++a)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(op[a][e])::"memory");
    };
    // o's running sums rescaled by the softmax's correction (heads in columns 0, 1 of each block)
    auto scale_op = [&](const float(&corr)[2]) {
#pragma unroll
      for (int a = 0; a < kOpA; ++a) {
        op[a][0] *= corr[0];
        op[a][1] *= corr[1];
        op[a][2] *= corr[0];
        op[a][3] *= corr[1];
      }
    };
    // cos/sin of row 16·warp + lane/4 + 8·rh of the tile at t0, frequencies 8j + 2(lane%4) + {0,1}
    auto trig_row = [&](float4(&tg)[8], int t0, int rh) {
      const float t = (float)(t0 + warp * 16 + (lane >> 2) + rh * 8);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 f = *reinterpret_cast<const float2*>(fr_s + 8 * j + 2 * (lane & 3));
        float s0, c0, s1, c1;
        rope_sincos(__fmul_rn(t, f.x), &s0, &c0);
        rope_sincos(__fmul_rn(t, f.y), &s1, &c1);
        tg[j] = make_float4(c0, s0, c1, s1);
      }
    };
    // head h's score of row rh (this lane's quad completes it)
    auto score = [&](const float(&d)[128], const float4(&tg)[8], int h, int rh, int nvalid) {
      // four fma chains (cos / sin terms of the two frequencies of each j): two instructions a
      // pair of terms instead of a multiply, an fma and an add, and chains a quarter as long
      float pa[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float cs = c ? tg[j].z : tg[j].x, sn = c ? tg[j].w : tg[j].y;
          pa[2 * c] = fmaf(cs, d[64 * h + 4 * j + 2 * rh + c], pa[2 * c]);
          pa[2 * c + 1] = fmaf(sn, d[64 * h + 4 * (j + 8) + 2 * rh + c], pa[2 * c + 1]);
        }
      }
      float part = (pa[0] + pa[1]) + (pa[2] + pa[3]);
      if (has_bias) {
        const float* ab = reinterpret_cast<const float*>(tail + h * 1024 + 256);
        float bp = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float2 al = *reinterpret_cast<const float2*>(ab + 8 * j + 2 * (lane & 3));
          const float2 be = *reinterpret_cast<const float2*>(ab + kHalf + 8 * j + 2 * (lane & 3));
          bp += tg[j].x * al.x + tg[j].y * be.x;
          bp += tg[j].z * al.y + tg[j].w * be.y;
        }
        part += bp;
      }
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      part += __shfl_xor_sync(0xffffffffu, part, 2);
      const int row = warp * 16 + (lane >> 2) + rh * 8;
      return row < nvalid ? part * P.inv_sqrt_d : -INFINITY;
    };
    // (kMmaV) P of the value tile in ring buffer b: [2 heads][64 tokens] f16 in the 512 spare bytes
    // past its scales (sm90_reg_layout: kraw is a multiple of 1024, the stage rounds kraw + 512 up to 1024)
    auto pv_buf = [&](int b) { return reinterpret_cast<__half*>(rbuf(b) + L.kraw + 2 * kTile * 4); };
    // (REG) the value scales (or zeros) of this lane's tokens 2·(lane%4) (+1) (+ r) of k step st, as a half2
    auto step_sz = [&](const float* v, int st, int r) {
      return __float22half2_rn(*reinterpret_cast<const float2*>(v + 16 * st + r + 2 * (lane & 3)));
    };
    uint32_t fpar = 0;  // bit b: the phase parity of this warpgroup's next load into buffer b (across segments)
    // this warpgroup's wait for load n's buffer to be full, then that buffer's parity flipped
    auto wait_full = [&](int n) {
      mbar_wait_sleep(full + (n % NB) * 2 + wgi, (fpar >> (n % NB)) & 1u, hint_ns);
      fpar ^= 1u << (n % NB);
    };
    // head h's max over the warpgroup's 4 warps (each warp's at rm[h·4 + warp])
    auto wg_max = [](const float* rm, int h) {
      return fmaxf(fmaxf(rm[h * 4], rm[h * 4 + 1]), fmaxf(rm[h * 4 + 2], rm[h * 4 + 3]));
    };
    int cnt = 0;
    long long pos = lo;
    for (int sgl = gl, base = 0, si = 0;; ++sgl, ++si) {
      const int t0 = (int)(pos - (long long)sgl * tiles_total);
      const int ntiles = (int)min((long long)tiles_total - t0, hi - pos);
      const int sch = chunk;
      const Sm90Group& SG = P.g[sgl];
      const int sh0 = SG.first_head + sch * 2;
      if (si > 0) {  // a further segment: both warpgroups are done with M and the bias terms of the last
        named_barrier(5, 2 * 128);
        fold(SG, sh0, kSm90Threads);
        named_barrier(5, 2 * 128);
      }
      float mr[2] = {-INFINITY, -INFINITY}, lr[2] = {0.f, 0.f};
#pragma unroll
      for (int a = 0; a < kOpA; ++a)
#pragma unroll
        for (int e = 0; e < 4; ++e) op[a][e] = 0.f;
      if (pp && wgi == 1) named_arrive(3, 2 * 128);  // warpgroup 0 goes first
#ifdef PALU_SM90_TRACE
      // (measurement builds: scripts/cuda-variant.sh BUILD OUT -DPALU_SM90_TRACE, the switch of the
      // ring loop's clock stamps below) the clock cycles of each phase of a warpgroup's tiles,
      // summed over the segment, printed by the first thread of each consumer warpgroup of block
      // (0, 0): the key load's wait, the turn, the key chain's issue, its wait (with the cos/sin),
      // the scores and the max barrier, the softmax and the P barrier, the value load's wait, p·z^V
      // (kMmaV: the scores without a barrier, the softmax with its one or two)
      uint32_t ph[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ph_t = (uint32_t)clock();
#define PALU_PHASE(k)                          \
  do {                                         \
    const uint32_t ph_c = (uint32_t)clock();   \
    ph[k] += ph_c - ph_t;                      \
    ph_t = ph_c;                               \
  } while (0)
#else
#define PALU_PHASE(k) \
  do {                \
  } while (0)
#endif
      for (int j = wgi; j < ntiles; j += 2, ++cnt) {
        const int i = t0 + j, nk = base + kload(j), nv = base + vload(j, ntiles);
        const int nvalid = min(kTile, T - i * kTile);
        wait_full(nk);
        PALU_PHASE(0);
        if (pp) named_barrier(3 + wgi, 2 * 128);  // this warpgroup's turn
        PALU_PHASE(1);
        float d[128];
        fence_operands128(d);
        if constexpr (REG) {
          // The key tile's codes → the A fragments, one 16-byte code chunk (32 channels, two k
          // steps) at a time, decoded while the chain's earlier wgmma run (two fragment sets:
          // chunk G's waits for chunk G − 2's wgmma). ldmatrix.x4 of chunks G, G + 1: register
          // 2u + h = row 16·warp + lane/4 + 8h of chunk G + u, codes 8·(lane%4) .. + 7 (bytes
          // 4·(lane%4) ..); its half2 kk (codes kk, kk + 4) is k step 2G + kk/2, columns
          // 2·(lane%4) + 8·(kk%2) (+1): the channel order the fold gave M.
          const uint8_t* kb = rbuf(nk);
          const float* ksc = reinterpret_cast<const float*>(kb + L.kraw);
          const int r0 = warp * 16 + (lane >> 2);
          const __half2 ks0 = __float2half2_rn(ksc[r0]), kz0 = __float2half2_rn(ksc[kTile + r0]);
          const __half2 ks1 = __float2half2_rn(ksc[r0 + 8]), kz1 = __float2half2_rn(ksc[kTile + r0 + 8]);
          const int lr = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, lu = lane >> 4;
          const uint32_t kb_addr = smem_u32(kb);
          uint32_t cr[4];
          uint32_t fa[2][2][4];
#pragma unroll
          for (int G = 0; G < RK / 32; ++G) {
            if ((G & 1) == 0) ldsm_x4(cr, kb_addr + swz64(lr, G + lu));
            if (G >= 2) wgmma_wait<1>();
            const uint32_t x0 = cr[2 * (G & 1)], x1 = cr[2 * (G & 1) + 1];
#pragma unroll
            for (int u = 0; u < 2; ++u) {
              fa[G & 1][u][0] = dq4_pair(x0, 2 * u, ks0, kz0);
              fa[G & 1][u][1] = dq4_pair(x1, 2 * u, ks1, kz1);
              fa[G & 1][u][2] = dq4_pair(x0, 2 * u + 1, ks0, kz0);
              fa[G & 1][u][3] = dq4_pair(x1, 2 * u + 1, ks1, kz1);
            }
            wgmma_fence();
#pragma unroll
            for (int u = 0; u < 2; ++u) {
              const int k0 = 32 * G + 16 * u;
              const uint32_t ko = (uint32_t)(k0 >> 6), kin = (uint32_t)(k0 & 63) * 2;
              wgmma_m64n256k16_ra(d, fa[G & 1][u], desc_adv(dmp, ko * (2 * kHD * 128) + kin), k0 > 0 ? 1 : 0);
            }
            wgmma_commit();
          }
        } else {
          wgmma_fence();
          const uint64_t da = wgmma_desc(smem_u32(rbuf(nk)));
#pragma unroll
          for (int k0 = 0; k0 < rk; k0 += 16) {
            const uint32_t ko = (uint32_t)(k0 >> 6), kin = (uint32_t)(k0 & 63) * 2;
            wgmma_m64n256k16(d, desc_adv(da, ko * (kTile * 128) + kin),
                           desc_adv(dmp, ko * (2 * kHD * 128) + kin), k0 > 0 ? 1 : 0);
          }
          wgmma_commit();
        }
        fence_operands128(d);
        if (pp) named_arrive(3 + (wgi ^ 1), 2 * 128);  // the other's turn
        PALU_PHASE(2);
        float4 tg[8];
        trig_row(tg, i * kTile, 0);
        wgmma_wait0();
        fence_operands128(d);
        mbar_arrive(empty + nk % NB);
        PALU_PHASE(3);
        float s[2][2];
        s[0][0] = score(d, tg, 0, 0, nvalid);
        s[1][0] = score(d, tg, 1, 0, nvalid);
        trig_row(tg, i * kTile, 1);
        s[0][1] = score(d, tg, 0, 1, nvalid);
        s[1][1] = score(d, tg, 1, 1, nvalid);
        // each head's max over the warpgroup's 64 rows (consecutive tiles of a warpgroup alternate slots)
        float* rm = redp + (cnt & 1) * 16 + wgi * 8;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mt = fmaxf(s[h][0], s[h][1]);
#pragma unroll
          for (int k = 4; k < 32; k <<= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, k));
          if (lane == 0) rm[h * 4 + warp] = mt;
        }
        float pr[2][2], corr[2] = {1.f, 1.f};
        if constexpr (kMmaV) {
          // One barrier a tile in the common case (lazy rescaling): P is taken against the running
          // max m (p ≤ e^8 while no row exceeds m + 8, well inside f16), written with the maxima,
          // and only when the barrier shows a row above m + 8 (the first tile, and rarely after)
          // do the warps take the new max, rewrite P and meet once more. P goes to the value
          // buffer's spare 512 bytes past its scales ([2 heads][64 tokens] f16, the mma.sync B
          // fragments), so it waits for the value tile first: a tile's P then lives as long as
          // its buffer, and a warp ahead by a tile cannot overwrite one still being read.
          PALU_PHASE(4);
          wait_full(nv);
          PALU_PHASE(6);
          __half* pw = pv_buf(nv);
          auto write_p = [&] {
            if ((lane & 3) == 0) {
#pragma unroll
              for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int rh = 0; rh < 2; ++rh)
                  pw[h * kTile + warp * 16 + (lane >> 2) + rh * 8] = __float2half_rn(pr[h][rh]);
            }
          };
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int rh = 0; rh < 2; ++rh) pr[h][rh] = mr[h] == -INFINITY ? 0.f : expf(s[h][rh] - mr[h]);
          write_p();
          named_barrier(1 + wgi, 128);
          float mt[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) mt[h] = wg_max(rm, h);
          // (the same for every thread of the warpgroup: m and the maxima are)
          if (mt[0] > mr[0] + kLazyMax || mt[1] > mr[1] + kLazyMax) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const float m_new = fmaxf(mr[h], mt[h]);
              corr[h] = expf(mr[h] - m_new);  // 0 on the first tile (m = −∞)
              pr[h][0] = expf(s[h][0] - m_new);
              pr[h][1] = expf(s[h][1] - m_new);
              mr[h] = m_new;
            }
            write_p();
            named_barrier(1 + wgi, 128);
            scale_op(corr);
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float sum = pr[h][0] + pr[h][1];
#pragma unroll
            for (int k = 4; k < 32; k <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, k);
            lr[h] = lr[h] * corr[h] + sum;
          }
          PALU_PHASE(5);
        } else {
          named_barrier(1 + wgi, 128);
          PALU_PHASE(4);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float mt = wg_max(rm, h);
            const float m_new = fmaxf(mr[h], mt);
            corr[h] = 1.f;
            pr[h][0] = pr[h][1] = 0.f;
            if (m_new != -INFINITY) {
              corr[h] = expf(mr[h] - m_new);
              pr[h][0] = expf(s[h][0] - m_new);
              pr[h][1] = expf(s[h][1] - m_new);
            }
            float sum = pr[h][0] + pr[h][1];
#pragma unroll
            for (int k = 4; k < 32; k <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, k);
            lr[h] = lr[h] * corr[h] + sum;
            mr[h] = m_new;
          }
          scale_op(corr);
          if ((lane & 3) == 0) {  // P of this lane's rows into rows 0 (head 0) and 1 (head 1) of the atom
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              __half* at = reinterpret_cast<__half*>(patom + h * 128);
#pragma unroll
              for (int rh = 0; rh < 2; ++rh) {
                const int t = warp * 16 + (lane >> 2) + rh * 8;
                at[((((t >> 3) ^ h) << 4) >> 1) + (t & 7)] = __float2half_rn(pr[h][rh]);
              }
            }
          }
          fence_proxy_async();
          named_barrier(1 + wgi, 128);
          PALU_PHASE(5);
          wait_full(nv);
          PALU_PHASE(6);
        }
        fence_op();
        if constexpr (kMmaV) {
          // The value tile's codes → the same A fragments as the wgmma form below (its comment has
          // the layout), each warp's 16 rows of them into mma.sync m16n8k16 (B: P, heads as
          // columns 0 and 1, the other six zero), no commit groups or waits.
          const uint8_t* vb = rbuf(nv);
          const float* vsc = reinterpret_cast<const float*>(vb + L.kraw);
          const uint32_t vb_addr = smem_u32(vb);
          const __half* pb = pv_buf(nv);
          const int cw = rv / 128, c2 = 2 * (lane & 3), lrow = (lane & 7) + ((lane >> 3) & 1) * 8;
          // k step st + 1's code chunks and P loaded before step st's decode and mma (ldmatrix and
          // mma are volatile asm: without this each ldmatrix's latency is exposed before its use)
          uint32_t lo[2][kOpA / 2], hi[2][kOpA / 2], b0[2], b1[2];
          auto load_step = [&](int st, int buf) {
            b0[buf] = b1[buf] = 0u;
            if (lane < 8) {  // column lane/4: head 0 or 1 (the other six columns zero)
              b0[buf] = *reinterpret_cast<const uint32_t*>(pb + (lane >> 2) * kTile + 16 * st + c2);
              b1[buf] = *reinterpret_cast<const uint32_t*>(pb + (lane >> 2) * kTile + 16 * st + 8 + c2);
            }
#pragma unroll
            for (int cj = 0; cj < kOpA / 2; ++cj)
              if (cj < cw) ldsm_x2_trans(lo[buf][cj], hi[buf][cj], vb_addr + swz64(16 * st + lrow, warp * cw + cj));
          };
          load_step(0, 0);
#pragma unroll
          for (int st = 0; st < kTile / 16; ++st) {
            const int cur = st & 1;
            if (st + 1 < kTile / 16) load_step(st + 1, cur ^ 1);
            const __half2 sl = step_sz(vsc, st, 0), sh = step_sz(vsc, st, 8);
            const __half2 zl = step_sz(vsc + kTile, st, 0), zh = step_sz(vsc + kTile, st, 8);
#pragma unroll
            for (int cj = 0; cj < kOpA / 2; ++cj) {
              if (cj < cw) {
                const uint32_t l = lo[cur][cj], h = hi[cur][cj];
#pragma unroll
                for (int u = 0; u < 2; ++u) {  // blocks mt = 2cj + u: nibbles 2u, 2u + 1
                  const uint32_t fv[4] = {dq4_pair(l, 2 * u, sl, zl), dq4_pair(l, 2 * u + 1, sl, zl),
                                          dq4_pair(h, 2 * u, sh, zh), dq4_pair(h, 2 * u + 1, sh, zh)};
                  mma_m16n8k16(op[2 * cj + u], fv, b0[cur], b1[cur]);
                }
              }
            }
          }
        } else if constexpr (REG) {
          // The value tile's codes → the transposed A fragments (rows: value channels, k: tokens),
          // per k step of 16 tokens: ldmatrix.x2.trans of 16-byte chunk J = warp·cw + cj (the
          // warp's cw = rv / 128 chunks) over the step's tokens: register lo / hi holds b16 lane/4
          // (channels 32J + 4·(lane/4) + n, n = 0..3, code n in bits 4n of each half) of tokens
          // 2·(lane%4) and + 1 (+ 8 for hi). Channel n of chunk cj is row 16·warp + lane/4 + 8·(n%2)
          // of the 64-channel block 2cj + n/2 (the epilogue writes it back to channel 32J + 4·(lane/4) + n).
          const uint8_t* vb = rbuf(nv);
          const float* vsc = reinterpret_cast<const float*>(vb + L.kraw);
          const uint32_t vb_addr = smem_u32(vb);
          const int cw = rv / 128, lrow = (lane & 7) + ((lane >> 3) & 1) * 8;
          // (one commit group per k step and chunk pair, empty where the chunk is past rv: the
          // groups count as the compile-time g = st · kOpA / 2 + cj, and set g % 2 is reused once
          // group g − 2 is done)
          uint32_t fv[2][2][4];
#pragma unroll
          for (int st = 0; st < kTile / 16; ++st) {
            const int row = 16 * st + lrow;
            uint32_t lo[kOpA / 2], hi[kOpA / 2];
#pragma unroll
            for (int cj = 0; cj < kOpA / 2; ++cj) {
              if (cj < cw) {
                const int J = warp * cw + cj;
                ldsm_x2_trans(lo[cj], hi[cj], vb_addr + swz64(row, J));
              }
            }
            const __half2 sl = step_sz(vsc, st, 0), sh = step_sz(vsc, st, 8);
            const __half2 zl = step_sz(vsc + kTile, st, 0), zh = step_sz(vsc + kTile, st, 8);
#pragma unroll
            for (int cj = 0; cj < kOpA / 2; ++cj) {
              constexpr int kPer = kOpA / 2;
              const int g = st * kPer + cj;
              if (g >= 2) wgmma_wait<1>();
              if (cj < cw) {
#pragma unroll
                for (int u = 0; u < 2; ++u) {  // blocks mt = 2cj + u: nibbles 2u, 2u + 1
                  fv[g & 1][u][0] = dq4_pair(lo[cj], 2 * u, sl, zl);
                  fv[g & 1][u][1] = dq4_pair(lo[cj], 2 * u + 1, sl, zl);
                  fv[g & 1][u][2] = dq4_pair(hi[cj], 2 * u, sh, zh);
                  fv[g & 1][u][3] = dq4_pair(hi[cj], 2 * u + 1, sh, zh);
                }
                wgmma_fence();
                wgmma_m64n8k16_ra(op[2 * cj], fv[g & 1][0], desc_adv(dpp, st * 32));
                wgmma_m64n8k16_ra(op[2 * cj + 1], fv[g & 1][1], desc_adv(dpp, st * 32));
              }
              wgmma_commit();
            }
          }
        } else {
          wgmma_fence();
          const uint64_t dv = wgmma_desc_mn(smem_u32(rbuf(nv)), kTile * 128);
#pragma unroll
          for (int mt = 0; mt < kOpA; ++mt) {
            if (mt * 64 < rv) {
#pragma unroll
              for (int ks = 0; ks < kTile / 16; ++ks)
                wgmma_m64n8k16_ta(op[mt], desc_adv(dv, mt * (kTile * 128) + ks * 2048),
                                desc_adv(dpp, ks * 32));
            }
          }
          wgmma_commit();
        }
        fence_op();
        wgmma_wait0();
        fence_op();
        mbar_arrive(empty + nv % NB);
        PALU_PHASE(7);
      }
#ifdef PALU_SM90_TRACE
      if (tid % 128 == 0 && blockIdx.x == 0 && blockIdx.y == 0)
        printf("palu-phases rk %d sched %d wg %d segment %d tiles %d: wait_k %u turn %u chain_issue %u "
               "chain_wait %u scores %u softmax %u wait_v %u pzv %u\n",
               RK, SCHED, wgi, si, (ntiles - wgi + 1) / 2, ph[0], ph[1], ph[2], ph[3], ph[4], ph[5], ph[6], ph[7]);
#endif
#undef PALU_PHASE
      if (pp) {  // the unmatched turn arrival: warpgroup 1's first (even count) or warpgroup 0's last (odd)
        if ((ntiles & 1) == 0 && wgi == 0) named_barrier(3, 2 * 128);
        if ((ntiles & 1) == 1 && wgi == 1) named_barrier(4, 2 * 128);
      }
      float* rl = reinterpret_cast<float*>(tail + 896) + wgi * 8;  // [2 heads][4 warps]
      if (lane == 0) {
        rl[warp] = lr[0];
        rl[4 + warp] = lr[1];
      }
      named_barrier(1 + wgi, 128);
      // The block's partials: with P.wg_combine the two warpgroups' (m, l, o) combined into one
      // split — warpgroup 1 hands its over through M's buffer once both are done with this
      // segment's chains (a next segment refolds M only after the barrier that begins it, which
      // warpgroup 0 reaches after reading them) — else one split per warpgroup. Slot: (block −
      // the group's first block with segments, else blockIdx.x) · splits per block + warpgroup.
      const bool comb = P.wg_combine != 0;
      const int per = comb ? 1 : 2, bslot = seg ? (int)blockIdx.y - P.seg_first[sgl] : (int)blockIdx.x;
      constexpr int kXo = kOpA * 64;  // channels of o per head
      float* xo = reinterpret_cast<float*>(smem + L.ms);  // [2 heads][kXo] o, then [2] m, [2] l
      float mw[2], lw[2], w0[2] = {1.f, 1.f}, w1[2] = {0.f, 0.f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mw[h] = mr[h];
        lw[h] = rl[h * 4] + rl[h * 4 + 1] + rl[h * 4 + 2] + rl[h * 4 + 3];
      }
      if (comb) {
        named_barrier(5, 2 * 128);  // (warpgroup 0's last key chain may still be reading M)
        if (wgi == 1) {
          if ((lane & 3) == 0) {
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int mt = 0; mt < kOpA; ++mt) {
                const int c = mt * 64 + warp * 16 + (lane >> 2);
                xo[h * kXo + c] = op[mt][h];
                xo[h * kXo + c + 8] = op[mt][2 + h];
              }
          }
          if (tid == 128) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              xo[2 * kXo + h] = mw[h];
              xo[2 * kXo + 2 + h] = lw[h];
            }
          }
        }
        named_barrier(5, 2 * 128);
        if (wgi == 0) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float m0 = mw[h], m1 = xo[2 * kXo + h], m = fmaxf(m0, m1);
            w0[h] = m0 == -INFINITY ? 0.f : expf(m0 - m);
            w1[h] = m1 == -INFINITY ? 0.f : expf(m1 - m);
            mw[h] = m;
            lw[h] = w0[h] * lw[h] + w1[h] * xo[2 * kXo + 2 + h];
          }
        }
      }
      if (!comb || wgi == 0) {
        const int split = bslot * per + (comb ? 0 : wgi);
        // the group's last block marks its slots past the used ones empty (l = 0: the merge skips them)
        if (seg && t0 + ntiles == tiles_total && tid == 0)
          for (int u = (bslot + 1) * per; u < P.splits; ++u)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              P.pm[(size_t)(sh0 + h) * P.splits + u] = -INFINITY;
              P.pl[(size_t)(sh0 + h) * P.splits + u] = 0.f;
            }
        if (tid % 128 == 0) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            P.pm[(size_t)(sh0 + h) * P.splits + split] = mw[h];
            P.pl[(size_t)(sh0 + h) * P.splits + split] = lw[h];
          }
        }
        if ((lane & 3) == 0) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float* dst = P.pacc + ((size_t)SG.out_off + (size_t)(sch * 2 + h) * rv) * P.splits + (size_t)split * rv;
#pragma unroll
            for (int mt = 0; mt < kOpA; ++mt) {
              const int c = mt * 64 + warp * 16 + (lane >> 2);
              // (PDEC: position p of each 8 value channels holds channel 4·(p % 2) + p / 2)
              // (REG: row 16·warp + lane/4 (+8) of block mt holds channel 32·(warp·rv/128 + mt/2) +
              // 4·(lane/4) + 2·(mt%2) (+1))
              const int c0 = PDEC  ? (c & ~7) | ((c & 1) << 2) | ((c & 7) >> 1)
                             : REG ? 32 * (warp * (rv / 128) + (mt >> 1)) + 4 * (lane >> 2) + 2 * (mt & 1)
                                   : c;
              const int c8 = REG ? c0 + 1 : c0 + 8;
              if (c < rv) dst[c0] = comb ? w0[h] * op[mt][h] + w1[h] * xo[h * kXo + c] : op[mt][h];
              if (c + 8 < rv) dst[c8] = comb ? w0[h] * op[mt][2 + h] + w1[h] * xo[h * kXo + c + 8] : op[mt][2 + h];
            }
          }
        }
      }
      base += 2 * ntiles;
      pos += ntiles;
      if (pos >= hi) break;
    }  // segments
    return;
  }
  if constexpr (PIPE) {
    // Commit group G_j holds K(j + KS) and V(j + VS − 1); the prologue commits G_j for
    // j = tile_begin − max(KS, VS − 1) .. tile_begin − 1 (out-of-range tiles stay empty). Per
    // iteration i: trig(i); wait for the wgmma of tile i (queued one iteration earlier); scores,
    // softmax; wait K(i + 1) and V(i) (G_{i+1−min(KS,VS)}: min(KS,VS) − 2 groups may stay
    // pending); barrier (every warpgroup is done with K(i) and zf, every warp with V(i − 1));
    // commit G_i into those freed stages; queue the wgmma of tile i + 1; p·z^V of tile i while
    // the tensor cores run.
    const int pro = max(KS, VS - 1), wait_iter = min(KS, VS) - 2;
    for (int j = tile_begin - pro; j < tile_begin; ++j) {
      issue_k(j + KS);
      issue_v(j + VS - 1);
      cp_async_commit();
    }
    float d[64];
#pragma unroll
    for (int k = 0; k < 64; ++k) d[k] = 0.f;
    if (tile_begin < tile_end) {
      cp_async_wait_n(KS - 1);  // K(tile_begin) landed
      fence_proxy_async();
      __syncthreads();
      mma_issue(d, key_operand(tile_begin));
    }
    float4 tg[2][8];  // cos/sin of tile i, loaded during p·z^V of tile i − 1
    load_trig(tg, tile_begin * kTile, min(kTile, T - tile_begin * kTile));
    for (int i = tile_begin; i < tile_end; ++i) {
      const int nvalid = min(kTile, T - i * kTile);
      wgmma_wait0();
      fence_operands(d);
      float p0, p1;
      scores_softmax(d, tg, nvalid, i, p0, p1, kNoScale);
      cp_async_wait_n(wait_iter);
      fence_proxy_async();
      __syncthreads();
      issue_k(i + KS);
      issue_v(i + VS - 1);
      cp_async_commit();
      // also past the last tile (a stale stage or zeros, the result unused): a conditional issue
      // would merge two definitions of d, and ptxas then waits on the chain right after issuing it
      mma_issue(d, key_operand(i + 1));
      load_trig(tg, (i + 1) * kTile, min(kTile, T - (i + 1) * kTile));
      values(i, p0, p1, nvalid, kNoScale);
    }
    wgmma_wait0();
  } else if constexpr (WS) {
    // Load n (K(b + n/2) for even n, V(b + n/2) for odd n; b = tile_begin) goes into ring buffer
    // n mod 3, its (n/3)-th use: the producer waits empty[n mod 3] for the release of use n/3 − 1,
    // the consumers full[n mod 3] for use n/3 (phase parities (n/3 − 1) & 1 and (n/3) & 1).
    uint64_t* full = reinterpret_cast<uint64_t*>(tail + 1024 + 640);
    uint64_t* empty = full + 3;
    if (tid == 0) {
      for (int b = 0; b < 3; ++b) {
        mbar_init(full + b, DEC ? kProd / 32 : 1);  // the producer's expect_tx (then the TMA bytes) / warps
        mbar_init(empty + b, kSm90Threads);  // every consumer thread
      }
    }
    fence_proxy_async();
    __syncthreads();  // M, the bias terms and the barriers visible
    if constexpr (KF) {  // m = M·1 per head into the key-bias slot (no key bias here): row n of M per thread
      if (tid < 2 * kHD) {
        const uint8_t* row = smem + L.ms + (size_t)(tid >> 7) * kHD * rk * 2;
        float a = 0.f, b = 0.f;
#pragma unroll 4
        for (int ch = 0; ch < rk / 8; ++ch) {
          const uint4 v = *reinterpret_cast<const uint4*>(row + swz(kHD, tid & 127, ch));
          const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 f = __half22float2(h[e]);
            a += f.x;
            b += f.y;
          }
        }
        reinterpret_cast<float*>(tail + (tid >> 7) * 1024 + 128)[tid & 127] = a + b;
      }
      __syncthreads();
    }
    if (DEC && wgi >= 2) {  // the producer warpgroup(s): codes → f16 ring buffers
      if constexpr (kProd == 256) asm volatile("setmaxnreg.dec.sync.aligned.u32 88;\n" ::: "memory");
      if constexpr (kProd == 384) asm volatile("setmaxnreg.dec.sync.aligned.u32 48;\n" ::: "memory");
      const int pt = tid - kSm90Threads, loads = 2 * (tile_end - tile_begin);
      // Load n's items: 16 bytes (32 codes: f16 chunks 4c .. 4c + 3 of row r) at flat index
      // i = pt + 128·k of the tile's rows (u = row bytes / 16 items per row), r = i / u, c = i % u.
      struct Raw {
        uint4 w[kDecItems];
        float s[kDecItems], z[kDecItems];
      };
      // r = i / u as (i · ⌈2^16 / u⌉) >> 16: exact for i < 1024, u ≤ 16 (the error i·ε/2^16 < 1/64 < 1/u)
      const uint32_t inv_uv = (65536u + rbv / 16 - 1) / (rbv / 16);
      auto shape = [&](int n, const uint8_t*& rows, const float*& sc, const float*& zr, int& u, int& nvalid) {
        const bool key = (n & 1) == 0;
        const int tile = tile_begin + n / 2, rb = key ? rbk : rbv;
        u = rb / 16;
        nvalid = min(kTile, T - tile * kTile);
        rows = (key ? G.zk : G.zv) + (size_t)tile * kTile * rb;
        sc = (key ? G.sk : G.sv) + (size_t)tile * kTile;
        zr = (key ? G.zrk : G.zrv) + (size_t)tile * kTile;
      };
      // kt: std::true_type for a key load (n even), std::false_type for a value load (n odd): each
      // loop is compiled for one role (chosen at run time, both decodes were computed and selected)
      auto fetch = [&](auto kt, Raw& x, int n) {
        constexpr bool key = decltype(kt)::value;
        if (n >= loads) return;
        const uint8_t* rows;
        const float *sc, *zr;
        int u, nvalid;
        shape(n, rows, sc, zr, u, nvalid);
        if constexpr (key) u = RK / 32;
#pragma unroll
        for (int k = 0; k < KI; ++k) {
          const int i = pt + kProd * k, r = key ? i / u : (int)(((uint32_t)i * inv_uv) >> 16);
          if (i < kTile * u && r < nvalid) {
            x.w[k] = P.dec_ablate == 2 ? make_uint4(0, 0, 0, 0) : ldg_nc16(rows + (size_t)i * 16);
            if (key && !KF && P.dec_ablate != 2) {  // keys: decoded with their scale and zero
              x.s[k] = __ldg(sc + r);
              x.z[k] = __ldg(zr + r);
            } else {
              x.s[k] = x.z[k] = 0.f;
            }
          }
        }
      };
      auto prefetch = [&](int n) {
        if (n >= loads) return;
        const uint8_t* rows;
        const float *sc, *zr;
        int u, nvalid;
        shape(n, rows, sc, zr, u, nvalid);
        prefetch_tile_l2(rows, (uint32_t)(nvalid * u * 16), sc, zr, nvalid);
      };
      // decode load n (items in x) into its ring buffer once both warpgroups released it
      auto step = [&](auto kt, int n, Raw& x, Raw& next) {
        constexpr bool key = decltype(kt)::value;
        if (n >= loads) return;
        fetch(std::integral_constant<bool, !key>{}, next, n + 1);
        if (pt == 0) prefetch(n + 4);
        const int b = n % 3, u = key ? RK / 32 : rbv / 16;
        const int nvalid = min(kTile, T - (tile_begin + n / 2) * kTile);
        mbar_wait_sleep(empty + b, ((n / 3) & 1) ^ 1);  // use −1 counts as released
        uint8_t* dst = smem + L.kst + (size_t)b * L.kstage;
#pragma unroll
        for (int k = 0; k < KI; ++k) {
          const int i = pt + kProd * k, r = key ? i / u : (int)(((uint32_t)i * inv_uv) >> 16), c = i - r * u;
          if (i < kTile * u && P.dec_ablate != 1) {
            const bool ok = r < nvalid;  // rows past T: zeros (p = 0 there, but 0·NaN)
            const uint32_t wd[4] = {x.w[k].x, x.w[k].y, x.w[k].z, x.w[k].w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              uint4 v = make_uint4(0, 0, 0, 0);
              if (ok) {
                if constexpr (key && !KF) v = dq4x8_half(wd[e], x.s[k], x.z[k]);
                else v = q4x8_half(wd[e]);
              }
              *reinterpret_cast<uint4*>(dst + swz(kTile, r, 4 * c + e)) = v;
            }
          }
        }
        fence_proxy_async();  // the generic stores → wgmma (async proxy)
        __syncwarp();
        if (lane == 0) mbar_arrive(full + b);
      };
      Raw xa, xb;
      if (pt == 0)
        for (int n = 0; n < 4; ++n) prefetch(n);
      fetch(std::true_type{}, xa, 0);
      for (int n = 0; n < loads; n += 2) {  // (loads is even: K(i), V(i) per tile)
        step(std::true_type{}, n, xa, xb);
        step(std::false_type{}, n + 1, xb, xa);
      }
      return;
    }
    if constexpr (kProd >= 256 && DEC) asm volatile("setmaxnreg.inc.sync.aligned.u32 168;\n" ::: "memory");
    if (!DEC && wgi == 2) {  // the producer warp: one lane issues every tile as TMA boxes
      if (lane == 0) {
        const int loads = 2 * (tile_end - tile_begin);
        for (int n = 0; n < loads; ++n) {
          const int b = n % 3, tile = tile_begin + n / 2;
          mbar_wait(empty + b, ((n / 3) & 1) ^ 1);  // use −1 counts as released
          uint8_t* dst = smem + L.kst + (size_t)b * L.kstage;
          const bool key = (n & 1) == 0;
          const int atoms = key ? rk / 64 : (rv + 63) / 64;
          const CUtensorMap* map = key ? &TM.k[gl] : &TM.v[gl];
          mbar_expect_tx(full + b, (uint32_t)atoms * kTile * 128);
          for (int a = 0; a < atoms; ++a) tma_load_box(dst + (size_t)a * kTile * 128, map, 64 * a, tile * kTile, full + b);
        }
      }
      return;
    }
    const bool pp = P.pingpong != 0;
    // Shared p·z^V (P.share_pv): one m64n8k16 chain per tile for both heads, issued by warpgroup
    // 1: B = the 8 × 64 atom at tail + 1024 whose row 0 holds head 0's P (written by warpgroup 0)
    // and row 6 head 1's (rows 1..5 overlap warpgroup 1's bias terms and the ring barriers, row 7
    // is unused: output columns 1..5 and 7 are never read). Column 0 of O^T (lanes with lane % 4
    // = 0) is head 0's output, column 6 (lane % 4 = 3) head 1's. Named barrier 5: head 0's P and
    // its softmax correction are written; 6: the chain that read them is done.
    // (f16 only, see spv)
    const uint32_t hint_ns = DEC || P.wait_sleep ? 10000000u : 0u;  // (0: spin, the f16 comparison)
#ifdef PALU_SM90_TRACE
    // (measurement builds: -DPALU_SM90_TRACE) SM clock stamps of the phases of tiles 8..11 of the
    // split, warp 0 of each consumer warpgroup of block (0, 0), printed after the loop; the f16
    // (shared p·z^V) path. Stamps: loop top, key tile landed, turn, key chain issued, trig, chain
    // done, scores + softmax, then warpgroup 0: barrier 6, P written; warpgroup 1: value tile
    // landed, barrier 5, P written, p·z^V issued, p·z^V done. Without the shared p·z^V (q4): after
    // the scores, value tile landed, p·z^V issued, p·z^V done.
    long long trs[4][12] = {};
    const bool tron = blockIdx.x == 0 && blockIdx.y == 0 && (tid & 127) == 0;
#define PALU_TR(k)                                                         \
  do {                                                                     \
    const int tt = i - tile_begin - 8;                                     \
    if (tron && tt >= 0 && tt < 4) trs[tt][k] = clock64();                 \
  } while (0)
#else
#define PALU_TR(k) \
  do {             \
  } while (0)
#endif
    if (pp && wgi == 1) named_arrive(3, 2 * 128);  // warpgroup 0 goes first
    for (int i = tile_begin; i < tile_end; ++i) {
      const int j = i - tile_begin, nk = 2 * j, nv = 2 * j + 1;
      const int nvalid = min(kTile, T - i * kTile);
      PALU_TR(0);
      float vsz[4] = {0.f, 0.f, 0.f, 0.f};  // (DEC) the value scale / zero of this lane's two rows
      if (DEC && (lane & 3) == 0) {
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          const int t = warp * 16 + (lane >> 2) + rh * 8;
          if (t < nvalid) {
            vsz[rh] = __ldg(G.sv + (size_t)i * kTile + t);
            vsz[2 + rh] = __ldg(G.zrv + (size_t)i * kTile + t);
          }
        }
      }
      float ksz[4] = {0.f, 0.f, 0.f, 0.f};  // (KF) the key scale / zero of this lane's two rows
      if constexpr (KF) {
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          const int t = warp * 16 + (lane >> 2) + rh * 8;
          if (t < nvalid) {
            ksz[rh] = __ldg(G.sk + (size_t)i * kTile + t);
            ksz[2 + rh] = __ldg(G.zrk + (size_t)i * kTile + t);
          }
        }
      }
      mbar_wait_sleep(full + nk % 3, (nk / 3) & 1, hint_ns);  // (TMA and wgmma: both the async proxy)
      PALU_TR(1);
      if (pp) named_barrier(3 + wgi, 2 * 128);  // this warpgroup's turn
      PALU_TR(2);
      float d[64];
      mma_issue(d, smem_u32(kbuf(i)));
      PALU_TR(3);
      if (pp) named_arrive(3 + (wgi ^ 1), 2 * 128);  // the other's turn
      float4 tg[2][8];  // computed while the tensor cores run
      load_trig(tg, i * kTile, nvalid);
      PALU_TR(4);
      wgmma_wait0();
      fence_operands(d);
      PALU_TR(5);
      mbar_arrive(empty + nk % 3);
      float p0, p1;
      if (spv) {
        float corr;
        scores_softmax(d, tg, nvalid, i, p0, p1, ksz, &corr);
        PALU_TR(6);
        if (wgi == 0) {  // head 0: P into row 0 of the shared atom, corr beside it
          if (i > tile_begin) named_barrier(6, 2 * 128);  // warpgroup 1's p·z^V of tile i − 1 done: row 0 free
          PALU_TR(7);
          write_p(p0, p1, 0);
          if (tid == 0) *spv_corr = corr;
          fence_proxy_async();
          named_arrive(5, 2 * 128);
          PALU_TR(8);
        } else {  // head 1 into row 6, then p·z^V of both heads
          mbar_wait_sleep(full + nv % 3, (nv / 3) & 1, hint_ns);
          PALU_TR(7);
          named_barrier(5, 2 * 128);  // head 0's P and corr written
          PALU_TR(8);
          scale_o((lane & 3) == 0 ? *spv_corr : corr);  // column 0: head 0, column 6: head 1
          write_p(p0, p1, 6);
          fence_proxy_async();
          named_barrier(2, 128);
          PALU_TR(9);
          pv_issue(smem_u32(vbuf(i)));
          PALU_TR(10);
          wgmma_wait0();
          fence_operands_o();
          PALU_TR(11);
          mbar_arrive2(empty + nv % 3);  // (for both warpgroups: warpgroup 0 never reads V)
          named_arrive(6, 2 * 128);
        }
        continue;
      }
      scores_softmax(d, tg, nvalid, i, p0, p1, ksz);
      PALU_TR(6);
      mbar_wait_sleep(full + nv % 3, (nv / 3) & 1, hint_ns);
      PALU_TR(7);
      values(i, p0, p1, nvalid, vsz);
      PALU_TR(8);
      wgmma_wait0();
      fence_operands_o();
      PALU_TR(9);
      mbar_arrive(empty + nv % 3);
    }
#ifdef PALU_SM90_TRACE
    if (tron) {
      const long long t0 = trs[0][0];
      for (int a = 0; a < 4; ++a)
        printf("trace wg%d tile+%d t0 %lld: %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld\n", wgi, a, t0,
               trs[a][0] - t0, trs[a][1] - t0, trs[a][2] - t0, trs[a][3] - t0, trs[a][4] - t0, trs[a][5] - t0,
               trs[a][6] - t0, trs[a][7] - t0, trs[a][8] - t0, trs[a][9] - t0, trs[a][10] - t0, trs[a][11] - t0);
    }
#endif
#undef PALU_TR
    if (spv && wgi == 0 && tile_begin < tile_end) named_barrier(6, 2 * 128);  // the last p·z^V
    if (pp && wgi == 0) named_barrier(3, 2 * 128);  // warpgroup 1's last arrival
  } else if constexpr (SCHED == kRing) {
    // Commits in the order K(b), V(b), K(b + 1), V(b + 1), ... (b = tile_begin); K(i + 1) goes into
    // V(i − 1)'s buffer once every warpgroup's p·z^V of tile i − 1 is done, V(i + 1) into K(i)'s once
    // the key wgmma of tile i is: each load has about one tile of time to land.
    issue_k(tile_begin);
    cp_async_commit();
    issue_v(tile_begin);
    cp_async_commit();
    for (int i = tile_begin; i < tile_end; ++i) {
      const int nvalid = min(kTile, T - i * kTile);
      cp_async_wait<1>();  // K(i) landed, V(i) may be in flight
      fence_proxy_async();
      __syncthreads();  // K(i) visible; p·z^V of tile i − 1 done everywhere
      issue_k(i + 1);
      cp_async_commit();
      float d[64];
      mma_issue(d, key_operand(i));
      float4 tg[2][8];  // loaded while the tensor cores run
      load_trig(tg, i * kTile, nvalid);
      wgmma_wait0();
      fence_operands(d);
      float p0, p1;
      scores_softmax(d, tg, nvalid, i, p0, p1, kNoScale);
      cp_async_wait<1>();  // V(i) landed, K(i + 1) may be in flight
      fence_proxy_async();
      __syncthreads();  // V(i) visible; the key wgmma of tile i done everywhere
      issue_v(i + 1);
      cp_async_commit();
      values(i, p0, p1, nvalid, kNoScale);
      wgmma_wait0();
      fence_operands_o();
    }
  } else {
    // Per iteration i: commit K(i + KS − 1); wait K(i); barrier; commit V(i + VS − 1) (its buffer
    // was freed by that barrier); keys → scores → softmax; wait V(i); barrier; p·z^V. The prologue
    // runs the commits of iterations tile_begin − KS + 1 .. tile_begin − 1 (empty groups keep the
    // counts).
    for (int i = tile_begin - (KS - 1); i < tile_end; ++i) {
      issue_k(i + KS - 1);
      cp_async_commit();
      if (i < tile_begin) {
        issue_v(i + VS - 1);
        cp_async_commit();
        continue;
      }
      cp_async_wait_n(2 * (KS - 1));  // K(i) landed
      fence_proxy_async();
      __syncthreads();
      issue_v(i + VS - 1);
      cp_async_commit();
      const int nvalid = min(kTile, T - i * kTile);
      float d[64];
      mma_issue(d, key_operand(i));
      float4 tg[2][8];  // loaded while the tensor cores run
      load_trig(tg, i * kTile, nvalid);
      wgmma_wait0();
      fence_operands(d);
      float p0, p1;
      scores_softmax(d, tg, nvalid, i, p0, p1, kNoScale);
      cp_async_wait_n(2 * (VS - 1));  // V(i) landed
      fence_proxy_async();
      __syncthreads();  // (also: every warpgroup's wgmma on K(i) is done)
      values(i, p0, p1, nvalid, kNoScale);
      wgmma_wait0();  // V(i)'s stage, the decoded tile and P are reused next iteration
      fence_operands_o();
    }
  }
  cp_async_wait<0>();
  // ---- this warpgroup's partials (one split per block and head): l and zacc summed over its warps
  fence_operands_o();
#pragma unroll
  for (int k = 1; k < 32; k <<= 1) zacc += __shfl_xor_sync(0xffffffffu, zacc, k);
  float* rl = red + 16 + wgi * 8;  // [4] l, [4] zacc
  if (lane == 0) {
    rl[warp] = l_run;
    rl[4 + warp] = zacc;
  }
  if (spv)
    named_barrier(7, 2 * 128);  // (shared p·z^V) warpgroup 1 writes both heads' accumulators
  else
    named_barrier(1 + wgi, 128);
  const float l_sum = rl[0] + rl[1] + rl[2] + rl[3], z_sum = rl[4] + rl[5] + rl[6] + rl[7];
  const int split = blockIdx.x;
  const int head = head0 + wgi;
  if (tid % 128 == 0) {
    P.pm[(size_t)head * P.splits + split] = m_run;
    P.pl[(size_t)head * P.splits + split] = l_sum;
  }
  // Column 0 of this lane's accumulators (lanes with lane % 4 = 0) holds this warpgroup's head;
  // with the shared p·z^V warpgroup 1 holds both heads (column 6, lane % 4 = 3: head 1) and
  // warpgroup 0 none, Σ zacc of head 0 coming from warpgroup 0's slots.
  const bool writer = spv ? wgi == 1 && ((lane & 3) == 0 || (lane & 3) == 3) : (lane & 3) == 0;
  if (writer) {
    const int hh = spv ? ((lane & 3) == 0 ? 0 : 1) : wgi;
    const float* rz = red + 16 + hh * 8 + 4;
    const float zs = spv ? rz[0] + rz[1] + rz[2] + rz[3] : z_sum;
    float* dst = P.pacc + ((size_t)G.out_off + (size_t)(chunk * 2 + hh) * rv) * P.splits + (size_t)split * rv;
#pragma unroll
    for (int mt = 0; mt < 8; ++mt) {
      const int c = mt * 64 + warp * 16 + (lane >> 2);
      if (c < rv) dst[c] = o[mt][0] + zs;
      if (c + 8 < rv) dst[c + 8] = o[mt][2] + zs;
    }
  }
#endif  // PALU_SM90A_DEVICE
}

}  // namespace

Sm90Plan plan_latent_sm90(int hq, int rk, int rv, int stor_k, int stor_v, int row_bytes_k, int row_bytes_v,
                          int max_smem) {
  Sm90Plan p;
  if (hq % 2 != 0 || rk % 64 != 0 || rk > 256 || rv > 512 || rv % 8 != 0) return p;
  for (const auto [ks, vs] : {std::pair{3, 3}, std::pair{3, 2}, std::pair{2, 2}, std::pair{2, 1}}) {
    const Sm90Layout L = sm90_layout(rk, rv, stor_k, stor_v, row_bytes_k, row_bytes_v, ks, vs);
    if (L.total <= (size_t)max_smem) {
      p.ok = true;
      p.k_stages = ks;
      p.v_stages = vs;
      p.smem = L.total;
      break;
    }
  }
  if (p.ok && stor_k == (int)RowStorage::kQ4 && stor_v == (int)RowStorage::kQ4 && rv % 32 == 0 && rv <= 384) {
    // the decoding producer's ring holds f16 tiles (the f16 ring's layout)
    const int f16 = (int)RowStorage::kF16;
    const Sm90Layout D = sm90_layout(rk, rv, f16, f16, 2 * rk, 2 * rv, 0, 0, true);
    if (D.total <= (size_t)max_smem) {
      p.dec_ring = true;
      p.smem = std::max(p.smem, D.total);
    }
  }
  if (p.ok && p.v_stages < 2) {  // no pipelined schedule: the ring where it fits
    const Sm90Layout R = sm90_layout(rk, rv, stor_k, stor_v, row_bytes_k, row_bytes_v, 0, 0, true);
    if (R.total <= (size_t)max_smem) {
      p.ring = true;
      p.smem = std::max(p.smem, R.total);
    }
  }
  return p;
}

namespace {
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}
}  // namespace

bool sm90_tma_available() { return tensor_map_encoder() != nullptr; }

namespace {
// The TMA map of a group's [T, row_bytes] latent rows, boxes of 64 tokens: f16 rows (`elems`
// halves a row, boxes of 64 halves, 128-byte swizzle: one atom of the wgmma operand layout), or
// (q4) the raw code bytes (boxes of 64 bytes, 64-byte swizzle: kPairReg's swz64). false where the
// driver's entry point is missing or the rows are not 16-byte aligned.
bool encode_rows_map(CUtensorMap* m, const uint8_t* rows, int elems, int row_bytes, int T, bool q4_codes) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || reinterpret_cast<uintptr_t>(rows) % 16 != 0) return false;
  const cuuint64_t dims[2] = {(cuuint64_t)elems, (cuuint64_t)T};
  const cuuint64_t strides[1] = {(cuuint64_t)row_bytes};
  const cuuint32_t box[2] = {64, (cuuint32_t)kTile}, estr[2] = {1, 1};
  return encode(m, q4_codes ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                const_cast<uint8_t*>(rows), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                q4_codes ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
}  // namespace

bool sm90_pair_dec_shape(int rk, int rv) {
  // key rank 128 or 256 (the instantiations), value ranks in whole 64-channel atoms (a row's two
  // producer threads take whole atoms), at most 6 atoms with key rank 128 (op[6]) and 4 with 256
  return (rk == 128 || rk == 256) && rv % 64 == 0 && rv <= (rk <= 128 ? 384 : 256);
}

bool sm90_pair_reg_shape(int rk, int rv) {
  // key rank 128 or 256 (whole x4 code loads: 64 channels), value rank in whole 16-byte code
  // chunks per warp (128 channels), at most 6 value blocks with key rank 128 and 4 with 256
  return (rk == 128 || rk == 256) && rv % 128 == 0 && rv <= (rk <= 128 ? 384 : 256);
}

// PALU_CUDA_SM90_PAIR_REG: where the q4 pair schedule runs, its register-operand form (1, the
// default) or the decoding producer's (0)
bool sm90_pair_reg_enabled(int force) {
  static const int v = [] {
    const char* e = std::getenv("PALU_CUDA_SM90_PAIR_REG");
    return e != nullptr ? std::atoi(e) : 1;
  }();
  return (force >= 0 ? force != 0 : v != 0) && tensor_map_encoder() != nullptr;
}

Status launch_latent_sm90(const Sm90Params& p, dim3 grid, size_t smem, cudaStream_t stream) {
  // PALU_CUDA_SM90_KFOLD=0 (before/after comparisons): two decoding producer warpgroups dequantize
  // the keys (kRingDec2) instead of keeping their exact codes (kRingDec2F)
  static const int k_fold = [] {
    const char* e = std::getenv("PALU_CUDA_SM90_KFOLD");
    return e != nullptr ? std::atoi(e) : 1;
  }();
  const int sched = p.pipeline == 0                     ? kSerial
                    : p.k_stages >= 2 && p.v_stages >= 2 ? kPipe
                    : p.ring != 0                         ? kRing
                                                          : kSerial;
  int sched_ws = sched == kRing && p.ws != 0 && p.stor_k == (int)RowStorage::kF16 &&
                         p.stor_v == (int)RowStorage::kF16
                     ? kRingWs
                 : p.pipeline != 0 && p.ws != 0 && p.dec_ring != 0
                     ? (p.dec_wgs >= 3    ? kRingDec3
                        : p.dec_wgs == 2 ? (k_fold != 0 && p.any_bias == 0 ? kRingDec2F : kRingDec2)
                                         : kRingDec)
                                                                    : sched;
  Sm90Params q = p;
  {  // PALU_CUDA_SM90_DEC_ABLATE (measurements only; results wrong): 1 no decoding stores, 2 no loads
    static const int ablate = [] {
      const char* e = std::getenv("PALU_CUDA_SM90_DEC_ABLATE");
      return e != nullptr ? std::atoi(e) : 0;
    }();
    q.dec_ablate = ablate;
    // PALU_CUDA_SM90_WAIT_SLEEP=0: the consumers spin on their full barriers (before/after comparisons)
    static const int sleep = [] {
      const char* e = std::getenv("PALU_CUDA_SM90_WAIT_SLEEP");
      return e != nullptr ? std::atoi(e) : 1;
    }();
    q.wait_sleep = sleep;
    // PALU_CUDA_SM90_FOLD_ALL=0: the pair schedule's prologue fold by the consumers only (comparisons)
    static const int fold_all = [] {
      const char* e = std::getenv("PALU_CUDA_SM90_FOLD_ALL");
      return e != nullptr ? std::atoi(e) : 1;
    }();
    q.fold_all = fold_all;
  }
  if (p.pair != 0) {
    const bool dec = sched_ws == kRingDec || sched_ws == kRingDec2 || sched_ws == kRingDec2F || sched_ws == kRingDec3;
    if (sched_ws == kRingWs && p.rv <= 256) {
      sched_ws = kPairWs;
    } else if (dec && sm90_pair_dec_shape(p.rk, p.rv)) {
      sched_ws = kPairDec;
    } else {
      return invalid_argument("sm_90a latent kernel: the pair schedule needs f16 keys and values (value rank ≤ 256) "
                              "with the TMA producer, or q4 ones (key rank 128 or 256, value rank a multiple of 64, "
                              "≤ 384 or 256) with "
                              "the decoding ring");
    }
  } else if (p.seg_groups > 0) {
    return invalid_argument("sm_90a latent kernel: segments are a pair-schedule grid");
  }
  Sm90Maps maps{};
  const int groups = p.seg_groups > 0 ? p.seg_groups : (int)grid.y / p.chunks;
  if (sched_ws == kPairDec && sm90_pair_reg_enabled(p.pair_reg) && sm90_pair_reg_shape(p.rk, p.rv)) {
    // the register-operand form: as many raw tile buffers as the shared memory takes (≤ 8, ≥ 3)
    int nb = kRegMaxBufs;
    while (nb >= 3 && sm90_reg_layout(p.rk, p.rv, nb).total > smem) --nb;
    if (nb >= 3) {
      // (whole 64-byte boxes: the row bytes of the ranks sm90_pair_reg_shape takes)
      auto make = [&](CUtensorMap* m, const uint8_t* rows, int row_bytes) {
        return row_bytes % 64 == 0 && encode_rows_map(m, rows, row_bytes, row_bytes, p.T, true);
      };
      auto al16 = [](const float* f) { return reinterpret_cast<uintptr_t>(f) % 16 == 0; };
      bool ok = true;
      for (int i = 0; i < groups && ok; ++i)  // (scales and zeros: bulk copies of whole tiles)
        ok = make(&maps.k[i], p.g[i].zk, p.row_bytes_k) && make(&maps.v[i], p.g[i].zv, p.row_bytes_v) &&
             al16(p.g[i].sk) && al16(p.g[i].zrk) && al16(p.g[i].sv) && al16(p.g[i].zrv);
      if (ok) {
        sched_ws = kPairReg;
        q.reg_bufs = nb;
        // the warpgroups take turns issuing their key chains (the f16 pair schedule's ping-pong,
        // 1–2% slower there): at 64K q4 256/256 311–324 µs against 350–360 without, 128/384
        // 274–278 against 290–302 (H100, 2026-11-25, two interleaved runs). PALU_CUDA_SM90_REG_PINGPONG=0:
        // without (comparisons).
        static const int reg_pp = [] {
          const char* e = std::getenv("PALU_CUDA_SM90_REG_PINGPONG");
          return e != nullptr ? std::atoi(e) : 1;
        }();
        if (reg_pp != 0) q.pingpong = 1;
      }
    }
  }
  if (sched_ws == kRingWs || sched_ws == kPairWs) {
    auto make = [&](CUtensorMap* m, const uint8_t* rows, int rank, int row_bytes) {
      return encode_rows_map(m, rows, rank, row_bytes, p.T, false);
    };
    for (int i = 0; i < groups && sched_ws != kRing; ++i)
      if (!make(&maps.k[i], p.g[i].zk, p.rk, p.row_bytes_k) || !make(&maps.v[i], p.g[i].zv, p.rv, p.row_bytes_v)) {
        // (the pair schedule's splits are laid out for it: the caller checked what it needs)
        if (sched_ws == kPairWs) return internal_error("sm_90a latent kernel: a TMA descriptor could not be encoded");
        sched_ws = kRing;  // (no driver entry point or unaligned rows) the ring
      }
  }
  auto launch = [&](auto kernel) -> Status {
    PALU_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const int threads = sched_ws == kRingWs ? kSm90Threads + 32
                        : sched_ws == kRingDec || sched_ws == kPairWs || sched_ws == kPairDec || sched_ws == kPairReg
                            ? kSm90Threads + 128
                        : sched_ws == kRingDec2 || sched_ws == kRingDec2F ? kSm90Threads + 256
                        : sched_ws == kRingDec3 ? kSm90Threads + 384
                                                : kSm90Threads;
    kernel<<<grid, threads, smem, stream>>>(q, maps);
    return Status::ok();
  };

  auto pick = [&](auto rk_tag) {
    constexpr int R = decltype(rk_tag)::value;
    // (the decoding pair schedule is built for key ranks 128 and 256 only: the host asks for no other)
    constexpr int kPD = R == 128 || R == 256 ? kPairDec : kPairWs;
    constexpr int kPR = R == 128 || R == 256 ? kPairReg : kPairWs;
    return sched_ws == kPairReg   ? latent_sm90_kernel<R, kPR>
           : sched_ws == kPairDec ? latent_sm90_kernel<R, kPD>
           : sched_ws == kPairWs    ? latent_sm90_kernel<R, kPairWs>
           : sched_ws == kRingWs    ? latent_sm90_kernel<R, kRingWs>
           : sched_ws == kRingDec ? latent_sm90_kernel<R, kRingDec>
           : sched_ws == kRingDec2 ? latent_sm90_kernel<R, kRingDec2>
           : sched_ws == kRingDec2F ? latent_sm90_kernel<R, kRingDec2F>
           : sched_ws == kRingDec3 ? latent_sm90_kernel<R, kRingDec3>
           : sched == kPipe  ? latent_sm90_kernel<R, kPipe>
           : sched == kRing  ? latent_sm90_kernel<R, kRing>
                            : latent_sm90_kernel<R, kSerial>;
  };
  switch (p.rk) {
    case 64: PALU_RETURN_IF_ERROR(launch(pick(std::integral_constant<int, 64>{}))); break;
    case 128: PALU_RETURN_IF_ERROR(launch(pick(std::integral_constant<int, 128>{}))); break;
    case 192: PALU_RETURN_IF_ERROR(launch(pick(std::integral_constant<int, 192>{}))); break;
    case 256: PALU_RETURN_IF_ERROR(launch(pick(std::integral_constant<int, 256>{}))); break;
    default: return invalid_argument("sm_90a latent kernel: key rank must be 64, 128, 192 or 256");
  }
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

}  // namespace palu::backends::cuda::detail
