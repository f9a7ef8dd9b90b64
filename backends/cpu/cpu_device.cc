#include "backends/cpu/cpu_device.h"

#include <unistd.h>

#include <string>

#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/gemm.h"

namespace palu::backends::cpu {
namespace {

class CpuDevice final : public Device {
 public:
  CpuDevice() {
    info_.kind = DeviceKind::kCpu;
    info_.index = 0;
    info_.name = std::string("cpu (") + cpu_isa_name(active_cpu_isa()) + ", gemm " +
                 gemm_backend_name() + ", " + std::to_string(num_threads()) + " threads)";
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page = sysconf(_SC_PAGE_SIZE);
    info_.memory_bytes = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
  }
  const DeviceInfo& info() const override { return info_; }
  bool supports(OpKind op) const override {
    switch (op) {
      case OpKind::kMatMul:
      case OpKind::kRmsNorm:
      case OpKind::kRope:
      case OpKind::kSiluMul:
      case OpKind::kSoftmax:
      case OpKind::kAttentionPrefill:
      case OpKind::kAttentionDecode:
        return true;
      default:
        return false;
    }
  }

 private:
  DeviceInfo info_;
};

}  // namespace

std::unique_ptr<Device> make_cpu_device() { return std::make_unique<CpuDevice>(); }

}  // namespace palu::backends::cpu
