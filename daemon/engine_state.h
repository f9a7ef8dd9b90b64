// The engine's per-model and per-session state (engine thread only). Internal to daemon/.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/block_pool.h"
#include "daemon/engine.h"
#include "model/device_model.h"
#include "model/llama_model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

namespace palu::daemon {

// The host-tier cache of a model's sessions that use one cache setting (latent bits, f16
// window). Every pool of every model draws from the engine's host budget (cache::SharedBudget).
struct Engine::CachePool {
  Model* model = nullptr;
  api::CacheSettings cache;
  model::CacheOptions options;  // the same setting, as the model's cache options
  std::unique_ptr<cache::BlockPool> pool;
  uint64_t layout_hash = 0;
  int sessions = 0;  // sessions using this setting, in any tier
  // GPU tier: the device model of this setting (made on first use); a failure to make it is
  // kept, so the pool's sessions run on the CPU instead of retrying every step.
  std::unique_ptr<model::DeviceModel> device;
  Status device_error = Status::ok();
};

struct Engine::Model {
  std::string name, path, fingerprint;
  model::LoadedModel loaded;
  api::CacheSettings cache;  // the default setting of its sessions
  // pools[0]: the default setting's (made at load); others are made when a session asks for
  // another setting and dropped when their last session goes.
  std::vector<std::unique_ptr<CachePool>> pools;
  int max_context = 0;
  int sessions = 0;

  CachePool* default_pool() const { return pools.front().get(); }

  const model::LlamaModel& m() const { return *loaded.model; }
  const model::Tokenizer& tok() const { return *loaded.tokenizer; }
};

inline api::Code to_code(StatusCode c) {
  switch (c) {
    case StatusCode::kOk: return api::OK;
    case StatusCode::kInvalidArgument: return api::INVALID_ARGUMENT;
    case StatusCode::kNotFound: return api::NOT_FOUND;
    case StatusCode::kResourceExhausted: return api::RESOURCE_EXHAUSTED;
    case StatusCode::kFailedPrecondition: return api::FAILED_PRECONDITION;
    case StatusCode::kOutOfRange: return api::OUT_OF_RANGE;
    case StatusCode::kDataLoss: return api::DATA_LOSS;
    case StatusCode::kUnimplemented: return api::UNIMPLEMENTED;
    case StatusCode::kIoError: return api::IO_ERROR;
    case StatusCode::kCancelled: return api::CANCELLED;
    case StatusCode::kPermissionDenied: return api::PERMISSION_DENIED;
    case StatusCode::kAlreadyExists: return api::ALREADY_EXISTS;
    default: return api::INTERNAL;
  }
}

inline void reply(const std::shared_ptr<ResponseSink>& sink, uint64_t id, const Status& st) {
  if (sink) sink->send(make_response(id, to_code(st.code()), st.message()));
}

inline bool path_exists(FileSystem& fs, const std::string& path) {
  auto r = fs.exists(path);
  return r.is_ok() && r.value();
}

enum class Tier { kGpu, kHost, kDisk };
inline const char* tier_name(Tier t) { return t == Tier::kGpu ? "gpu" : t == Tier::kHost ? "host" : "disk"; }

struct Engine::Session {
  uint64_t id = 0;  // also the pool's sequence id
  std::string name;
  uid_t owner = 0;
  Model* model = nullptr;
  CachePool* pool = nullptr;  // its cache setting (and, when resident, its blocks)
  Tier tier = Tier::kHost;
  std::unique_ptr<model::DeviceSequence> dev;  // GPU tier: its cache on the device
  bool decode_on_host = false;                 // policy: never moved to the GPU
  std::string spill_path;  // disk tier: its file
  uint64_t spill_bytes = 0;
  std::vector<int32_t> tokens;  // in the cache, in order
  std::deque<int32_t> pending;  // input not yet run through the model
  int max_context = 0;
  double last_used = 0.0;
  bool saved = false;
  std::string saved_file;  // the file it was last saved to or restored from (close delete_saved removes it)
  int waiting_steps = 0;  // steps it had work but did not fit
  // Logits after the last cached token (valid when has_logits): what the next sample uses.
  std::vector<float> logits;
  bool has_logits = false;

  // An Append waiting for its input to be prefilled.
  struct AppendWaiter {
    uint64_t request_id = 0;
    std::shared_ptr<ResponseSink> sink;
    uint64_t connection_id = 0;
    uint32_t appended = 0;
  };
  std::optional<AppendWaiter> append_waiter;

  struct Generation {
    uint64_t request_id = 0;
    std::shared_ptr<ResponseSink> sink;
    uint64_t connection_id = 0;
    std::optional<model::Sampler> sampler;
    uint32_t max_tokens = 128;
    std::vector<std::string> stop;
    std::vector<int32_t> stop_ids;
    bool ignore_eos = false;
    uint32_t prompt_tokens = 0;
    uint32_t generated = 0;
    model::Utf8Streamer utf8;
    std::string held;  // text held back while it could still become a stop string
    int32_t prev_token = -1;
    double t_start = 0.0, t_first = 0.0;
  };
  std::optional<Generation> gen;

  bool busy() const { return gen.has_value() || !pending.empty() || append_waiter.has_value(); }
  bool resident() const { return tier == Tier::kHost; }  // in its host pool
  bool on_gpu() const { return tier == Tier::kGpu; }
};

}  // namespace palu::daemon
