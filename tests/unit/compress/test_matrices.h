// Seeded random matrices shared by the compress tests.
#pragma once

#include <cstdint>
#include <random>

#include "tools/compress/eigen_dense.h"

namespace palu::compress::testing {

// [rows, cols] of independent N(0, 1) entries, the same for the same seed.
inline Eigen::MatrixXd random_matrix(int rows, int cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  Eigen::MatrixXd m(rows, cols);
  for (int j = 0; j < cols; ++j)
    for (int i = 0; i < rows; ++i) m(i, j) = n(rng);
  return m;
}

}  // namespace palu::compress::testing
