#include "backends/cpu/gemm.h"

#include <omp.h>

#include <algorithm>

#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/kernels.h"

#ifdef PALU_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace palu::backends::cpu {
namespace {

// Below this many multiply-adds, threading costs more than it saves.
constexpr double kMinParallelFlops = 1 << 16;

void own_gemm_nt(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                 int ldc, float beta) {
  const KernelTable& kt = kernels();
  const double work = (double)m * n * k;
  // Split the larger of M and N into tiles; tiles of 4 keep the 4×4 register blocks full.
  if (work < kMinParallelFlops || omp_get_max_threads() == 1) {
    kt.gemm_nt(m, n, k, a, lda, b, ldb, c, ldc, beta);
    return;
  }
  if (m >= n) {
    const int tile = 16;
    const int tiles = (m + tile - 1) / tile;
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < tiles; ++t) {
      const int i0 = t * tile;
      const int mm = std::min(tile, m - i0);
      kt.gemm_nt(mm, n, k, a + (size_t)i0 * lda, lda, b, ldb, c + (size_t)i0 * ldc, ldc, beta);
    }
  } else {
    const int tile = 64;
    const int tiles = (n + tile - 1) / tile;
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < tiles; ++t) {
      const int j0 = t * tile;
      const int nn = std::min(tile, n - j0);
      kt.gemm_nt(m, nn, k, a, lda, b + (size_t)j0 * ldb, ldb, c + j0, ldc, beta);
    }
  }
}

void own_gemm_nn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                 int ldc, float beta) {
  const KernelTable& kt = kernels();
  const bool par = (double)m * n * k >= kMinParallelFlops && m > 1;
#pragma omp parallel for schedule(static) if (par)
  for (int i = 0; i < m; ++i) {
    float* ci = c + (size_t)i * ldc;
    if (beta == 0.f) {
      std::fill(ci, ci + n, 0.f);
    } else if (beta != 1.f) {
      for (int j = 0; j < n; ++j) ci[j] *= beta;
    }
    const float* ai = a + (size_t)i * lda;
    for (int p = 0; p < k; ++p) {
      if (ai[p] != 0.f) kt.axpy(ai[p], b + (size_t)p * ldb, ci, (size_t)n);
    }
  }
}

#ifdef PALU_HAVE_ONEDNN
// oneDNN's GEMM serves every CPU (it dispatches to AVX2 / AVX-512 itself) unless
// PALU_CPU_ISA=scalar asks for the reference path. (It used to follow palu's own kernel ISA,
// so a CPU without AVX-512 ran every GEMM through the scalar loops: ~10x slower prefill.)
bool use_onednn() {
  static const bool on = !cpu_isa_forced_scalar();
  return on;
}

// oneDNN's sgemm splits the work over omp_get_max_threads() parts and assumes the parallel
// region gets that many threads; under OMP_THREAD_LIMIT (or a thread limit set by the host
// application) it gets fewer and the other parts are silently never computed. Keep the calling
// thread's team size within the limit (a per-thread setting, checked on every call).
void clamp_to_thread_limit() {
  const int limit = omp_get_thread_limit();
  if (omp_get_max_threads() > limit) omp_set_num_threads(limit);
}
#endif

}  // namespace

void gemm_nt(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
             int ldc, float beta) {
  if (m <= 0 || n <= 0) return;
#ifdef PALU_HAVE_ONEDNN
  if (use_onednn()) {
    clamp_to_thread_limit();
    if (dnnl_sgemm('N', 'T', m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc) == dnnl_success) return;
  }
#endif
  own_gemm_nt(m, n, k, a, lda, b, ldb, c, ldc, beta);
}

void gemm_nn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
             int ldc, float beta) {
  if (m <= 0 || n <= 0) return;
#ifdef PALU_HAVE_ONEDNN
  if (use_onednn()) {
    clamp_to_thread_limit();
    if (dnnl_sgemm('N', 'N', m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc) == dnnl_success) return;
  }
#endif
  own_gemm_nn(m, n, k, a, lda, b, ldb, c, ldc, beta);
}

const char* gemm_backend_name() {
#ifdef PALU_HAVE_ONEDNN
  if (use_onednn()) return "onednn";
#endif
  switch (kernels().isa) {
    case CpuIsa::kScalar: return "palu-scalar";
    case CpuIsa::kAvx2: return "palu-avx2";
    case CpuIsa::kAvx512: return "palu-avx512";
  }
  return "palu";
}

void set_num_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  omp_set_num_threads(std::min(n, omp_get_thread_limit()));
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace palu::backends::cpu
