#include "backends/cpu/cpu_isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace palu::backends::cpu {

#if defined(__x86_64__) || defined(__i386__)
namespace {
// F16C (CPUID leaf 1, ECX bit 29) straight from CPUID: clang's __builtin_cpu_supports does not
// know the name "f16c".
bool has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & (1u << 29)) != 0;
}

CpuIsa probe_cpu_isa() {
  __builtin_cpu_init();
  // __builtin_cpu_supports("avx2" / "avx512f") also checks that the OS saves the YMM / ZMM state
  // (OSXSAVE + XGETBV) on GCC and clang.
  const bool base = __builtin_cpu_supports("fma") && has_f16c();
  if (base && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return CpuIsa::kAvx512;
  }
  if (base && __builtin_cpu_supports("avx2")) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}
}  // namespace
#endif

CpuIsa detect_cpu_isa() {
#if defined(__x86_64__) || defined(__i386__)
  static const CpuIsa isa = probe_cpu_isa();
  return isa;
#else
  return CpuIsa::kScalar;
#endif
}

Result<CpuIsa> cap_cpu_isa(const char* value, CpuIsa detected) {
  if (value == nullptr || *value == '\0') return detected;
  for (CpuIsa cap : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (std::strcmp(value, cpu_isa_name(cap)) == 0) return (int)cap < (int)detected ? cap : detected;
  }
  return invalid_argument(std::string("PALU_CPU_ISA must be scalar, avx2 or avx512, found \"") +
                          value + "\"");
}

bool cpu_isa_forced_scalar() {
  const char* env = std::getenv("PALU_CPU_ISA");
  return env != nullptr && std::strcmp(env, "scalar") == 0;
}

CpuIsa active_cpu_isa() {
  const CpuIsa detected = detect_cpu_isa();
  Result<CpuIsa> isa = cap_cpu_isa(std::getenv("PALU_CPU_ISA"), detected);
  if (isa.is_ok()) return *isa;
  // No Status path here (the kernel tables are picked on first use): one line, then the CPUID
  // choice, so a typo does not silently run other kernels than asked for without a word.
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    std::fprintf(stderr, "palu: %s; ignoring it, using the detected ISA (%s)\n",
                 isa.status().message().c_str(), cpu_isa_name(detected));
  }
  return detected;
}

}  // namespace palu::backends::cpu
