#include "runtime/device_models.h"

#include "backends/cpu/cpu_isa.h"
#include "tools/kv_session.h"

#if defined(PALU_WITH_CUDA_MODEL)
#include "backends/cuda/cuda_model.h"
#endif
#if defined(PALU_WITH_VULKAN_MODEL)
#include "backends/vulkan/vulkan_model.h"
#endif

namespace palu::runtime {
namespace {

// The CPU reference: the pooled cache path (latents for compressed models, full rows
// otherwise), exactly what palud runs.
class CpuSequence final : public model::DeviceSequence {
 public:
  explicit CpuSequence(tools::KvSession s) : s_(std::move(s)) {}
  Status forward(const int32_t* tokens, int n, model::LogitsMode mode, float* logits) override {
    return s_.step(tokens, n, mode, logits);
  }
  int size() const override { return s_.size(); }
  int capacity() const override { return s_.capacity(); }
  Status truncate(int n) override { return s_.truncate(n); }
  size_t cache_bytes() const override { return s_.bytes(); }
  Result<cache::SequenceImage> export_image(const cache::CacheLayout& layout) const override {
    PALU_RETURN_IF_ERROR(check_layout(layout));
    return s_.export_image();
  }
  Status import_image(const cache::CacheLayout& layout, const cache::SequenceImage& image) override {
    PALU_RETURN_IF_ERROR(check_layout(layout));
    return s_.import_image(image);
  }

 private:
  Status check_layout(const cache::CacheLayout& layout) const {
    PALU_ASSIGN_OR_RETURN(const cache::CacheLayout* own, s_.layout());
    if (cache::layout_hash(layout) != cache::layout_hash(*own)) {
      return invalid_argument("cache layout " + layout.describe() + " is not this sequence's (" + own->describe() + ")");
    }
    return Status::ok();
  }
  tools::KvSession s_;
};

class CpuModel final : public model::DeviceModel {
 public:
  CpuModel(const model::LlamaModel& m, model::CacheOptions cache) : m_(m), cache_(cache) {
    info_.kind = backends::DeviceKind::kCpu;
    info_.name = std::string("cpu (") + backends::cpu::cpu_isa_name(backends::cpu::active_cpu_isa()) + ")";
  }
  const backends::DeviceInfo& device() const override { return info_; }
  size_t weight_bytes() const override { return m_.weight_bytes(); }
  Result<std::unique_ptr<model::DeviceSequence>> new_sequence(int max_tokens) override {
    if (max_tokens <= 0 || max_tokens > m_.config().max_position_embeddings) {
      return invalid_argument("new_sequence: max_tokens " + std::to_string(max_tokens) + " is outside 1.." +
                              std::to_string(m_.config().max_position_embeddings) + " (the model's context)");
    }
    PALU_ASSIGN_OR_RETURN(tools::KvSession s, tools::KvSession::create(m_, max_tokens, cache_));
    return std::unique_ptr<model::DeviceSequence>(new CpuSequence(std::move(s)));
  }
  std::string describe() const override {
    auto s = tools::KvSession::create(m_, 1, cache_);
    return info_.name + ", f32 weights, " + (s.is_ok() ? s.value().describe() : std::string("cache ?"));
  }

 private:
  const model::LlamaModel& m_;
  model::CacheOptions cache_;
  backends::DeviceInfo info_;
};

}  // namespace

Result<backends::DeviceKind> parse_backend(std::string_view name) {
  if (name == "cpu") return backends::DeviceKind::kCpu;
  if (name == "cuda") return backends::DeviceKind::kCuda;
  if (name == "vulkan") return backends::DeviceKind::kVulkan;
  return invalid_argument("unknown backend '" + std::string(name) + "': use cpu, cuda or vulkan");
}

std::vector<std::string> device_model_backends() {
  std::vector<std::string> v{"cpu"};
#if defined(PALU_WITH_CUDA_MODEL)
  v.push_back("cuda");
#endif
#if defined(PALU_WITH_VULKAN_MODEL)
  v.push_back("vulkan");
#endif
  return v;
}

Result<std::unique_ptr<model::DeviceModel>> make_device_model(const model::LlamaModel& model,
                                                              backends::DeviceKind kind,
                                                              const model::DeviceModelOptions& options) {
  switch (kind) {
    case backends::DeviceKind::kCpu: {
      if (options.weights == model::DeviceModelOptions::Weights::kF16) {
        return unimplemented("cpu: f16 weights are not supported (the CPU reference computes with f32 weights; use --weights auto or f32)");
      }
      if (options.device_index != 0) {
        return invalid_argument("cpu: there is one CPU device (index 0), asked for " +
                                std::to_string(options.device_index));
      }
      // Validate the cache options once, here, so the error comes before any work.
      PALU_RETURN_IF_ERROR(model.cache_layout_spec(options.cache).status());
      return std::unique_ptr<model::DeviceModel>(new CpuModel(model, options.cache));
    }
    case backends::DeviceKind::kCuda:
#if defined(PALU_WITH_CUDA_MODEL)
      if (options.weights == model::DeviceModelOptions::Weights::kF32) {
        return unimplemented("cuda: f32 weights are not supported (the CUDA model uploads f16 weights; use --weights auto or f16)");
      }
      return backends::cuda::make_cuda_model(model, options);
#else
      return failed_precondition("backend cuda is not in this build of palu "
                                 "(configure with -DPALU_CUDA=ON and the CUDA Toolkit installed)");
#endif
    case backends::DeviceKind::kVulkan:
#if defined(PALU_WITH_VULKAN_MODEL)
    {
      backends::vulkan::VulkanModelOptions vo;
      vo.weights = options.weights == model::DeviceModelOptions::Weights::kF32   ? backends::vulkan::VulkanModelOptions::Weights::kF32
                   : options.weights == model::DeviceModelOptions::Weights::kF16 ? backends::vulkan::VulkanModelOptions::Weights::kF16
                                                                                 : backends::vulkan::VulkanModelOptions::Weights::kAuto;
      return backends::vulkan::make_vulkan_model(model, options, vo);
    }
#else
      return failed_precondition("backend vulkan is not in this build of palu "
                                 "(install libvulkan-dev and glslc, configure with -DPALU_VULKAN=ON)");
#endif
  }
  return internal_error("make_device_model: unknown device kind");
}

}  // namespace palu::runtime
