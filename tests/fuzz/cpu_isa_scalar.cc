// The fuzz build's CPU ISA choice, replacing backends/cpu/cpu_isa.cc: always the scalar
// reference kernels, so the sanitizers see plain C++ loops. The engine fuzz target exercises
// request handling, not kernel dispatch (the AVX2 and AVX-512 objects are linked because the
// dispatch tables name them, and never run).
#include "backends/cpu/cpu_isa.h"

namespace palu::backends::cpu {

CpuIsa detect_cpu_isa() { return CpuIsa::kScalar; }
CpuIsa active_cpu_isa() { return CpuIsa::kScalar; }

}  // namespace palu::backends::cpu
