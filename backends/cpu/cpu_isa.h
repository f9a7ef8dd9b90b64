// CPU instruction-set detection. Each vector kernel set lives in its own translation units
// (kernels_avx2.cc etc. compiled with -mavx2 -mfma -mf16c; kernels_avx512.cc etc. with
// -mavx512*) and is only called when CPUID says the CPU has it, so one binary runs everywhere:
// AVX-512 CPUs take the AVX-512 kernels, AVX2 + FMA + F16C CPUs (most desktops and laptops) the
// AVX2 ones, anything else the scalar reference.
//
// PALU_CPU_ISA caps the choice (never raises it above what CPUID reports): `scalar` (the
// reference kernels, oneDNN's GEMM off too), `avx2` (an AVX-512 CPU runs the AVX2 kernels:
// tests, comparisons) or `avx512` (no cap). Any other value is reported once on stderr, naming
// the value and the accepted ones, and ignored.
#pragma once

#include "backends/base/status.h"

namespace palu::backends::cpu {

// Ordered: each ISA includes what the ones before it need.
enum class CpuIsa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// "scalar", "avx2", "avx512" (inline: the fuzz build's cpu_isa_scalar.cc replaces cpu_isa.cc).
inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "?";
}
// What this CPU supports (CPUID), ignoring the environment override.
CpuIsa detect_cpu_isa();
// The ISA the kernels use: detect_cpu_isa() capped by PALU_CPU_ISA (read on every call; an
// unknown value is reported once and ignored).
CpuIsa active_cpu_isa();
// A PALU_CPU_ISA value applied to a detected ISA: null or "" → detected; "scalar", "avx2",
// "avx512" → the lesser of that and detected; anything else → INVALID_ARGUMENT naming the value
// and the accepted ones.
Result<CpuIsa> cap_cpu_isa(const char* value, CpuIsa detected);
// PALU_CPU_ISA=scalar: the reference kernels everywhere, oneDNN's GEMM included. Without it a
// CPU takes oneDNN's GEMM (which picks its own AVX2 / AVX-512 code) whatever palu's kernels are.
bool cpu_isa_forced_scalar();

}  // namespace palu::backends::cpu
