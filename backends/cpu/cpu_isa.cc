#include "backends/cpu/cpu_isa.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace palu::backends::cpu {

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "?";
}

#if defined(__x86_64__) || defined(__i386__)
namespace {
// F16C (CPUID leaf 1, ECX bit 29) straight from CPUID: clang's __builtin_cpu_supports does not
// know the name "f16c".
bool has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & (1u << 29)) != 0;
}
}  // namespace
#endif

CpuIsa detect_cpu_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && has_f16c()) {
    return CpuIsa::kAvx512;
  }
#endif
  return CpuIsa::kScalar;
}

bool cpu_isa_forced_scalar() {
  const char* env = std::getenv("PALU_CPU_ISA");
  return env != nullptr && std::strcmp(env, "scalar") == 0;
}

CpuIsa active_cpu_isa() { return cpu_isa_forced_scalar() ? CpuIsa::kScalar : detect_cpu_isa(); }

}  // namespace palu::backends::cpu
