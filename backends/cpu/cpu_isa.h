// CPU instruction-set detection. The AVX-512 kernels live in their own translation unit
// (kernels_avx512.cc, compiled with -mavx512*) and are only called when CPUID says the CPU
// has them, so one binary runs everywhere. PALU_CPU_ISA=scalar forces the reference kernels.
#pragma once

namespace palu::backends::cpu {

enum class CpuIsa { kScalar = 0, kAvx512 = 1 };

const char* cpu_isa_name(CpuIsa isa);
// What this CPU supports (CPUID), ignoring the environment override.
CpuIsa detect_cpu_isa();
// The ISA the kernels use: detect_cpu_isa() unless PALU_CPU_ISA=scalar asks for less.
CpuIsa active_cpu_isa();
// PALU_CPU_ISA=scalar: the reference kernels everywhere, oneDNN's GEMM included. Without it a
// CPU lacking AVX-512 still takes oneDNN's GEMM (which picks its own AVX2 / AVX code).
bool cpu_isa_forced_scalar();

}  // namespace palu::backends::cpu
