#include "tools/compress/calibration_stats.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace palu::compress {

CalibrationStats::CalibrationStats(int dim) : dim_(dim), lower_(Eigen::MatrixXd::Zero(dim, dim)) {}

Result<CalibrationStats> CalibrationStats::create(int dim) {
  if (dim < 1) {
    return invalid_argument("CalibrationStats: dim must be >= 1, got " + std::to_string(dim));
  }
  return CalibrationStats(dim);
}

Status CalibrationStats::add(const float* x, int64_t rows, int dim) {
  if (dim != dim_) {
    return invalid_argument("CalibrationStats::add: dim must be " + std::to_string(dim_) +
                            ", got " + std::to_string(dim));
  }
  if (rows < 0) {
    return invalid_argument("CalibrationStats::add: rows must be >= 0, got " +
                            std::to_string(rows));
  }
  if (rows == 0) return Status::ok();
  if (x == nullptr) return invalid_argument("CalibrationStats::add: x is null");

  // Column-major [dim, rows] view: column t is token t's row, so no copy is needed to
  // see the tokens as columns of Xᵀ.
  using FloatCols = Eigen::Map<const Eigen::MatrixXf>;
  // Reject non-finite activations before touching the sum, so a failed add changes nothing.
  for (int64_t t0 = 0; t0 < rows; t0 += kBlockRows) {
    const int64_t nb = std::min<int64_t>(kBlockRows, rows - t0);
    FloatCols block(x + t0 * dim_, dim_, nb);
    if (!block.allFinite()) {
      for (int64_t t = 0; t < nb; ++t) {
        if (!block.col(t).allFinite()) {
          return invalid_argument("CalibrationStats::add: row " + std::to_string(t0 + t) +
                                  " holds a non-finite value (NaN or Inf)");
        }
      }
    }
  }

  // Lower-triangle tile pairs (i ≥ j), each one independent GEMM.
  const int tiles = (dim_ + kTileDim - 1) / kTileDim;
  std::vector<std::pair<int, int>> pairs;
  pairs.reserve(static_cast<size_t>(tiles) * (tiles + 1) / 2);
  for (int i = 0; i < tiles; ++i)
    for (int j = 0; j <= i; ++j) pairs.emplace_back(i, j);
  const int num_pairs = static_cast<int>(pairs.size());

  Eigen::MatrixXd xd(dim_, kBlockRows);  // [dim, block tokens] float64: Xᵀ of the block
  for (int64_t t0 = 0; t0 < rows; t0 += kBlockRows) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlockRows, rows - t0));
    xd.leftCols(nb) = FloatCols(x + t0 * dim_, dim_, nb).cast<double>();
    const auto cols = xd.leftCols(nb);
#pragma omp parallel for schedule(dynamic, 1)
    for (int p = 0; p < num_pairs; ++p) {
      const int i0 = pairs[p].first * kTileDim;
      const int j0 = pairs[p].second * kTileDim;
      const int ni = std::min(kTileDim, dim_ - i0);
      const int nj = std::min(kTileDim, dim_ - j0);
      // G[i, j] += Σ_t x_t[i] x_t[j] over this block. Diagonal tiles are formed in full
      // (the part above the diagonal is never read).
      lower_.block(i0, j0, ni, nj).noalias() +=
          cols.middleRows(i0, ni) * cols.middleRows(j0, nj).transpose();
    }
  }
  tokens_ += rows;
  return Status::ok();
}

Status CalibrationStats::merge(const CalibrationStats& other) {
  if (other.dim_ != dim_) {
    return invalid_argument("CalibrationStats::merge: dim must be " + std::to_string(dim_) +
                            ", got " + std::to_string(other.dim_));
  }
  lower_.triangularView<Eigen::Lower>() += other.lower_;
  tokens_ += other.tokens_;
  return Status::ok();
}

Eigen::MatrixXd CalibrationStats::gram() const {
  Eigen::MatrixXd g = lower_.selfadjointView<Eigen::Lower>();
  return g;
}

}  // namespace palu::compress
