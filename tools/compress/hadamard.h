// Orthonormal rotations folded into the latents (Palu's low-rank-aware quantization).
//
// A group's latent z = A x ([r] per token) often has a few large coordinates, which widen the
// per-token quantization range. Rotating it by an orthonormal Q (z' = Q z) spreads that energy
// over all r coordinates; folding Q into the weights, A' = Q A ([r, d]) and B' = B Qᵀ
// ([out_g, r]), keeps B'A' = B A exactly and costs nothing at run time.
//
// Constructions, all scaled by 1/√n so that Q Qᵀ = I (float64):
//   * Sylvester doubling: H_2n = [[H, H], [H, −H]] = H_2 ⊗ H_n.
//   * Paley I, q prime ≡ 3 (mod 4): order q + 1, H = I + [[0, 1ᵀ], [−1, C]] with C the q×q
//     Jacobsthal matrix C_ij = χ(j − i) (χ the quadratic character mod q). Gives the classic
//     base orders 4, 8, 12 (q = 11), 20 (q = 19), 24, 32, 44 (q = 43), 48, 60, 68, 72, …
//   * Paley II, q prime ≡ 1 (mod 4): order 2(q + 1): S = [[0, 1ᵀ], [1, C]] (symmetric),
//     H = S ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]]. Gives 12 (q = 5), 28 (q = 13),
//     36 (q = 17), 60, 76, …
//   n = 2^a · m is built as H_m ⊗ H_2^{⊗a}, taking the largest a for which m is 1, 2 or a
//   Paley order. Every multiple of 32 from 32 to 1344 has a construction (224 = 28·8 via
//   Paley II q = 13, 416 = 104·4 via Paley I q = 103); the first multiple of 32 without one is
//   1376 = 32·43. Hadamard matrices exist only for n = 1, 2 and multiples of 4, and some
//   multiples of 4 (92, 116, 156, 172, …) need constructions we do not implement.
//
// Fallback for other n (latent_rotation): a seeded random orthogonal matrix, Q of the QR
// decomposition of an n×n standard Gaussian matrix with R's diagonal made positive (Haar
// distributed). Trade-off, versus the other candidate — a block-diagonal of the largest
// Hadamard blocks that fit: a block-diagonal matrix has the Hadamard guarantee
// (|Q_ij| = 1/√b) but only mixes coordinates within a block, so an outlier is spread over b,
// not n, coordinates and the blocks see very different ranges; a Haar-random Q mixes all n
// coordinates (|Q_ij| ≈ √(2 ln n / n) with high probability) but the guarantee is only
// probabilistic and the matrix must be stored, not regenerated from a formula (it is folded
// into A and B, so this costs nothing extra). The Gaussian samples come from std::mt19937_64
// (bit-exact by the standard) through our own Box–Muller, not std::normal_distribution (whose
// output is implementation-defined), so a seed gives the same Q on every platform up to
// floating-point rounding of the QR.
//
// Ownership: plain values. Thread-safety: pure functions. Errors: Status values naming the
// argument, the expected and the found value.
#pragma once

#include <cstdint>
#include <string>

#include "backends/base/status.h"
#include "tools/compress/eigen_dense.h"

namespace palu::compress {

// Largest n we build (a dense n×n float64 matrix: 2 GiB at this size).
inline constexpr int kMaxRotationDim = 16384;
inline constexpr uint64_t kDefaultRotationSeed = 0x70616c75ULL;  // "palu"

// How hadamard(n) would be built, e.g. "paley1(q=11) x sylvester(2^3)", or "" when no
// construction exists for n (n ≥ 1).
std::string hadamard_construction(int n);

// The orthonormal Hadamard matrix H_n / √n: [n, n], entries ±1/√n, Q Qᵀ = I.
// kUnimplemented when no construction exists for n; kInvalidArgument when n < 1 or
// n > kMaxRotationDim.
Result<Eigen::MatrixXd> hadamard(int n);

enum class RotationKind { kHadamard, kRandomOrthogonal };

struct Rotation {
  Eigen::MatrixXd q;  // [n, n] orthonormal
  RotationKind kind = RotationKind::kHadamard;
  std::string construction;  // hadamard_construction(n), or "random_orthogonal(seed=…)"
};

// The rotation for a latent of rank n: hadamard(n) when it exists, else the seeded random
// orthogonal fallback described above.
Result<Rotation> latent_rotation(int n, uint64_t seed = kDefaultRotationSeed);

// Seeded Haar-random orthogonal [n, n] (the fallback; exposed for tests and tools).
Result<Eigen::MatrixXd> random_orthogonal(int n, uint64_t seed);

// Folds Q ([r, r]) into one group's factors: A ← Q A (A: [r, d]), B ← B Qᵀ (B: [out_g, r]).
Status fold_rotation(const Eigen::MatrixXd& q, Eigen::MatrixXd* a, Eigen::MatrixXd* b);

}  // namespace palu::compress
