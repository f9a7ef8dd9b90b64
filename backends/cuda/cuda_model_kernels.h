// Kernels of the whole-model forward on a CUDA GPU (cuda_model.cu) that the op library
// (forward_ops.h, attention_cuda.h) does not have: the cache writers (f16 rows, and latents
// encoded exactly as cache/latent_packing.h encodes them on the CPU), latent row decoding to f32
// for the prefill, RoPE from a device cos/sin table at contiguous positions, row bias adds,
// f32 → f16 conversion and the causal softmax of the prefill attention. Not a public header.
//
// Pointers are device memory; work is queued on `stream` (cudaStream_t as void*), nothing waits.
// Errors: a failed launch → INTERNAL naming the kernel. Thread-safety: reentrant.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/base/row_storage.h"
#include "backends/base/status.h"

namespace palu::backends::cuda::detail {

// y[i] = half(x[i]) (round to nearest even).
Status to_half(const float* x, uint16_t* y, size_t n, void* stream);
// y[i] = float(x[i]) for f16 bits x.
Status half_to_float(const uint16_t* x, float* y, size_t n, void* stream);
// y[r, i] += b[i] for r < rows, i < n; rows of y are `ld` floats apart.
Status add_bias_rows(float* y, const float* b, int rows, int n, int ld, void* stream);
// out[t, :] = float(table[ids[t], :]) for device ids (already checked to be in range).
Status gather_rows_f16(const uint16_t* table, const int32_t* ids, int n, int d, float* out,
                       void* stream);
// Rotate-half RoPE in place on x [rows, ld] (heads × d_h values from column 0), row r at
// position pos0 + r, from a [positions, d_h/2] cos / sin table (the CPU's rounding).
Status rope_rows_table(float* x, int rows, int ld, int heads, int d_h, int pos0, const float* cos,
                       const float* sin, void* stream);
// Encodes rows t < rows of z (row t at z + t·ld_z, `rank` values) into storage rows
// dst + (t0 + t)·row_bytes; packed storage also writes scale[t0 + t], zero[t0 + t]. Matches
// cache::encode_row bit for bit (quant_params, nearbyint codes, little-endian bit packing).
Status encode_latent_rows(const float* z, int ld_z, int rows, int rank, RowStorage storage,
                          uint8_t* dst, size_t row_bytes, float* scale, float* zero, int t0,
                          void* stream);
// Decodes rows [0, T) of a storage into out[t, col0 .. col0 + rank) (ld_out floats per row),
// exactly as cache::decode_row.
Status decode_latent_rows(const uint8_t* src, size_t row_bytes, const float* scale,
                          const float* zero, RowStorage storage, int rank, int T, float* out,
                          int ld_out, int col0, void* stream);
// The f16 window of packed latents (a ring of `slots` rows of `rank` f16 values, position p in
// slot p mod slots, as cache::BlockPool): rows t < rows of z (position t0 + t) whose position is
// ≥ first are written as half(z) (round to nearest even); the others are left alone.
Status store_window_rows(const float* z, int ld_z, int rows, int rank, uint16_t* ring, int slots,
                         int t0, int first, void* stream);
// out[p, col0 .. col0 + rank) = float(ring slot p mod slots) for positions p in [begin, end)
// (ld_out floats per row): overwrites the decoded packed rows of the window's positions.
Status load_window_rows(const uint16_t* ring, int slots, int rank, int begin, int end, float* out,
                        int ld_out, int col0, void* stream);
// Causal softmax in place on scores S [heads, rows, keys] (row-major, each head's block
// rows·keys): row i sees keys [0, first_visible + i + 1) (clamped to keys); the rest are set to 0.
// exp and the max/sum in f32, as the CPU prefill.
Status causal_softmax(float* S, int heads, int rows, int keys, int first_visible, void* stream);

}  // namespace palu::backends::cuda::detail
