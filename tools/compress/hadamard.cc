#include "tools/compress/hadamard.h"

#include <cmath>
#include <numbers>
#include <random>
#include <vector>

namespace palu::compress {
namespace {

bool is_prime(int64_t q) {
  if (q < 2) return false;
  for (int64_t p = 2; p * p <= q; ++p) {
    if (q % p == 0) return false;
  }
  return true;
}

// Base order m (1, 2 or a Paley order) and the Paley parameters for it.
struct BaseOrder {
  int m = 0;
  int paley = 0;  // 0: none (m ∈ {1, 2}), 1: Paley I, 2: Paley II
  int q = 0;
};

BaseOrder base_order(int m) {
  if (m == 1 || m == 2) return {m, 0, 0};
  if (m >= 4 && is_prime(m - 1) && (m - 1) % 4 == 3) return {m, 1, m - 1};
  if (m >= 12 && m % 2 == 0 && is_prime(m / 2 - 1) && (m / 2 - 1) % 4 == 1) {
    return {m, 2, m / 2 - 1};
  }
  return {};
}

// n = m · 2^a with the largest a whose m is a base order; m = 0 when none.
BaseOrder decompose(int n, int* doublings) {
  int a = 0;
  while (n % (int64_t{2} << a) == 0) ++a;  // n = odd · 2^a_max
  for (; a >= 0; --a) {
    const BaseOrder b = base_order(n >> a);
    if (b.m != 0) {
      *doublings = a;
      return b;
    }
  }
  *doublings = 0;
  return {};
}

// Jacobsthal matrix C_ij = χ(j − i) mod q, [q, q], entries 0 / ±1.
Eigen::MatrixXd jacobsthal(int q) {
  std::vector<int> chi(q, -1);
  chi[0] = 0;
  for (int x = 1; x < q; ++x) chi[(static_cast<int64_t>(x) * x) % q] = 1;
  Eigen::MatrixXd c(q, q);
  for (int i = 0; i < q; ++i)
    for (int j = 0; j < q; ++j) c(i, j) = chi[((j - i) % q + q) % q];
  return c;
}

// ±1 Hadamard matrix of a base order (unnormalised).
Eigen::MatrixXd base_matrix(const BaseOrder& b) {
  if (b.m == 1) return Eigen::MatrixXd::Ones(1, 1);
  if (b.m == 2) return (Eigen::MatrixXd(2, 2) << 1, 1, 1, -1).finished();
  const int q = b.q;
  const Eigen::MatrixXd c = jacobsthal(q);
  Eigen::MatrixXd s = Eigen::MatrixXd::Zero(q + 1, q + 1);
  s.block(1, 1, q, q) = c;
  s.row(0).tail(q).setOnes();
  if (b.paley == 1) {
    // Skew: S = [[0, 1ᵀ], [−1, C]], S Sᵀ = q I; H = I + S.
    s.col(0).tail(q).setConstant(-1.0);
    return Eigen::MatrixXd::Identity(q + 1, q + 1) + s;
  }
  // Paley II, symmetric S = [[0, 1ᵀ], [1, C]].
  s.col(0).tail(q).setOnes();
  const Eigen::Matrix2d plus = (Eigen::Matrix2d() << 1, 1, 1, -1).finished();
  const Eigen::Matrix2d zero = (Eigen::Matrix2d() << 1, -1, -1, -1).finished();
  Eigen::MatrixXd h(2 * (q + 1), 2 * (q + 1));
  for (int i = 0; i <= q; ++i)
    for (int j = 0; j <= q; ++j)
      h.block<2, 2>(2 * i, 2 * j) = s(i, j) == 0.0 ? zero : (s(i, j) * plus).eval();
  return h;
}

Status check_dim(int n, const char* what) {
  if (n < 1 || n > kMaxRotationDim) {
    return invalid_argument(std::string(what) + ": n must be in [1, " +
                            std::to_string(kMaxRotationDim) + "], got " + std::to_string(n));
  }
  return Status::ok();
}

}  // namespace

std::string hadamard_construction(int n) {
  if (n < 1) return "";
  int a = 0;
  const BaseOrder b = decompose(n, &a);
  if (b.m == 0) return "";
  std::string base;
  if (b.paley == 1) base = "paley1(q=" + std::to_string(b.q) + ")";
  if (b.paley == 2) base = "paley2(q=" + std::to_string(b.q) + ")";
  if (b.m == 2) ++a;  // H_2 is itself one Sylvester step
  const std::string syl = "sylvester(2^" + std::to_string(a) + ")";
  if (base.empty()) return syl;
  return a == 0 ? base : base + " x " + syl;
}

Result<Eigen::MatrixXd> hadamard(int n) {
  PALU_RETURN_IF_ERROR(check_dim(n, "hadamard"));
  int a = 0;
  const BaseOrder b = decompose(n, &a);
  if (b.m == 0) {
    return unimplemented("hadamard: no construction for n = " + std::to_string(n) +
                         " (need n = 2^a * m, m in {1, 2, q+1 for prime q = 3 mod 4, 2(q+1) for "
                         "prime q = 1 mod 4}); use latent_rotation for the orthonormal fallback");
  }
  // Sylvester doubling of the base: H ← [[H, H], [H, −H]], a times.
  Eigen::MatrixXd h = base_matrix(b);
  for (int i = 0; i < a; ++i) {
    const Eigen::Index m = h.rows();
    Eigen::MatrixXd next(2 * m, 2 * m);
    next.topLeftCorner(m, m) = h;
    next.topRightCorner(m, m) = h;
    next.bottomLeftCorner(m, m) = h;
    next.bottomRightCorner(m, m) = -h;
    h = std::move(next);
  }
  h /= std::sqrt(static_cast<double>(n));
  return h;
}

Result<Eigen::MatrixXd> random_orthogonal(int n, uint64_t seed) {
  PALU_RETURN_IF_ERROR(check_dim(n, "random_orthogonal"));
  std::mt19937_64 rng(seed);
  // Uniform in (0, 1] from the top 53 bits: never 0, so log() is finite.
  auto uniform = [&rng]() { return (static_cast<double>(rng() >> 11) + 1.0) * 0x1.0p-53; };
  Eigen::MatrixXd g(n, n);
  double* data = g.data();
  const int64_t count = static_cast<int64_t>(n) * n;
  for (int64_t i = 0; i < count; i += 2) {
    // Box–Muller: two independent N(0, 1) from two uniforms.
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double t = 2.0 * std::numbers::pi * uniform();
    data[i] = r * std::cos(t);
    if (i + 1 < count) data[i + 1] = r * std::sin(t);
  }
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  Eigen::MatrixXd q = qr.householderQ();
  // Sign fix so Q is Haar distributed and does not depend on the QR's sign convention.
  const Eigen::MatrixXd& r = qr.matrixQR();
  for (int j = 0; j < n; ++j) {
    if (r(j, j) < 0.0) q.col(j) *= -1.0;
  }
  return q;
}

Result<Rotation> latent_rotation(int n, uint64_t seed) {
  PALU_RETURN_IF_ERROR(check_dim(n, "latent_rotation"));
  Rotation out;
  const std::string construction = hadamard_construction(n);
  if (!construction.empty()) {
    PALU_ASSIGN_OR_RETURN(out.q, hadamard(n));
    out.kind = RotationKind::kHadamard;
    out.construction = construction;
    return out;
  }
  PALU_ASSIGN_OR_RETURN(out.q, random_orthogonal(n, seed));
  out.kind = RotationKind::kRandomOrthogonal;
  out.construction = "random_orthogonal(seed=" + std::to_string(seed) + ")";
  return out;
}

Status fold_rotation(const Eigen::MatrixXd& q, Eigen::MatrixXd* a, Eigen::MatrixXd* b) {
  if (a == nullptr || b == nullptr) return invalid_argument("fold_rotation: A or B is null");
  const Eigen::Index r = q.rows();
  if (r < 1 || q.cols() != r || a->rows() != r || b->cols() != r) {
    return invalid_argument("fold_rotation: need Q [r, r], A [r, d], B [out_g, r]; got Q [" +
                            std::to_string(q.rows()) + ", " + std::to_string(q.cols()) + "], A [" +
                            std::to_string(a->rows()) + ", " + std::to_string(a->cols()) +
                            "], B [" + std::to_string(b->rows()) + ", " +
                            std::to_string(b->cols()) + "]");
  }
  *a = q * *a;              // A' = Q A: [r, d]
  *b = *b * q.transpose();  // B' = B Qᵀ: [out_g, r]
  return Status::ok();
}

}  // namespace palu::compress
