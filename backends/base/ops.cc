#include "backends/base/device.h"
#include "backends/base/ops.h"

namespace palu::backends {

const char* op_kind_name(OpKind op) {
  switch (op) {
    case OpKind::kMatMul: return "matmul";
    case OpKind::kRmsNorm: return "rms_norm";
    case OpKind::kRope: return "rope";
    case OpKind::kSiluMul: return "silu_mul";
    case OpKind::kSoftmax: return "softmax";
    case OpKind::kAttentionPrefill: return "attention_prefill";
    case OpKind::kAttentionDecode: return "attention_decode";
    case OpKind::kLatentAttentionDecode: return "latent_attention_decode";
    case OpKind::kCount: break;
  }
  return "?";
}

const char* device_kind_name(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::kCpu: return "cpu";
    case DeviceKind::kCuda: return "cuda";
    case DeviceKind::kVulkan: return "vulkan";
  }
  return "?";
}

}  // namespace palu::backends
