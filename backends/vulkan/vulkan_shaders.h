// The compute shaders of backends/vulkan/shaders as SPIR-V, compiled by glslc at build time and
// embedded by embed_spirv.cmake (the generated vulkan_shaders.cc). Immutable tables.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace palu::backends::vulkan {

struct SpirvModule {
  const char* name;       // the shader's file name without .comp, e.g. "matmul"
  const uint32_t* words;  // SPIR-V
  size_t word_count;
};

extern const SpirvModule kSpirvModules[];
extern const size_t kSpirvModuleCount;

// The module named `name`, or null.
inline const SpirvModule* find_spirv(std::string_view name) {
  for (size_t i = 0; i < kSpirvModuleCount; ++i) {
    if (name == kSpirvModules[i].name) return &kSpirvModules[i];
  }
  return nullptr;
}

}  // namespace palu::backends::vulkan
