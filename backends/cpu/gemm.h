// Multi-threaded float32 GEMM for the CPU backend: oneDNN's sgemm when palu is built with
// oneDNN, otherwise palu's own blocked kernels (kernels().gemm_nt) spread over OpenMP threads.
//
// Row-major throughout. Thread-safety: reentrant; each call uses the OpenMP thread team.
#pragma once

namespace palu::backends::cpu {

// C[M,N] = A[M,K] · B[N,K]ᵀ + beta·C    (B is a weight matrix stored out × in)
void gemm_nt(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
             int ldc, float beta = 0.f);
// C[M,N] = A[M,K] · B[K,N] + beta·C
void gemm_nn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
             int ldc, float beta = 0.f);

// Which implementation gemm_* use: "onednn", or palu's own kernels ("palu-scalar", "palu-avx2",
// "palu-avx512").
const char* gemm_backend_name();

// Threads used by the CPU backend (OpenMP, and through it oneDNN). n ≤ 0: all cores.
void set_num_threads(int n);
int num_threads();

}  // namespace palu::backends::cpu
