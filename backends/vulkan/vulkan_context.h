// VulkanContext: one logical Vulkan device opened for compute — the physical device picked by
// index (select_vulkan_devices orders them: discrete GPUs first; PALU_VULKAN_DEVICE=N moves the
// default), a compute queue, memory allocation with exact byte accounting and an optional
// limit, buffer upload/download, compute pipelines made from the embedded SPIR-V (one pipeline
// cache, pipelines memoised per shader and specialization constants), and a reusable command
// buffer (Recorder).
//
// Buffers are handed to shaders by device address (VK_KHR_buffer_device_address, core in 1.2):
// push constants carry the addresses, so there are no descriptor sets to allocate or update per
// dispatch. Devices without buffer device addresses or Vulkan 1.2 are not used (listed with the
// reason in the log).
//
// Ownership: a VulkanBuffer frees its memory when destroyed and must not outlive its context.
// Thread-safety: alloc/free and the accounting are thread-safe; one Recorder at a time holds
// the context's command buffer and queue, from its first recorded command until submit() (or
// its destruction). upload()/download() through staging take the same lock, so they are called
// with no Recorder of the same thread recording (FAILED_PRECONDITION instead of a deadlock).
// Errors: every Vulkan failure comes back as a Status naming the call and the VkResult; memory
// exhaustion (the driver's or the limit's) is RESOURCE_EXHAUSTED with the byte counts.
// Hangs: every fence wait is bounded by timeout_ms() (PALU_VULKAN_TIMEOUT_MS; default 30 s on
// GPUs, 300 s on CPU drivers). A wait that runs out, or a lost device, marks the context hung:
// that call and every later call (alloc, upload, download, dispatch, submit) return INTERNAL
// naming the operation that hung, and nothing the device may still be using is freed or reused
// — buffers, pipelines, the command buffer and the device itself are leaked on purpose (freeing
// them under a running submission crashes drivers). Make a new context to carry on.
// Exit: destroy contexts before exit() reaches the driver's own exit handlers (NVIDIA's ICD
// registers them when vkCreateInstance loads it): a static holding a context must be initialised
// after the context is made, never declared empty first and filled in later.
// Debugging: PALU_VULKAN_TRACE=1 prints each pipeline build, dispatch and submission to stderr.
// PALU_VULKAN_QUEUE_FAMILY=N uses queue family N (when it has compute) instead of the default
// choice (a compute-only family where there is one); for A/B timing.
// PALU_VULKAN_PIPELINE_STATS=1 prints the driver's statistics of each pipeline built (register
// count, shared memory, ...; VK_KHR_pipeline_executable_properties, where the device has it).
// GPU timing: Recorder::mark writes timestamps (a query pool of the context) where the queue
// has them (timestamps()); the bench's --gpu-time reads them.
#pragma once

#include <vulkan/vulkan.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backends/base/device.h"
#include "backends/base/status.h"

namespace palu::backends::vulkan {

class VulkanContext;

// One physical device as found by select_vulkan_devices.
struct VulkanDeviceEntry {
  VkPhysicalDevice physical = VK_NULL_HANDLE;
  VkPhysicalDeviceProperties props{};
  uint32_t queue_family = 0;
  size_t device_local_bytes = 0;
  std::string unusable;  // non-empty: why palu cannot compute on it
};

// Usable devices in preference order (discrete, integrated, virtual, CPU, other; enumeration
// order within a type), then the default index honouring PALU_VULKAN_DEVICE.
struct VulkanInstanceDevices {
  VkInstance instance = VK_NULL_HANDLE;  // owned by the caller when devices are returned
  std::vector<VulkanDeviceEntry> devices;
  std::vector<std::string> log;
};
VulkanInstanceDevices select_vulkan_devices();
// PALU_VULKAN_DEVICE as an index (−1 when unset or not a number).
int vulkan_device_from_env();

enum class MemoryKind {
  kDevice,     // device-local (weights, caches, activations)
  kHostRead,   // host-visible, cached when possible (read-back)
  kHostWrite,  // host-visible, coherent (small per-step inputs the device reads)
  kStaging,    // host-visible, coherent, in host memory where possible and cached (the
               // context's upload/download staging; not charged to the memory limit)
  kInline,     // host-visible, coherent, device-local where possible (the BAR window): the
               // Recorder's inline data (not charged to the memory limit)
};

class VulkanBuffer {
 public:
  VulkanBuffer() = default;
  ~VulkanBuffer();
  VulkanBuffer(const VulkanBuffer&) = delete;
  VulkanBuffer& operator=(const VulkanBuffer&) = delete;
  VulkanBuffer(VulkanBuffer&& o) noexcept { *this = std::move(o); }
  VulkanBuffer& operator=(VulkanBuffer&& o) noexcept;

  bool valid() const { return buffer_ != VK_NULL_HANDLE; }
  size_t bytes() const { return bytes_; }
  // Device address of byte `offset` (what shaders receive).
  uint64_t address(size_t offset = 0) const { return address_ + offset; }
  VkBuffer handle() const { return buffer_; }
  // Host pointer when the memory is host-visible, else null.
  void* mapped() const { return mapped_; }

 private:
  friend class VulkanContext;
  void reset();
  VulkanContext* ctx_ = nullptr;
  VkBuffer buffer_ = VK_NULL_HANDLE;
  VkDeviceMemory memory_ = VK_NULL_HANDLE;
  size_t bytes_ = 0;
  size_t charged_bytes_ = 0;  // the allocation's size (VkMemoryRequirements)
  uint64_t address_ = 0;
  void* mapped_ = nullptr;
  uint32_t heap_ = 0;
  bool budgeted_ = true;  // charged to the context's memory limit
};

class Recorder;

class VulkanContext {
 public:
  // Opens the device_index-th usable device of select_vulkan_devices() (−1: the default one).
  static Result<std::unique_ptr<VulkanContext>> create(int device_index = -1);
  ~VulkanContext();
  VulkanContext(const VulkanContext&) = delete;
  VulkanContext& operator=(const VulkanContext&) = delete;

  const DeviceInfo& info() const { return info_; }
  const VkPhysicalDeviceProperties& properties() const { return props_; }
  uint32_t max_shared_bytes() const { return props_.limits.maxComputeSharedMemorySize; }
  // Subgroup size, and whether compute shaders have subgroup arithmetic (subgroupAdd).
  uint32_t subgroup_size() const { return subgroup_size_; }
  bool subgroup_arithmetic() const { return subgroup_arithmetic_; }
  // Whether shaders may do f16 arithmetic (shaderFloat16, enabled when the device has it).
  bool shader_float16() const { return shader_float16_; }
  // Whether shaders may use VK_NV_cooperative_matrix with 16×16×16 f16·f16 + f32 → f32 subgroup
  // matrices (the tensor cores on NVIDIA): the extension, its cooperativeMatrix feature,
  // shaderFloat16, vulkanMemoryModel, storageBuffer16BitAccess, subgroup size 32 and that
  // configuration among the driver's, all enabled at device creation. PALU_VULKAN_COOPMAT=0
  // turns it off; =1 makes it the automatic choice of the kernels that have a coopmat variant
  // for every shape (prefer_cooperative_matrix; unset: only where it was measured faster).
  // cooperative_matrix_note() says which configuration was picked, or why there is none.
  bool cooperative_matrix() const { return coopmat_; }
  bool prefer_cooperative_matrix() const { return coopmat_ && coopmat_preferred_; }
  const std::string& cooperative_matrix_note() const { return coopmat_note_; }
  // maxComputeWorkGroupInvocations and maxComputeWorkGroupSize[0].
  uint32_t max_workgroup_x() const {
    return std::min(props_.limits.maxComputeWorkGroupInvocations,
                    props_.limits.maxComputeWorkGroupSize[0]);
  }
  bool is_cpu() const { return props_.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU; }
  uint32_t queue_family() const { return queue_family_; }
  // Whether the queue writes timestamps (its family's timestampValidBits > 0) and the tick in ns
  // (VkPhysicalDeviceLimits::timestampPeriod).
  bool timestamps() const { return timestamp_valid_bits_ > 0; }
  double timestamp_period_ns() const { return props_.limits.timestampPeriod; }

  // A buffer of `bytes` (rounded up to 16) for `what` (named in errors).
  Result<VulkanBuffer> alloc(size_t bytes, MemoryKind kind, const std::string& what);
  // Bytes held by live allocations of this context (the drivers' sizes, exactly).
  size_t allocated_bytes() const;
  // Refuse allocations that would take the bytes held past `bytes` (0: no limit other than the
  // heap). The staging buffer (16 MiB of host memory on discrete GPUs, made at the first
  // upload/download that needs it) is not charged: the limit budgets what models hold. A budget
  // hook for the daemon and for tests of the out-of-memory path.
  void set_memory_limit_bytes(size_t bytes);
  size_t memory_limit_bytes() const;

  // Host → buffer and buffer → host (through a staging buffer when not host-visible).
  Status upload(const VulkanBuffer& dst, size_t offset, const void* src, size_t bytes);
  Status download(const VulkanBuffer& src, size_t offset, void* dst, size_t bytes);

  // The bound of every fence wait, in ms (the constructor reads PALU_VULKAN_TIMEOUT_MS).
  uint64_t timeout_ms() const { return timeout_ms_.load(); }
  void set_timeout_ms(uint64_t ms) { timeout_ms_.store(ms); }
  // Whether a wait ran out or the device was lost; then hung_status() is what every call
  // returns.
  bool hung() const { return hung_.load(); }
  Status hung_status() const;

  // Test seam for the hang path: the next submission waits on the device for a host signal
  // (a timeline semaphore) that only release_submit_gate_for_testing() gives, so its fence
  // wait runs out deterministically. FAILED_PRECONDITION where timeline semaphores are absent.
  Status gate_next_submit_for_testing();
  void release_submit_gate_for_testing();

 private:
  friend class Recorder;
  friend class VulkanBuffer;
  VulkanContext() = default;
  Status init(const VulkanInstanceDevices& found, int index);
  void release(VulkanBuffer* b);
  Result<VkPipeline> pipeline(const std::string& shader, const std::vector<uint32_t>& spec);
  void print_pipeline_stats(VkPipeline p, const std::string& shader,
                            const std::vector<uint32_t>& spec);
  Status ensure_staging(size_t bytes);
  Status copy_buffer(VkBuffer src, size_t src_off, VkBuffer dst, size_t dst_off, size_t bytes,
                     const char* what);
  // Submits cmd_ with fence_ and waits at most timeout_ms(); marks the context hung on a
  // timeout or a lost device. Called with queue_mu_ held.
  Status submit_and_wait(const std::string& what);
  Status mark_hung(Status s);
  // FAILED_PRECONDITION when this thread's Recorder holds the queue (a staging copy would
  // deadlock), else ok.
  Status check_queue_free(const char* what) const;

  DeviceInfo info_;
  VkPhysicalDeviceProperties props_{};
  VkPhysicalDeviceMemoryProperties mem_props_{};
  uint32_t subgroup_size_ = 0;
  bool subgroup_arithmetic_ = false;
  bool shader_float16_ = false;
  bool coopmat_ = false;
  bool coopmat_preferred_ = false;
  std::string coopmat_note_;
  uint32_t timestamp_valid_bits_ = 0;
  bool pipeline_stats_ = false;              // PALU_VULKAN_PIPELINE_STATS and the extension enabled
  VkQueryPool query_pool_ = VK_NULL_HANDLE;  // kMaxMarks timestamps, made at the first mark
  VkInstance instance_ = VK_NULL_HANDLE;
  VkPhysicalDevice physical_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  uint32_t queue_family_ = 0;
  VkCommandPool pool_ = VK_NULL_HANDLE;
  VkCommandBuffer cmd_ = VK_NULL_HANDLE;
  VkFence fence_ = VK_NULL_HANDLE;
  VkPipelineCache pipeline_cache_ = VK_NULL_HANDLE;
  VkPipelineLayout layout_ = VK_NULL_HANDLE;
  bool timeline_ = false;              // timeline semaphores enabled (the test gate)
  VkSemaphore gate_ = VK_NULL_HANDLE;  // the test gate, when armed
  bool gate_next_ = false;
  std::map<std::string, VkShaderModule> modules_;
  std::map<std::pair<std::string, std::vector<uint32_t>>, VkPipeline> pipelines_;
  VulkanBuffer staging_;
  VulkanBuffer inline_;     // Recorder::inline_data's buffer, made at its first use
  size_t inline_used_ = 0;  // bytes of inline_ the recording in progress has taken

  mutable std::mutex mem_mu_;
  size_t allocated_ = 0;
  size_t budgeted_ = 0;  // allocated_ less the allocations the limit does not charge
  size_t heap_allocated_[VK_MAX_MEMORY_HEAPS] = {};
  size_t limit_ = 0;
  std::mutex queue_mu_;  // the command buffer, the queue, the pipeline map, staging
  std::atomic<std::thread::id> queue_owner_{};  // the thread holding queue_mu_ as a Recorder
  std::atomic<uint64_t> timeout_ms_{30000};
  std::atomic<bool> hung_{false};
  mutable std::mutex hung_mu_;
  Status hung_status_;  // guarded by hung_mu_
};

// One GPU timestamp of a submission: its label and the device time since the submission's first
// mark, in ns.
struct GpuMark {
  std::string label;
  double ns = 0;
};

// Records compute dispatches into the context's command buffer, then submits and waits.
// Holds the context's queue lock from its first recorded command to submit() (or destruction),
// so uploads and downloads between submissions are fine. Every dispatch is followed by a
// compute→compute memory barrier, so dispatches see their predecessors' writes.
class Recorder {
 public:
  explicit Recorder(VulkanContext* ctx);
  ~Recorder();
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // shader: a name of kSpirvModules; spec: specialization constants 0..n−1; push: the shader's
  // push-constant block (≤ 128 bytes). A failure is remembered and returned by submit().
  // barrier = false leaves out the barrier after this dispatch (for dispatches that neither
  // read nor write what the next one writes or reads).
  void dispatch(const char* shader, const std::vector<uint32_t>& spec, const void* push,
                size_t push_bytes, uint32_t gx, uint32_t gy = 1, uint32_t gz = 1,
                bool barrier = true);
  // Device → device copy (e.g. logits into a host-readable buffer), followed by a transfer →
  // compute/host barrier unless `barrier` is false (the copy probe of the bench).
  void copy(const VulkanBuffer& src, size_t src_off, const VulkanBuffer& dst, size_t dst_off,
            size_t bytes, bool barrier = true);
  // GPU timing, where ctx->timestamps() (else no-ops and marks() stays empty): mark() writes a
  // timestamp once every command recorded before it has finished (bottom of pipe);
  // mark_dispatches(true) adds a mark after every later dispatch and copy, labelled with the
  // shader's name ("copy"), and one before the first. At most kMaxMarks per submission (more is
  // an error of submit()). After submit(), marks() holds them, ns since the first mark.
  static constexpr uint32_t kMaxMarks = 4096;
  void mark(const std::string& label);
  void mark_dispatches(bool on) { mark_dispatches_ = on; }
  const std::vector<GpuMark>& marks() const { return marks_; }
  // Copies `bytes` (≤ kInlineBytes) of host data into the context's inline-data buffer and
  // returns their device address (16-byte aligned), valid for the shaders of this submission:
  // per-call tables too large for push constants (e.g. the groups' addresses of one latent
  // fold), written by the host at record time with no copy command. The buffer is reused from
  // its start by the next recording (submit() waits for the device). 0 when this submission has
  // used up the buffer or it could not be made (the caller takes a path without the table; an
  // allocation failure is also remembered and returned by submit()).
  static constexpr size_t kInlineBytes = 1u << 20;
  uint64_t inline_data(const void* src, size_t bytes);
  // Ends, submits and waits; the command buffer can be recorded again afterwards.
  Status submit(const char* what);
  VulkanContext* context() const { return ctx_; }

 private:
  void begin();
  void unlock();
  VulkanContext* ctx_;
  std::unique_lock<std::mutex> lock_;  // deferred: taken by begin(), given back by submit()
  bool recording_ = false;
  Status error_;
  bool mark_dispatches_ = false;
  std::vector<std::string> pending_marks_;  // labels of the marks recorded so far
  std::vector<GpuMark> marks_;              // the last submission's
};

// "VkResult -2 (VK_ERROR_OUT_OF_DEVICE_MEMORY)"
std::string vk_result_string(VkResult r);

}  // namespace palu::backends::vulkan
