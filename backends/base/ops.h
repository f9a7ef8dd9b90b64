// Ops as data: an op kind names a computation every backend may implement. Devices answer
// supports(op); the conformance suite (tests/conformance) runs one table of cases per op on
// every device that supports it and compares with the CPU reference.
#pragma once

#include <cstdint>

namespace palu::backends {

enum class OpKind : uint8_t {
  kMatMul = 0,          // C[M,N] = A[M,K] · B[N,K]ᵀ (weights row-major, out × in)
  kRmsNorm,             // y = x / sqrt(mean(x²) + eps) · w
  kRope,                // rotate-half RoPE at given positions, θ from the config
  kSiluMul,             // y = silu(gate) · up
  kSoftmax,             // row-wise, numerically stable
  kAttentionPrefill,    // causal attention over a prompt (MHA/GQA)
  kAttentionDecode,     // one query token against a full K/V cache
  kLatentAttentionDecode,  // one query token against a latent (low-rank) cache, fused
  kCount
};

const char* op_kind_name(OpKind op);

}  // namespace palu::backends
