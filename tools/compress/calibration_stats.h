// CalibrationStats: the input autocorrelation G = Σ_t x_t x_tᵀ of one projection input.
//
// Palu (DESIGN.md §1) whitens each K/V projection with S = chol(G), where G sums the outer
// products of the inputs of k_proj (= inputs of v_proj) over every calibration token. The
// activations arrive as float32 rows; the sum is kept in float64 because 64k tokens of
// activations with outlier channels lose the small eigen-directions in float32.
//
// Cost: add() of T rows of dimension d does ~T·d²  multiply-adds (only the lower triangle is
// formed). Rows are converted to float64 in blocks of kBlockRows tokens and the lower triangle
// is updated tile by tile with Eigen GEMMs, tiles spread over OpenMP threads: d = 4096 over
// 64k tokens is ~1.1e12 FLOP, i.e. tens of seconds on two cores.
// Memory: the [d, d] float64 sum (128 MiB at d = 4096) + one [d, kBlockRows] float64 block.
//
// Ownership: a CalibrationStats owns its sum. Thread-safety: none; add() uses OpenMP
// internally, so call it from one thread at a time. Errors: Status values naming the argument,
// the expected and the found value; a failed add() leaves the sum unchanged.
#pragma once

#include <cstdint>

#include "backends/base/status.h"
#include "tools/compress/eigen_dense.h"

namespace palu::compress {

class CalibrationStats {
 public:
  // Tokens converted to float64 per block (rows of one GEMM update).
  static constexpr int kBlockRows = 512;
  // Edge of the square tiles of G updated in parallel.
  static constexpr int kTileDim = 256;

  // An empty sum for inputs of `dim` features (the model's hidden size d). dim must be ≥ 1.
  static Result<CalibrationStats> create(int dim);

  int dim() const { return dim_; }
  // Number of rows (tokens) added so far.
  int64_t tokens() const { return tokens_; }

  // x: [rows, dim] row-major float32 (one token per row), every value finite.
  // Adds Σ_rows x xᵀ to the sum. rows = 0 is a no-op.
  Status add(const float* x, int64_t rows, int dim);

  // Adds another sum of the same dim (e.g. from a second calibration shard).
  Status merge(const CalibrationStats& other);

  // G: [dim, dim] symmetric float64, Σ_t x_t x_tᵀ.
  Eigen::MatrixXd gram() const;

 private:
  explicit CalibrationStats(int dim);

  int dim_ = 0;
  int64_t tokens_ = 0;
  Eigen::MatrixXd lower_;  // [dim, dim] float64; the lower triangle (with diagonal) holds G
};

}  // namespace palu::compress
