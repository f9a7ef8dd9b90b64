// Whitened SVD of one head group of a K or V projection (Palu, DESIGN.md §1).
//
// Given the calibration autocorrelation G = Σ_t x_t x_tᵀ ([d, d], float64) and the rows
// W_g ([out_g, d]) of one group of s consecutive KV heads (out_g = s·d_h):
//
//   S = chol(G), lower-triangular [d, d]           (Whitener; eigen-shift if G is not PD)
//   W_g S = U Σ Vᵀ                                 (Eigen::BDCSVD, thin)
//   B = U_r Σ_r^½                  [out_g, r]
//   A = Σ_r^½ V_rᵀ S⁻¹             [r, d]          (by a triangular solve, no inverse)
//
// so W_g ≈ B A, the runtime caches z = A x ([r] per token) and rebuilds k = B z. Because
// G = S Sᵀ, Σ_t ||W x_t − B A x_t||² = ||(W − BA) S||²_F = Σ_{i>r} σ_i²: the discarded
// whitened energy equals the calibration reconstruction error (when no shift was needed).
//
// Eigen-shift: if Cholesky fails, or succeeds with a pivot so small that G is numerically
// singular (some L_ii² ≤ kSingularPivotRel · G_ii: the part of input channel i not explained
// by channels 0 … i−1 is at round-off level, which is what a rank-deficient G gives), Palu's
// fix applies: add (1e-3 − λ_min(G))·I and retry. We do exactly that; if the shifted matrix still
// fails (possible only when G is enormous and 1e-3 drowns in its rounding), the floor 1e-3 is
// raised tenfold per retry. The Whitener reports the shift it used.
//
// Ownership: plain values. Thread-safety: functions are pure; Eigen may use OpenMP threads
// inside. Errors: Status values naming the argument, expected and found value.
#pragma once

#include <limits>
#include <vector>

#include "backends/base/status.h"
#include "tools/compress/eigen_dense.h"

namespace palu::compress {

// The floor Palu shifts the smallest eigenvalue of G to when Cholesky fails.
inline constexpr double kEigenShiftFloor = 1e-3;
// A first Cholesky with a squared pivot L_ii² at most this fraction of G_ii is treated as a
// failure. Round-off in a pivot is ~ d·ε·G_ii (≤ 1e-12 for d ≤ 4096); an exactly singular G
// lands there, and S⁻¹ would blow up. Channel i would need a correlation above 1 − 5e-11
// with the earlier channels to trip it while G is in fact positive definite.
inline constexpr double kSingularPivotRel = 1e-10;

// S = chol(G + shift·I), the whitening factor shared by every group and by k_proj and v_proj
// of one layer (they read the same input).
struct Whitener {
  Eigen::MatrixXd s_lower;  // [d, d] lower-triangular, S Sᵀ = G + shift·I
  double shift = 0.0;       // added to G's diagonal; 0 when G was positive definite
  // Smallest eigenvalue of G (float64); computed only when the shift path ran, NaN otherwise.
  double lambda_min = std::numeric_limits<double>::quiet_NaN();
  int cholesky_attempts = 1;  // 1 = plain Cholesky succeeded

  int dim() const { return static_cast<int>(s_lower.rows()); }
  bool shifted() const { return shift != 0.0; }
};

// G: [d, d] symmetric (only the lower triangle is read), finite. d ≥ 1.
Result<Whitener> make_whitener(const Eigen::MatrixXd& g);

// One group's low-rank factors W_g ≈ B A.
struct WhitenedFactor {
  Eigen::MatrixXd b;  // [out_g, rank]  U_r Σ_r^½
  Eigen::MatrixXd a;  // [rank, d]      Σ_r^½ V_rᵀ S⁻¹
  // σ of W_g S, all min(out_g, d) of them, descending (float64).
  Eigen::VectorXd singular_values;
  double shift = 0.0;  // the whitener's eigen-shift (0: none; then the identity above is exact)

  int rank() const { return static_cast<int>(a.rows()); }
  bool eigen_shift_applied() const { return shift != 0.0; }
  // Σ_{i>r} σ_i²: the whitened energy the truncation discards (= calibration error Σ_t ||ΔW
  // x_t||²).
  double discarded_energy() const;
  // Σ_i σ_i² = ||W_g S||²_F = Σ_t ||W_g x_t||² (the calibration energy of the group's output).
  double total_energy() const;
};

// W: [out_g, d] finite; whitener of dimension d; 1 ≤ rank ≤ min(out_g, d).
Result<WhitenedFactor> whitened_svd(const Eigen::MatrixXd& w, const Whitener& whitener, int rank);

// Convenience: make_whitener(G) then whitened_svd. Prefer sharing one Whitener per layer.
Result<WhitenedFactor> whitened_svd(const Eigen::MatrixXd& w, const Eigen::MatrixXd& g, int rank);

}  // namespace palu::compress
