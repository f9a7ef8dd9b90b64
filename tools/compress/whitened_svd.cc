#include "tools/compress/whitened_svd.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace palu::compress {
namespace {

std::string shape(const Eigen::MatrixXd& m) {
  std::string s = "[";
  s += std::to_string(m.rows());
  s += ", ";
  s += std::to_string(m.cols());
  s += "]";
  return s;
}

// Cholesky of `g` (lower triangle) + shift·I. Returns false when it fails or, if
// `check_pivots`, when some squared pivot L_ii² is at most kSingularPivotRel · G_ii.
bool try_cholesky(const Eigen::MatrixXd& g, double shift, bool check_pivots,
                  Eigen::MatrixXd* s_lower) {
  Eigen::MatrixXd shifted = g.triangularView<Eigen::Lower>();
  shifted.diagonal().array() += shift;
  Eigen::LLT<Eigen::MatrixXd, Eigen::Lower> llt(shifted);
  if (llt.info() != Eigen::Success) return false;
  Eigen::MatrixXd l = llt.matrixL();
  const Eigen::VectorXd pivots = l.diagonal();
  if (!pivots.allFinite() || pivots.minCoeff() <= 0.0) return false;
  if (check_pivots && (pivots.array().square() <= kSingularPivotRel * g.diagonal().array()).any()) {
    return false;
  }
  *s_lower = std::move(l);
  return true;
}

}  // namespace

Result<Whitener> make_whitener(const Eigen::MatrixXd& g) {
  if (g.rows() < 1 || g.rows() != g.cols()) {
    return invalid_argument("make_whitener: G must be square [d, d] with d >= 1, got " + shape(g));
  }
  if (!g.triangularView<Eigen::Lower>().toDenseMatrix().allFinite()) {
    return invalid_argument("make_whitener: G " + shape(g) + " holds a non-finite value");
  }
  Whitener out;
  if (try_cholesky(g, 0.0, /*check_pivots=*/true, &out.s_lower)) {
    return out;
  }
  // Palu's fallback: lift the smallest eigenvalue to 1e-3.
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(g, Eigen::EigenvaluesOnly);
  if (eig.info() != Eigen::Success) {
    return internal_error("make_whitener: eigenvalue solver did not converge on G " + shape(g));
  }
  out.lambda_min = eig.eigenvalues().minCoeff();
  double floor = kEigenShiftFloor;
  for (int attempt = 2; attempt <= 16; ++attempt, floor *= 10.0) {
    const double shift = floor - out.lambda_min;
    if (shift <= 0.0) continue;  // λ_min already above the floor: only a larger floor helps
    if (try_cholesky(g, shift, /*check_pivots=*/false, &out.s_lower)) {
      out.shift = shift;
      out.cholesky_attempts = attempt;
      return out;
    }
  }
  return internal_error("make_whitener: Cholesky of G " + shape(g) +
                        " failed even after eigen-shifts up to " + std::to_string(floor) +
                        " (lambda_min " + std::to_string(out.lambda_min) + ")");
}

double WhitenedFactor::discarded_energy() const {
  const int r = rank();
  const int n = static_cast<int>(singular_values.size());
  if (r >= n) return 0.0;
  return singular_values.tail(n - r).squaredNorm();
}

double WhitenedFactor::total_energy() const {
  return singular_values.squaredNorm();
}

Result<WhitenedFactor> whitened_svd(const Eigen::MatrixXd& w, const Whitener& whitener, int rank) {
  const int d = whitener.dim();
  if (d < 1) return invalid_argument("whitened_svd: whitener is empty");
  if (w.rows() < 1 || w.cols() != d) {
    return invalid_argument("whitened_svd: W must be [out_g, " + std::to_string(d) +
                            "] with out_g >= 1, got " + shape(w));
  }
  const int max_rank = static_cast<int>(std::min<Eigen::Index>(w.rows(), w.cols()));
  if (rank < 1 || rank > max_rank) {
    return invalid_argument("whitened_svd: rank must be in [1, " + std::to_string(max_rank) +
                            "] for W " + shape(w) + ", got " + std::to_string(rank));
  }
  if (!w.allFinite()) {
    return invalid_argument("whitened_svd: W " + shape(w) + " holds a non-finite value");
  }

  // W S: [out_g, d].
  const Eigen::MatrixXd ws = w * whitener.s_lower.triangularView<Eigen::Lower>();
  Eigen::BDCSVD<Eigen::MatrixXd> svd(ws, Eigen::ComputeThinU | Eigen::ComputeThinV);
  if (svd.info() != Eigen::Success) {
    return internal_error("whitened_svd: BDCSVD did not converge on W S " + shape(ws));
  }

  WhitenedFactor out;
  out.shift = whitener.shift;
  out.singular_values = svd.singularValues();
  // Σ_r^½ [r]
  const Eigen::VectorXd sqrt_sigma = out.singular_values.head(rank).cwiseSqrt();
  // B = U_r Σ_r^½: [out_g, r]
  out.b = svd.matrixU().leftCols(rank) * sqrt_sigma.asDiagonal();
  // Aᵀ = S⁻ᵀ V_r Σ_r^½: solve Sᵀ Aᵀ = V_r Σ_r^½ (Sᵀ is upper-triangular), [d, r].
  Eigen::MatrixXd at = svd.matrixV().leftCols(rank) * sqrt_sigma.asDiagonal();
  whitener.s_lower.triangularView<Eigen::Lower>().transpose().solveInPlace(at);
  out.a = at.transpose();
  return out;
}

Result<WhitenedFactor> whitened_svd(const Eigen::MatrixXd& w, const Eigen::MatrixXd& g, int rank) {
  if (w.cols() != g.rows()) {
    return invalid_argument("whitened_svd: W " + shape(w) + " and G " + shape(g) +
                            " disagree on the input dimension d");
  }
  PALU_ASSIGN_OR_RETURN(const Whitener whitener, make_whitener(g));
  return whitened_svd(w, whitener, rank);
}

}  // namespace palu::compress
