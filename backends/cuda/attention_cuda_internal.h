// Pieces shared by the attention kernels' translation units (not a public header).
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "backends/base/status.h"

namespace palu::backends::cuda::detail {

struct DeviceLimits {
  int device = 0;
  int sms = 0;
  int max_smem_optin = 0;
  int cc_major = 0, cc_minor = 0;  // compute capability (9.0 runs the sm_90a latent kernel)
};
Result<DeviceLimits> device_limits();

// Queues the merge of the token splits of `heads` query heads (global heads first_head + i)
// whose outputs (rv floats each) start at out_off0 + i·rv. Partials: pm/pl [H, splits], and
// pacc at (out offset)·splits + s·rv. pdl (compute capability ≥ 9.0 only): launched as a
// programmatic dependent of the kernel before it (which may trigger it early; the merge waits for
// that kernel's completion and memory either way).
Status launch_merge_splits(const float* pm, const float* pl, const float* pacc, int splits, int first_head,
                           int heads, int out_off0, int rv, float* out, cudaStream_t stream, bool pdl);

// The sm_90a pair schedule's segmented partition (host code; latent_attention.cu says how):
// W = groups · tiles flattened tiles over at most nb blocks per head pair, `cost` tiles charged
// per change of group inside a block. lo: the blocks' first tiles, then W; first[g]: the block
// holding group g's first tile; count[g]: the blocks group g's tiles fall in. Returns the largest
// count: the splits per head with one split per block (twice that with one per warpgroup).
int seg_partition(int groups, int tiles, int nb, int cost, std::vector<int>& lo, std::vector<int>& first,
                  std::vector<int>& count);

}  // namespace palu::backends::cuda::detail
