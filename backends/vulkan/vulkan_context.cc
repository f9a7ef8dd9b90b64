#include "backends/vulkan/vulkan_context.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "backends/vulkan/vulkan_shaders.h"

namespace palu::backends::vulkan {
namespace {

constexpr uint32_t kPushConstantBytes = 128;
constexpr size_t kStagingBytes = 16u << 20;
// Fence-wait bounds: generous next to the longest legitimate submission (the 128K-token bench
// on an H100 is ~2 s per submission; a 1024-token prefill on lavapipe ~20 s, more on busy cores).
constexpr uint64_t kGpuTimeoutMs = 30000;
constexpr uint64_t kCpuDriverTimeoutMs = 300000;

// PALU_VULKAN_TRACE=1: one stderr line per pipeline build, dispatch and submission (finding
// where a driver hangs or crashes without a debugger).
bool trace_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("PALU_VULKAN_TRACE");
    return e != nullptr && *e != '\0' && *e != '0';
  }();
  return on;
}

// PALU_VULKAN_PIPELINE_STATS=1: the driver's statistics of every pipeline built (registers,
// shared memory, ... as VK_KHR_pipeline_executable_properties names them) on stderr.
bool pipeline_stats_from_env() {
  const char* e = std::getenv("PALU_VULKAN_PIPELINE_STATS");
  return e != nullptr && *e != '\0' && *e != '0';
}

bool has_device_extension(VkPhysicalDevice pd, const char* name) {
  uint32_t n = 0;
  vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, nullptr);
  std::vector<VkExtensionProperties> exts(n);
  vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, exts.data());
  for (const auto& x : exts)
    if (std::strcmp(x.extensionName, name) == 0) return true;
  return false;
}

// PALU_VULKAN_COOPMAT: unset or anything but "0" lets a device with VK_NV_cooperative_matrix use
// it; "0" turns it off (A/B timing, debugging); "1" also makes it the automatic choice.
bool coopmat_from_env() {
  const char* e = std::getenv("PALU_VULKAN_COOPMAT");
  return e == nullptr || std::strcmp(e, "0") != 0;
}
bool coopmat_preferred_from_env() {
  const char* e = std::getenv("PALU_VULKAN_COOPMAT");
  return e != nullptr && std::strcmp(e, "1") == 0;
}

// Whether the device can run the coopmat shaders (sets *ok), and a note naming the configuration
// picked or why not: VK_NV_cooperative_matrix with its feature, a subgroup-scope 16×16×16
// f16·f16 + f32 configuration, shaderFloat16, vulkanMemoryModel, storageBuffer16BitAccess (M
// as f16 in a buffer) and 32-wide subgroups.
std::string pick_cooperative_matrix(VkInstance instance, VkPhysicalDevice pd, bool wanted, bool f16,
                                    bool memory_model, bool storage16, uint32_t subgroup,
                                    bool* ok) {
  *ok = false;
  if (!wanted) return "cooperative matrix off (PALU_VULKAN_COOPMAT=0)";
  uint32_t n = 0;
  vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, nullptr);
  std::vector<VkExtensionProperties> exts(n);
  vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, exts.data());
  bool has = false;
  for (const auto& x : exts)
    has = has || std::strcmp(x.extensionName, VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME) == 0;
  if (!has) return "no VK_NV_cooperative_matrix";
  VkPhysicalDeviceCooperativeMatrixFeaturesNV fcm{};
  fcm.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV;
  VkPhysicalDeviceFeatures2 f2{};
  f2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
  f2.pNext = &fcm;
  vkGetPhysicalDeviceFeatures2(pd, &f2);
  if (!fcm.cooperativeMatrix) return "VK_NV_cooperative_matrix without its feature";
  if (!f16) return "cooperative matrix needs shaderFloat16";
  if (!memory_model) return "cooperative matrix needs vulkanMemoryModel";
  if (!storage16) return "cooperative matrix needs storageBuffer16BitAccess";
  if (subgroup != 32) return "cooperative matrix shaders assume subgroups of 32";
  auto get = reinterpret_cast<PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV>(
      vkGetInstanceProcAddr(instance, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV"));
  if (get == nullptr) return "no vkGetPhysicalDeviceCooperativeMatrixPropertiesNV";
  uint32_t count = 0;
  get(pd, &count, nullptr);
  std::vector<VkCooperativeMatrixPropertiesNV> props(count);
  for (auto& p : props) p.sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV;
  get(pd, &count, props.data());
  for (const auto& p : props) {
    if (p.MSize == 16 && p.NSize == 16 && p.KSize == 16 &&
        p.AType == VK_COMPONENT_TYPE_FLOAT16_NV && p.BType == VK_COMPONENT_TYPE_FLOAT16_NV &&
        p.CType == VK_COMPONENT_TYPE_FLOAT32_NV && p.DType == VK_COMPONENT_TYPE_FLOAT32_NV &&
        p.scope == VK_SCOPE_SUBGROUP_NV) {
      *ok = true;
      return "VK_NV_cooperative_matrix 16x16x16 f16*f16+f32, subgroup scope (" +
             std::to_string(count) + " configurations)";
    }
  }
  return "VK_NV_cooperative_matrix without a 16x16x16 f16*f16+f32 subgroup configuration (" +
         std::to_string(count) + " configurations)";
}

// PALU_VULKAN_TIMEOUT_MS as a count of ms (0: no bound), or `fallback` when unset or invalid.
uint64_t timeout_from_env(uint64_t fallback) {
  const char* e = std::getenv("PALU_VULKAN_TIMEOUT_MS");
  if (e == nullptr || *e == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(e, &end, 10);
  if (*end != '\0' || e[0] == '-') return fallback;
  return (uint64_t)v;
}

// The environment variable `name` as an index in [0, max] (−1 when unset or not such a number).
int index_from_env(const char* name, long max) {
  const char* e = std::getenv(name);
  if (e == nullptr || *e == '\0') return -1;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);
  if (*end != '\0' || v < 0 || v > max) return -1;
  return (int)v;
}

// PALU_VULKAN_QUEUE_FAMILY as an index (−1 when unset or not a number).
int queue_family_from_env() {
  return index_from_env("PALU_VULKAN_QUEUE_FAMILY", 64);
}

int type_rank(VkPhysicalDeviceType t) {
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
      return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
      return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
      return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU:
      return 3;
    default:
      return 4;
  }
}

Status vk_error(const char* call, VkResult r) {
  const std::string m = std::string("vulkan: ") + call + " failed: " + vk_result_string(r);
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
    return resource_exhausted(m);
  return internal_error(m);
}

}  // namespace

std::string vk_result_string(VkResult r) {
  const char* name = "";
  switch (r) {
    case VK_ERROR_OUT_OF_HOST_MEMORY:
      name = " (VK_ERROR_OUT_OF_HOST_MEMORY)";
      break;
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
      name = " (VK_ERROR_OUT_OF_DEVICE_MEMORY)";
      break;
    case VK_ERROR_INITIALIZATION_FAILED:
      name = " (VK_ERROR_INITIALIZATION_FAILED)";
      break;
    case VK_ERROR_DEVICE_LOST:
      name = " (VK_ERROR_DEVICE_LOST)";
      break;
    case VK_ERROR_INCOMPATIBLE_DRIVER:
      name = " (VK_ERROR_INCOMPATIBLE_DRIVER)";
      break;
    case VK_ERROR_FEATURE_NOT_PRESENT:
      name = " (VK_ERROR_FEATURE_NOT_PRESENT)";
      break;
    case VK_TIMEOUT:
      name = " (VK_TIMEOUT)";
      break;
    default:
      break;
  }
  return "VkResult " + std::to_string((int)r) + name;
}

int vulkan_device_from_env() {
  return index_from_env("PALU_VULKAN_DEVICE", 1000);
}

VulkanInstanceDevices select_vulkan_devices() {
  VulkanInstanceDevices out;
  VkApplicationInfo app{};
  app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO;
  app.pApplicationName = "palu";
  app.apiVersion = VK_API_VERSION_1_2;
  VkInstanceCreateInfo ci{};
  ci.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
  ci.pApplicationInfo = &app;
  const VkResult r = vkCreateInstance(&ci, nullptr, &out.instance);
  if (r != VK_SUCCESS) {
    out.instance = VK_NULL_HANDLE;
    out.log.push_back("vulkan: no instance (" + vk_result_string(r) +
                      "; is a Vulkan driver installed?)");
    return out;
  }
  uint32_t n = 0;
  vkEnumeratePhysicalDevices(out.instance, &n, nullptr);
  std::vector<VkPhysicalDevice> phys(n);
  if (n > 0) vkEnumeratePhysicalDevices(out.instance, &n, phys.data());
  std::vector<VulkanDeviceEntry> all;
  for (VkPhysicalDevice pd : phys) {
    VulkanDeviceEntry e;
    e.physical = pd;
    vkGetPhysicalDeviceProperties(pd, &e.props);
    uint32_t qn = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &qn, nullptr);
    std::vector<VkQueueFamilyProperties> qf(qn);
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &qn, qf.data());
    int family = -1;
    // Prefer a compute-only family (async compute), else any with compute.
    for (uint32_t i = 0; i < qn; ++i) {
      if ((qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) && !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT))
        family = (int)i;
    }
    for (uint32_t i = 0; i < qn && family < 0; ++i) {
      if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) family = (int)i;
    }
    const int forced = queue_family_from_env();
    if (forced >= 0 && forced < (int)qn && (qf[forced].queueFlags & VK_QUEUE_COMPUTE_BIT))
      family = forced;
    VkPhysicalDeviceMemoryProperties mem{};
    vkGetPhysicalDeviceMemoryProperties(pd, &mem);
    for (uint32_t h = 0; h < mem.memoryHeapCount; ++h) {
      if (mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
        e.device_local_bytes += mem.memoryHeaps[h].size;
    }
    VkPhysicalDeviceVulkan12Features f12{};
    f12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES;
    VkPhysicalDeviceFeatures2 f2{};
    f2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
    f2.pNext = &f12;
    if (e.props.apiVersion >= VK_API_VERSION_1_2) vkGetPhysicalDeviceFeatures2(pd, &f2);
    if (family < 0) {
      e.unusable = "no compute queue";
    } else if (e.props.apiVersion < VK_API_VERSION_1_2) {
      e.unusable = "Vulkan 1.2 is needed";
    } else if (!f12.bufferDeviceAddress) {
      e.unusable = "no bufferDeviceAddress";
    } else if (e.props.limits.maxComputeSharedMemorySize < 16384 ||
               e.props.limits.maxPushConstantsSize < 128) {
      e.unusable = "compute limits below 16 KiB shared memory / 128 B push constants";
    }
    e.queue_family = family < 0 ? 0 : (uint32_t)family;
    all.push_back(e);
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const VulkanDeviceEntry& a, const VulkanDeviceEntry& b) {
                     return type_rank(a.props.deviceType) < type_rank(b.props.deviceType);
                   });
  for (auto& e : all) {
    if (!e.unusable.empty()) {
      out.log.push_back(std::string("vulkan: skipping ") + e.props.deviceName + ": " + e.unusable);
      continue;
    }
    out.devices.push_back(e);
  }
  if (out.devices.empty()) {
    out.log.push_back(phys.empty() ? "vulkan: no physical device"
                                   : "vulkan: no usable compute device");
    vkDestroyInstance(out.instance, nullptr);
    out.instance = VK_NULL_HANDLE;
  }
  return out;
}

// ---- buffers ----------------------------------------------------------------------------

VulkanBuffer::~VulkanBuffer() {
  reset();
}

VulkanBuffer& VulkanBuffer::operator=(VulkanBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    ctx_ = o.ctx_;
    buffer_ = o.buffer_;
    memory_ = o.memory_;
    bytes_ = o.bytes_;
    charged_bytes_ = o.charged_bytes_;
    address_ = o.address_;
    mapped_ = o.mapped_;
    heap_ = o.heap_;
    budgeted_ = o.budgeted_;
    o.ctx_ = nullptr;
    o.buffer_ = VK_NULL_HANDLE;
    o.memory_ = VK_NULL_HANDLE;
    o.bytes_ = o.charged_bytes_ = 0;
    o.address_ = 0;
    o.mapped_ = nullptr;
  }
  return *this;
}

void VulkanBuffer::reset() {
  if (ctx_ != nullptr) ctx_->release(this);
  ctx_ = nullptr;
  buffer_ = VK_NULL_HANDLE;
  memory_ = VK_NULL_HANDLE;
  bytes_ = charged_bytes_ = 0;
  address_ = 0;
  mapped_ = nullptr;
}

void VulkanContext::release(VulkanBuffer* b) {
  // A hung device may still read or write this memory: leak it (and keep it charged).
  if (hung_.load()) return;
  if (b->mapped_ != nullptr) vkUnmapMemory(device_, b->memory_);
  if (b->buffer_ != VK_NULL_HANDLE) vkDestroyBuffer(device_, b->buffer_, nullptr);
  if (b->memory_ != VK_NULL_HANDLE) vkFreeMemory(device_, b->memory_, nullptr);
  std::lock_guard<std::mutex> g(mem_mu_);
  allocated_ -= b->charged_bytes_;
  if (b->budgeted_) budgeted_ -= b->charged_bytes_;
  heap_allocated_[b->heap_] -= b->charged_bytes_;
}

// ---- context ----------------------------------------------------------------------------

Result<std::unique_ptr<VulkanContext>> VulkanContext::create(int device_index) {
  VulkanInstanceDevices found = select_vulkan_devices();
  if (found.devices.empty()) {
    std::string why;
    for (const auto& l : found.log) why += (why.empty() ? "" : "; ") + l;
    return failed_precondition("vulkan: no usable device (" + why + ")");
  }
  int index = device_index;
  if (index < 0) index = std::max(0, vulkan_device_from_env());
  if (index >= (int)found.devices.size()) {
    vkDestroyInstance(found.instance, nullptr);
    return invalid_argument("vulkan: device index " + std::to_string(index) +
                            " asked for (PALU_VULKAN_DEVICE or "
                            "device_index), but there are " +
                            std::to_string(found.devices.size()) + " usable Vulkan devices");
  }
  std::unique_ptr<VulkanContext> ctx(new VulkanContext());
  Status st = ctx->init(found, index);
  if (!st.is_ok()) return st;
  return ctx;
}

Status VulkanContext::init(const VulkanInstanceDevices& found, int index) {
  instance_ = found.instance;
  const VulkanDeviceEntry& e = found.devices[index];
  physical_ = e.physical;
  props_ = e.props;
  queue_family_ = e.queue_family;
  vkGetPhysicalDeviceMemoryProperties(physical_, &mem_props_);
  {
    uint32_t qn = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(physical_, &qn, nullptr);
    std::vector<VkQueueFamilyProperties> qf(qn);
    vkGetPhysicalDeviceQueueFamilyProperties(physical_, &qn, qf.data());
    if (queue_family_ < qn) timestamp_valid_bits_ = qf[queue_family_].timestampValidBits;
  }
  VkPhysicalDeviceSubgroupProperties sg{};
  sg.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES;
  VkPhysicalDeviceProperties2 p2{};
  p2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2;
  p2.pNext = &sg;
  vkGetPhysicalDeviceProperties2(physical_, &p2);
  subgroup_size_ = sg.subgroupSize;
  subgroup_arithmetic_ = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                         (sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) &&
                         sg.subgroupSize >= 4 && sg.subgroupSize <= 128;
  info_.kind = DeviceKind::kVulkan;
  info_.index = index;
  info_.name = props_.deviceName;
  info_.memory_bytes = e.device_local_bytes;
  timeout_ms_.store(timeout_from_env(is_cpu() ? kCpuDriverTimeoutMs : kGpuTimeoutMs));
  VkPhysicalDeviceVulkan12Features have12{};
  have12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES;
  VkPhysicalDeviceVulkan11Features have11{};
  have11.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES;
  have12.pNext = &have11;
  VkPhysicalDeviceFeatures2 have{};
  have.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
  have.pNext = &have12;
  vkGetPhysicalDeviceFeatures2(physical_, &have);
  timeline_ = have12.timelineSemaphore == VK_TRUE;
  shader_float16_ = have12.shaderFloat16 == VK_TRUE;
  const bool coopmat_wanted = coopmat_from_env();
  coopmat_preferred_ = coopmat_preferred_from_env();
  coopmat_note_ = pick_cooperative_matrix(
      instance_, physical_, coopmat_wanted, shader_float16_, have12.vulkanMemoryModel == VK_TRUE,
      have11.storageBuffer16BitAccess == VK_TRUE, subgroup_size_, &coopmat_);
  if (trace_enabled()) std::fprintf(stderr, "[vulkan] %s\n", coopmat_note_.c_str());

  const float prio = 1.0f;
  VkDeviceQueueCreateInfo qci{};
  qci.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO;
  qci.queueFamilyIndex = queue_family_;
  qci.queueCount = 1;
  qci.pQueuePriorities = &prio;
  VkPhysicalDeviceVulkan12Features f12{};
  f12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES;
  f12.bufferDeviceAddress = VK_TRUE;
  f12.timelineSemaphore = timeline_ ? VK_TRUE : VK_FALSE;
  f12.shaderFloat16 = shader_float16_ ? VK_TRUE : VK_FALSE;
  f12.vulkanMemoryModel = coopmat_ ? VK_TRUE : VK_FALSE;  // the coopmat shaders' memory model
  VkPhysicalDeviceCooperativeMatrixFeaturesNV fcm{};
  fcm.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV;
  fcm.cooperativeMatrix = VK_TRUE;
  std::vector<const char*> exts;
  VkDeviceCreateInfo dci{};
  dci.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO;
  dci.pNext = &f12;
  dci.queueCreateInfoCount = 1;
  dci.pQueueCreateInfos = &qci;
  VkPhysicalDeviceVulkan11Features f11{};
  f11.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES;
  f11.storageBuffer16BitAccess = VK_TRUE;
  if (coopmat_) {
    f12.pNext = &fcm;
    fcm.pNext = &f11;
    exts.push_back(VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME);
  }
  VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR fpe{};
  fpe.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR;
  if (pipeline_stats_from_env()) {
    if (has_device_extension(physical_, VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME)) {
      exts.push_back(VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME);
      fpe.pipelineExecutableInfo = VK_TRUE;
      fpe.pNext = (void*)dci.pNext;
      dci.pNext = &fpe;
      pipeline_stats_ = true;
    } else {
      std::fprintf(stderr, "[vulkan] PALU_VULKAN_PIPELINE_STATS: no %s\n",
                   VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME);
    }
  }
  dci.enabledExtensionCount = (uint32_t)exts.size();
  dci.ppEnabledExtensionNames = exts.empty() ? nullptr : exts.data();
  VkResult r = vkCreateDevice(physical_, &dci, nullptr, &device_);
  if (r != VK_SUCCESS) {
    device_ = VK_NULL_HANDLE;
    return vk_error("vkCreateDevice", r);
  }
  vkGetDeviceQueue(device_, queue_family_, 0, &queue_);
  VkCommandPoolCreateInfo pci{};
  pci.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO;
  pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
  pci.queueFamilyIndex = queue_family_;
  if ((r = vkCreateCommandPool(device_, &pci, nullptr, &pool_)) != VK_SUCCESS)
    return vk_error("vkCreateCommandPool", r);
  VkCommandBufferAllocateInfo cai{};
  cai.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO;
  cai.commandPool = pool_;
  cai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  cai.commandBufferCount = 1;
  if ((r = vkAllocateCommandBuffers(device_, &cai, &cmd_)) != VK_SUCCESS)
    return vk_error("vkAllocateCommandBuffers", r);
  VkFenceCreateInfo fci{};
  fci.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO;
  if ((r = vkCreateFence(device_, &fci, nullptr, &fence_)) != VK_SUCCESS)
    return vk_error("vkCreateFence", r);
  VkPipelineCacheCreateInfo pcci{};
  pcci.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO;
  if ((r = vkCreatePipelineCache(device_, &pcci, nullptr, &pipeline_cache_)) != VK_SUCCESS)
    return vk_error("vkCreatePipelineCache", r);
  VkPushConstantRange range{};
  range.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
  range.size = kPushConstantBytes;
  VkPipelineLayoutCreateInfo plci{};
  plci.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO;
  plci.pushConstantRangeCount = 1;
  plci.pPushConstantRanges = &range;
  if ((r = vkCreatePipelineLayout(device_, &plci, nullptr, &layout_)) != VK_SUCCESS)
    return vk_error("vkCreatePipelineLayout", r);
  return Status::ok();
}

VulkanContext::~VulkanContext() {
  // Hung: the device may still be running our commands; waiting would block forever and
  // destroying anything could crash the driver, so everything is leaked (documented).
  if (hung_.load()) return;
  staging_.reset();
  inline_.reset();
  if (device_ != VK_NULL_HANDLE) {
    vkDeviceWaitIdle(device_);
    for (auto& [k, p] : pipelines_) vkDestroyPipeline(device_, p, nullptr);
    for (auto& [k, m] : modules_) vkDestroyShaderModule(device_, m, nullptr);
    if (layout_ != VK_NULL_HANDLE) vkDestroyPipelineLayout(device_, layout_, nullptr);
    if (pipeline_cache_ != VK_NULL_HANDLE)
      vkDestroyPipelineCache(device_, pipeline_cache_, nullptr);
    if (fence_ != VK_NULL_HANDLE) vkDestroyFence(device_, fence_, nullptr);
    if (query_pool_ != VK_NULL_HANDLE) vkDestroyQueryPool(device_, query_pool_, nullptr);
    if (gate_ != VK_NULL_HANDLE) vkDestroySemaphore(device_, gate_, nullptr);
    if (pool_ != VK_NULL_HANDLE) vkDestroyCommandPool(device_, pool_, nullptr);
    vkDestroyDevice(device_, nullptr);
  }
  if (instance_ != VK_NULL_HANDLE) vkDestroyInstance(instance_, nullptr);
}

size_t VulkanContext::allocated_bytes() const {
  std::lock_guard<std::mutex> g(mem_mu_);
  return allocated_;
}

void VulkanContext::set_memory_limit_bytes(size_t bytes) {
  std::lock_guard<std::mutex> g(mem_mu_);
  limit_ = bytes;
}

size_t VulkanContext::memory_limit_bytes() const {
  std::lock_guard<std::mutex> g(mem_mu_);
  return limit_;
}

Status VulkanContext::hung_status() const {
  std::lock_guard<std::mutex> g(hung_mu_);
  return hung_status_;
}

Status VulkanContext::mark_hung(Status s) {
  std::lock_guard<std::mutex> g(hung_mu_);
  if (!hung_.load()) {
    hung_status_ = internal_error("vulkan: the context is hung (" + s.to_string() +
                                  "); it leaks its resources and fails every call from now on");
    hung_.store(true);
  }
  return hung_status_;
}

Status VulkanContext::check_queue_free(const char* what) const {
  if (queue_owner_.load() == std::this_thread::get_id()) {
    return failed_precondition(std::string("vulkan: ") + what +
                               " while a Recorder of this thread is recording (submit it first)");
  }
  return Status::ok();
}

Status VulkanContext::submit_and_wait(const std::string& what) {
  if (hung_.load()) return hung_status();
  VkSubmitInfo si{};
  si.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cmd_;
  VkTimelineSemaphoreSubmitInfo tsi{};
  const uint64_t gate_value = 1;
  const VkPipelineStageFlags gate_stage = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
  if (gate_next_ && gate_ != VK_NULL_HANDLE) {
    tsi.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO;
    tsi.waitSemaphoreValueCount = 1;
    tsi.pWaitSemaphoreValues = &gate_value;
    si.pNext = &tsi;
    si.waitSemaphoreCount = 1;
    si.pWaitSemaphores = &gate_;
    si.pWaitDstStageMask = &gate_stage;
    gate_next_ = false;
  }
  if (trace_enabled()) std::fprintf(stderr, "[vulkan] submit %s\n", what.c_str());
  VkResult r = vkQueueSubmit(queue_, 1, &si, fence_);
  if (r == VK_ERROR_DEVICE_LOST)
    return mark_hung(vk_error(("vkQueueSubmit (" + what + ")").c_str(), r));
  if (r != VK_SUCCESS) return vk_error(("vkQueueSubmit (" + what + ")").c_str(), r);
  const uint64_t ms = timeout_ms();
  const uint64_t ns = ms == 0 || ms > std::numeric_limits<uint64_t>::max() / 1000000u
                          ? std::numeric_limits<uint64_t>::max()
                          : ms * 1000000u;
  r = vkWaitForFences(device_, 1, &fence_, VK_TRUE, ns);
  if (trace_enabled()) std::fprintf(stderr, "[vulkan] waited: %s\n", vk_result_string(r).c_str());
  if (r == VK_SUCCESS) {
    vkResetFences(device_, 1, &fence_);
    return Status::ok();
  }
  // The submission may still be running: the fence, the command buffer and every buffer stay
  // as they are (mark_hung makes the context leak them).
  if (r == VK_TIMEOUT) {
    return mark_hung(internal_error("vulkan: " + what + " did not finish within " +
                                    std::to_string(ms) + " ms (PALU_VULKAN_TIMEOUT_MS)"));
  }
  return mark_hung(vk_error(("vkWaitForFences (" + what + ")").c_str(), r));
}

Status VulkanContext::gate_next_submit_for_testing() {
  std::lock_guard<std::mutex> g(queue_mu_);
  if (!timeline_) return failed_precondition("vulkan: no timeline semaphores on this device");
  if (gate_ == VK_NULL_HANDLE) {
    VkSemaphoreTypeCreateInfo tci{};
    tci.sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO;
    tci.semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE;
    tci.initialValue = 0;
    VkSemaphoreCreateInfo sci{};
    sci.sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO;
    sci.pNext = &tci;
    const VkResult r = vkCreateSemaphore(device_, &sci, nullptr, &gate_);
    if (r != VK_SUCCESS) {
      gate_ = VK_NULL_HANDLE;
      return vk_error("vkCreateSemaphore (test gate)", r);
    }
  }
  gate_next_ = true;
  return Status::ok();
}

void VulkanContext::release_submit_gate_for_testing() {
  if (gate_ == VK_NULL_HANDLE) return;
  VkSemaphoreSignalInfo ssi{};
  ssi.sType = VK_STRUCTURE_TYPE_SEMAPHORE_SIGNAL_INFO;
  ssi.semaphore = gate_;
  ssi.value = 1;
  vkSignalSemaphore(device_, &ssi);
}

Result<VulkanBuffer> VulkanContext::alloc(size_t bytes, MemoryKind kind, const std::string& what) {
  if (hung_.load()) return hung_status();
  bytes = std::max<size_t>(16, (bytes + 15) / 16 * 16);
  VkBufferCreateInfo bci{};
  bci.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
  bci.size = bytes;
  bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT |
              VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  VulkanBuffer b;
  VkResult r = vkCreateBuffer(device_, &bci, nullptr, &b.buffer_);
  if (r != VK_SUCCESS) {
    b.buffer_ = VK_NULL_HANDLE;
    return vk_error(("vkCreateBuffer for " + what).c_str(), r);
  }
  b.ctx_ = this;
  b.bytes_ = bytes;
  VkMemoryRequirements req{};
  vkGetBufferMemoryRequirements(device_, b.buffer_, &req);
  // Pick the memory type: device-local for kDevice (host-visible too when the device has such
  // memory, e.g. integrated GPUs and lavapipe, so uploads skip staging); host-visible coherent
  // otherwise: cached for read-back, device-local (the BAR window) for small inputs the device
  // reads, host memory and cached for staging (the host reads downloads from it; uncached BAR
  // reads are slow).
  int type = -1, best = -1;
  for (uint32_t i = 0; i < mem_props_.memoryTypeCount; ++i) {
    if (!(req.memoryTypeBits & (1u << i))) continue;
    const VkMemoryPropertyFlags f = mem_props_.memoryTypes[i].propertyFlags;
    int score = -1;
    const bool dl = f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
    const bool hv =
        (f & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) && (f & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
    const bool hc = f & VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
    if (kind == MemoryKind::kDevice) {
      // Discrete GPUs: plain device-local memory (a host-visible device-local heap there is
      // often the 256 MiB BAR window); unified memory (integrated GPUs, lavapipe): host-visible
      // device-local, so uploads and read-backs skip the staging copies.
      const bool uma = props_.deviceType != VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU;
      if (dl)
        score = (hv == uma) ? 3 : 2;
      else
        score = 0;
    } else if (hv && kind == MemoryKind::kInline) {
      score = 1 + (dl ? 1 : 0);
    } else if (hv && kind == MemoryKind::kStaging) {
      score = 1 + (!dl ? 2 : 0) + (hc ? 1 : 0);
    } else if (hv) {
      score = 1 + (kind == MemoryKind::kHostRead && hc ? 2 : 0) +
              (kind == MemoryKind::kHostWrite && dl ? 1 : 0);
    }
    if (score > best) {
      best = score;
      type = (int)i;
    }
  }
  if (type < 0) return internal_error("vulkan: no memory type for " + what);
  const uint32_t heap = mem_props_.memoryTypes[type].heapIndex;
  const size_t heap_bytes = mem_props_.memoryHeaps[heap].size;
  {
    std::lock_guard<std::mutex> g(mem_mu_);
    const bool budgeted = kind != MemoryKind::kStaging && kind != MemoryKind::kInline;
    if (budgeted && limit_ > 0 && budgeted_ + req.size > limit_) {
      return resource_exhausted("vulkan: out of device memory: " + what + " needs " +
                                std::to_string(req.size) + " bytes, " + std::to_string(budgeted_) +
                                " of " + std::to_string(limit_) + " bytes held (memory limit)");
    }
    if (heap_allocated_[heap] + req.size > heap_bytes) {
      return resource_exhausted(
          "vulkan: out of device memory: " + what + " needs " + std::to_string(req.size) +
          " bytes, " + std::to_string(heap_allocated_[heap]) + " of " + std::to_string(heap_bytes) +
          " bytes of memory heap " + std::to_string(heap) + " held");
    }
    allocated_ += req.size;
    if (budgeted) budgeted_ += req.size;
    heap_allocated_[heap] += req.size;
    b.charged_bytes_ = req.size;
    b.heap_ = heap;
    b.budgeted_ = budgeted;
  }
  VkMemoryAllocateFlagsInfo flags{};
  flags.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO;
  flags.flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT;
  VkMemoryAllocateInfo mai{};
  mai.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO;
  mai.pNext = &flags;
  mai.allocationSize = req.size;
  mai.memoryTypeIndex = (uint32_t)type;
  r = vkAllocateMemory(device_, &mai, nullptr, &b.memory_);
  if (r != VK_SUCCESS) {
    b.memory_ = VK_NULL_HANDLE;
    const size_t held = allocated_bytes() - b.charged_bytes_;
    Status s = vk_error(("vkAllocateMemory of " + std::to_string(req.size) + " bytes for " + what +
                         " (" + std::to_string(held) + " bytes held)")
                            .c_str(),
                        r);
    return s;  // b's destructor returns the charge
  }
  if ((r = vkBindBufferMemory(device_, b.buffer_, b.memory_, 0)) != VK_SUCCESS)
    return vk_error("vkBindBufferMemory", r);
  if (mem_props_.memoryTypes[type].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) {
    if ((r = vkMapMemory(device_, b.memory_, 0, VK_WHOLE_SIZE, 0, &b.mapped_)) != VK_SUCCESS) {
      b.mapped_ = nullptr;
      return vk_error("vkMapMemory", r);
    }
  }
  VkBufferDeviceAddressInfo ai{};
  ai.sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO;
  ai.buffer = b.buffer_;
  b.address_ = vkGetBufferDeviceAddress(device_, &ai);
  return b;
}

Status VulkanContext::ensure_staging(size_t) {
  if (staging_.valid()) return Status::ok();
  PALU_ASSIGN_OR_RETURN(staging_, alloc(kStagingBytes, MemoryKind::kStaging, "staging buffer"));
  return Status::ok();
}

Status VulkanContext::copy_buffer(VkBuffer src, size_t src_off, VkBuffer dst, size_t dst_off,
                                  size_t bytes, const char* what) {
  VkCommandBufferBeginInfo bi{};
  bi.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
  bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  VkResult r = vkBeginCommandBuffer(cmd_, &bi);
  if (r != VK_SUCCESS) return vk_error("vkBeginCommandBuffer", r);
  VkBufferCopy c{src_off, dst_off, bytes};
  vkCmdCopyBuffer(cmd_, src, dst, 1, &c);
  // Make the copy's writes visible to the host (download) and to later shaders (upload).
  VkMemoryBarrier mb{};
  mb.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
  mb.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
  mb.dstAccessMask = VK_ACCESS_HOST_READ_BIT | VK_ACCESS_SHADER_READ_BIT;
  vkCmdPipelineBarrier(cmd_, VK_PIPELINE_STAGE_TRANSFER_BIT,
                       VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &mb,
                       0, nullptr, 0, nullptr);
  if ((r = vkEndCommandBuffer(cmd_)) != VK_SUCCESS) return vk_error("vkEndCommandBuffer", r);
  return submit_and_wait(what);
}

Status VulkanContext::upload(const VulkanBuffer& dst, size_t offset, const void* src,
                             size_t bytes) {
  if (offset + bytes > dst.bytes())
    return internal_error("vulkan: upload past the end of a buffer");
  if (hung_.load()) return hung_status();
  if (dst.mapped() != nullptr) {
    std::memcpy(static_cast<uint8_t*>(dst.mapped()) + offset, src, bytes);
    return Status::ok();
  }
  PALU_RETURN_IF_ERROR(check_queue_free("upload through staging"));
  std::lock_guard<std::mutex> g(queue_mu_);
  PALU_RETURN_IF_ERROR(ensure_staging(bytes));
  for (size_t done = 0; done < bytes;) {
    const size_t n = std::min(bytes - done, staging_.bytes());
    std::memcpy(staging_.mapped(), static_cast<const uint8_t*>(src) + done, n);
    PALU_RETURN_IF_ERROR(
        copy_buffer(staging_.handle(), 0, dst.handle(), offset + done, n, "upload (staging copy)"));
    done += n;
  }
  return Status::ok();
}

Status VulkanContext::download(const VulkanBuffer& src, size_t offset, void* dst, size_t bytes) {
  if (offset + bytes > src.bytes())
    return internal_error("vulkan: download past the end of a buffer");
  if (hung_.load()) return hung_status();
  if (src.mapped() != nullptr) {
    std::memcpy(dst, static_cast<const uint8_t*>(src.mapped()) + offset, bytes);
    return Status::ok();
  }
  PALU_RETURN_IF_ERROR(check_queue_free("download through staging"));
  std::lock_guard<std::mutex> g(queue_mu_);
  PALU_RETURN_IF_ERROR(ensure_staging(bytes));
  for (size_t done = 0; done < bytes;) {
    const size_t n = std::min(bytes - done, staging_.bytes());
    PALU_RETURN_IF_ERROR(copy_buffer(src.handle(), offset + done, staging_.handle(), 0, n,
                                     "download (staging copy)"));
    std::memcpy(static_cast<uint8_t*>(dst) + done, staging_.mapped(), n);
    done += n;
  }
  return Status::ok();
}

Result<VkPipeline> VulkanContext::pipeline(const std::string& shader,
                                           const std::vector<uint32_t>& spec) {
  auto key = std::make_pair(shader, spec);
  auto it = pipelines_.find(key);
  if (it != pipelines_.end()) return it->second;
  VkShaderModule module = VK_NULL_HANDLE;
  auto mit = modules_.find(shader);
  if (mit != modules_.end()) {
    module = mit->second;
  } else {
    const SpirvModule* m = find_spirv(shader);
    if (m == nullptr) return internal_error("vulkan: no embedded shader '" + shader + "'");
    VkShaderModuleCreateInfo smci{};
    smci.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO;
    smci.codeSize = m->word_count * 4;
    smci.pCode = m->words;
    VkResult r = vkCreateShaderModule(device_, &smci, nullptr, &module);
    if (r != VK_SUCCESS) return vk_error(("vkCreateShaderModule " + shader).c_str(), r);
    modules_[shader] = module;
  }
  std::vector<VkSpecializationMapEntry> entries(spec.size());
  for (size_t i = 0; i < spec.size(); ++i) entries[i] = {(uint32_t)i, (uint32_t)(i * 4), 4};
  VkSpecializationInfo si{};
  si.mapEntryCount = (uint32_t)entries.size();
  si.pMapEntries = entries.data();
  si.dataSize = spec.size() * 4;
  si.pData = spec.data();
  VkComputePipelineCreateInfo cpci{};
  cpci.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO;
  cpci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
  cpci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
  cpci.stage.module = module;
  cpci.stage.pName = "main";
  cpci.stage.pSpecializationInfo = spec.empty() ? nullptr : &si;
  cpci.layout = layout_;
  if (pipeline_stats_) cpci.flags |= VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR;
  VkPipeline p = VK_NULL_HANDLE;
  if (trace_enabled()) std::fprintf(stderr, "[vulkan] pipeline %s\n", shader.c_str());
  VkResult r = vkCreateComputePipelines(device_, pipeline_cache_, 1, &cpci, nullptr, &p);
  if (r != VK_SUCCESS) return vk_error(("vkCreateComputePipelines " + shader).c_str(), r);
  if (pipeline_stats_) print_pipeline_stats(p, shader, spec);
  pipelines_[key] = p;
  return p;
}

void VulkanContext::print_pipeline_stats(VkPipeline p, const std::string& shader,
                                         const std::vector<uint32_t>& spec) {
  auto get_exes = reinterpret_cast<PFN_vkGetPipelineExecutablePropertiesKHR>(
      vkGetDeviceProcAddr(device_, "vkGetPipelineExecutablePropertiesKHR"));
  auto get_stats = reinterpret_cast<PFN_vkGetPipelineExecutableStatisticsKHR>(
      vkGetDeviceProcAddr(device_, "vkGetPipelineExecutableStatisticsKHR"));
  if (get_exes == nullptr || get_stats == nullptr) return;
  std::string line = "[vulkan] stats " + shader + " spec {";
  for (size_t i = 0; i < spec.size(); ++i) line += (i ? "," : "") + std::to_string(spec[i]);
  line += "}";
  VkPipelineInfoKHR pi{};
  pi.sType = VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR;
  pi.pipeline = p;
  uint32_t ne = 0;
  get_exes(device_, &pi, &ne, nullptr);
  for (uint32_t e = 0; e < ne; ++e) {
    VkPipelineExecutableInfoKHR ei{};
    ei.sType = VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR;
    ei.pipeline = p;
    ei.executableIndex = e;
    uint32_t ns = 0;
    get_stats(device_, &ei, &ns, nullptr);
    std::vector<VkPipelineExecutableStatisticKHR> st(ns);
    for (auto& x : st) x.sType = VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR;
    get_stats(device_, &ei, &ns, st.data());
    for (const auto& x : st) {
      line += std::string("; ") + x.name + "=";
      switch (x.format) {
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR:
          line += x.value.b32 ? "true" : "false";
          break;
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR:
          line += std::to_string(x.value.i64);
          break;
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR:
          line += std::to_string(x.value.u64);
          break;
        default:
          line += std::to_string(x.value.f64);
      }
    }
  }
  std::fprintf(stderr, "%s\n", line.c_str());
}

// ---- recorder ---------------------------------------------------------------------------

Recorder::Recorder(VulkanContext* ctx) : ctx_(ctx), lock_(ctx->queue_mu_, std::defer_lock) {}

Recorder::~Recorder() {
  if (recording_) vkEndCommandBuffer(ctx_->cmd_);
  unlock();
}

void Recorder::unlock() {
  if (lock_.owns_lock()) {
    ctx_->queue_owner_.store(std::thread::id());
    lock_.unlock();
  }
}

void Recorder::begin() {
  if (recording_) return;
  if (!lock_.owns_lock()) {
    lock_.lock();
    ctx_->queue_owner_.store(std::this_thread::get_id());
  }
  if (ctx_->hung()) {
    error_ = ctx_->hung_status();
    unlock();
    return;
  }
  VkCommandBufferBeginInfo bi{};
  bi.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
  bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  const VkResult r = vkBeginCommandBuffer(ctx_->cmd_, &bi);
  if (r != VK_SUCCESS) {
    error_ = vk_error("vkBeginCommandBuffer", r);
    unlock();
    return;
  }
  recording_ = true;
  ctx_->inline_used_ = 0;
  pending_marks_.clear();
  marks_.clear();
  if (mark_dispatches_) mark("begin");
}

void Recorder::mark(const std::string& label) {
  if (!error_.is_ok() || !ctx_->timestamps()) return;
  begin();
  if (!error_.is_ok()) return;
  if (pending_marks_.size() >= kMaxMarks) {
    error_ = internal_error("vulkan: more than " + std::to_string(kMaxMarks) +
                            " timestamp marks in one submission");
    return;
  }
  if (ctx_->query_pool_ == VK_NULL_HANDLE) {
    VkQueryPoolCreateInfo qci{};
    qci.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO;
    qci.queryType = VK_QUERY_TYPE_TIMESTAMP;
    qci.queryCount = kMaxMarks;
    const VkResult r = vkCreateQueryPool(ctx_->device_, &qci, nullptr, &ctx_->query_pool_);
    if (r != VK_SUCCESS) {
      ctx_->query_pool_ = VK_NULL_HANDLE;
      error_ = vk_error("vkCreateQueryPool", r);
      return;
    }
  }
  // Queries are reset in the command buffer, before its first write (no hostQueryReset needed).
  if (pending_marks_.empty()) vkCmdResetQueryPool(ctx_->cmd_, ctx_->query_pool_, 0, kMaxMarks);
  vkCmdWriteTimestamp(ctx_->cmd_, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, ctx_->query_pool_,
                      (uint32_t)pending_marks_.size());
  pending_marks_.push_back(label);
}

void Recorder::dispatch(const char* shader, const std::vector<uint32_t>& spec, const void* push,
                        size_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz, bool barrier) {
  if (!error_.is_ok()) return;
  if (trace_enabled()) std::fprintf(stderr, "[vulkan] dispatch %s %ux%ux%u\n", shader, gx, gy, gz);
  if (gx == 0 || gy == 0 || gz == 0) return;
  const uint32_t* lim = ctx_->props_.limits.maxComputeWorkGroupCount;
  if (gx > lim[0] || gy > lim[1] || gz > lim[2] || push_bytes > kPushConstantBytes) {
    error_ = internal_error(std::string("vulkan: dispatch of ") + shader +
                            " exceeds the device's limits (" + std::to_string(gx) + "×" +
                            std::to_string(gy) + "×" + std::to_string(gz) + " groups)");
    return;
  }
  begin();
  if (!error_.is_ok()) return;
  auto p = ctx_->pipeline(shader, spec);
  if (!p.is_ok()) {
    error_ = p.status();
    return;
  }
  vkCmdBindPipeline(ctx_->cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, p.value());
  vkCmdPushConstants(ctx_->cmd_, ctx_->layout_, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                     (uint32_t)push_bytes, push);
  vkCmdDispatch(ctx_->cmd_, gx, gy, gz);
  if (!barrier) {
    if (mark_dispatches_) mark(shader);
    return;
  }
  VkMemoryBarrier mb{};
  mb.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
  mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT;
  mb.dstAccessMask =
      VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT;
  vkCmdPipelineBarrier(ctx_->cmd_, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                       VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1,
                       &mb, 0, nullptr, 0, nullptr);
  if (mark_dispatches_) mark(shader);
}

void Recorder::copy(const VulkanBuffer& src, size_t src_off, const VulkanBuffer& dst,
                    size_t dst_off, size_t bytes, bool barrier) {
  if (!error_.is_ok() || bytes == 0) return;
  begin();
  if (!error_.is_ok()) return;
  VkBufferCopy c{src_off, dst_off, bytes};
  vkCmdCopyBuffer(ctx_->cmd_, src.handle(), dst.handle(), 1, &c);
  if (!barrier) {
    if (mark_dispatches_) mark("copy");
    return;
  }
  VkMemoryBarrier mb{};
  mb.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
  mb.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
  mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_HOST_READ_BIT;
  vkCmdPipelineBarrier(ctx_->cmd_, VK_PIPELINE_STAGE_TRANSFER_BIT,
                       VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb,
                       0, nullptr, 0, nullptr);
  if (mark_dispatches_) mark("copy");
}

uint64_t Recorder::inline_data(const void* src, size_t bytes) {
  if (!error_.is_ok()) return 0;
  begin();
  if (!error_.is_ok()) return 0;
  const size_t off = (ctx_->inline_used_ + 15) / 16 * 16;
  if (bytes == 0 || bytes > kInlineBytes - std::min(off, kInlineBytes)) return 0;
  if (!ctx_->inline_.valid()) {
    auto b = ctx_->alloc(kInlineBytes, MemoryKind::kInline, "inline data");
    if (!b.is_ok()) {
      error_ = b.status();
      return 0;
    }
    ctx_->inline_ = std::move(b.value());
    if (ctx_->inline_.mapped() == nullptr) {
      error_ = internal_error("vulkan: inline data buffer not host-visible");
      return 0;
    }
  }
  std::memcpy(static_cast<uint8_t*>(ctx_->inline_.mapped()) + off, src, bytes);
  ctx_->inline_used_ = off + bytes;
  return ctx_->inline_.address(off);
}

Status Recorder::submit(const char* what) {
  if (!error_.is_ok()) {
    Status e = error_.with_context(what);
    if (recording_) {
      vkEndCommandBuffer(ctx_->cmd_);
      recording_ = false;
    }
    error_ = Status::ok();
    unlock();
    return e;
  }
  if (!recording_) {
    unlock();
    return ctx_->hung() ? ctx_->hung_status() : Status::ok();
  }
  recording_ = false;
  // Every write of the submission visible to the host once the fence is signalled (read-back
  // buffers that are host-visible are read with no copy).
  VkMemoryBarrier mb{};
  mb.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
  mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  mb.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
  vkCmdPipelineBarrier(ctx_->cmd_,
                       VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                       VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, nullptr, 0, nullptr);
  VkResult r = vkEndCommandBuffer(ctx_->cmd_);
  Status st = r != VK_SUCCESS ? vk_error("vkEndCommandBuffer", r).with_context(what)
                              : ctx_->submit_and_wait(what);
  if (st.is_ok() && !pending_marks_.empty()) {
    const uint32_t n = (uint32_t)pending_marks_.size();
    std::vector<uint64_t> ticks(n);
    r = vkGetQueryPoolResults(ctx_->device_, ctx_->query_pool_, 0, n, n * 8, ticks.data(), 8,
                              VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
    if (r != VK_SUCCESS) {
      st = vk_error("vkGetQueryPoolResults", r).with_context(what);
    } else {
      // Only timestampValidBits of each value count; differences taken modulo that width.
      const uint32_t bits = ctx_->timestamp_valid_bits_;
      const uint64_t mask = bits >= 64 ? ~0ull : (1ull << bits) - 1;
      for (uint32_t i = 0; i < n; ++i)
        marks_.push_back({pending_marks_[i],
                          (double)((ticks[i] - ticks[0]) & mask) * ctx_->timestamp_period_ns()});
    }
  }
  pending_marks_.clear();
  unlock();
  return st;
}

}  // namespace palu::backends::vulkan
