// Engine: the part of palud that owns the models, their KV-cache pools and the sessions, and
// runs them. One engine thread does all model and cache work; connections post requests to
// it (RequestHandler::handle only queues) and receive responses through their sinks.
//
// Scheduling (one loop iteration = one step):
//   * control requests (load, create, fork, save, stats, tokenize, ...) are applied in order;
//   * every session with work contributes to one batched forward per model: a generating
//     session one decode token, a session with input still to prefill a chunk of at most
//     prefill_chunk_tokens (so a long prompt cannot starve the others), within
//     max_batch_tokens per step, sessions taken round-robin (fair order);
//   * the logits of a session's last position feed its sampler; tokens stream to the client.
//
// Cache settings. A session caches with its model's setting (LoadModel.cache / palud --kv-bits
// --kv-window) or the one CreateSession.cache names (latent bits 0/2/3/4/8, f16 window): each
// setting of a model has its own block pool, made on first use and dropped with its last session.
//
// Memory tiers. The host tier is every pool of every model, drawing from one host budget
// (cache::SharedBudget: a pool reserves address space, the blocks sessions hold count against
// the budget, so it can never be exceeded). When appending to a session does not fit, the least
// recently used idle sessions (of any model or setting) are demoted to the disk tier (their
// blocks exported to a session file under disk_dir, within disk_budget_bytes, then freed); a
// demoted session is restored on its next use. A request that cannot fit even then gets
// RESOURCE_EXHAUSTED with the numbers.
//
// GPU tier (EngineOptions::make_device, palud --backend cuda): a session with work runs on the
// device when its cache fits the GPU budget (a DeviceSequence per session, capacity grown
// geometrically; the budget counts every device sequence's bytes); the least recently used
// GPU sessions not in the step are moved to the host tier to make room (their cache copied
// out bit for bit, DeviceSequence::export_image), and moved back on their next use. A session
// that cannot get GPU room runs on the CPU from the host tier that step; a session created
// with decode_on_host never goes to the GPU (its latents stay in host memory and decode there).
// GPU sessions run one forward each (no cross-session batching on the device yet); host
// sessions one batched forward per pool.
//
// Persistence: Save writes a session file (daemon/session_file.h: checksummed, bound to the
// model fingerprint and cache layout, written atomically) under
// state_dir/sessions/<uid>/<name>.palu; Restore reads one back (a corrupt file is moved
// aside and refused with DATA_LOSS). stop(save_all = true) — palud's SIGTERM path — saves
// every session; restore_saved_sessions() at start-up brings them back.
//
// Ownership: the engine owns models, pools and sessions; it borrows the FileSystem.
// Thread-safety: handle / connection_closed / counters / stop from any thread; everything
// else runs on the engine thread. Errors: every response carries a code and a message naming
// the field, the expected and the found value.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "backends/base/status.h"
#include "cache/block_pool.h"
#include "daemon/file_system.h"
#include "daemon/request_handler.h"
#include "model/device_model.h"
#include "model/llama_model.h"
#include "model/sampler.h"

namespace palu::daemon {

struct EngineOptions {
  uint64_t host_budget_bytes = 1ull << 30;  // all models' KV pools together
  std::string disk_dir;                     // demoted sessions ("" = no disk tier)
  uint64_t disk_budget_bytes = 0;
  std::string state_dir;                    // saved sessions ("" = Save refused)
  int max_queue = 1024;                     // queued requests; beyond: BUSY
  int prefill_chunk_tokens = 256;
  int max_batch_tokens = 2048;
  int max_sessions = 4096;
  uint32_t max_generate_tokens = 1u << 20;
  uint64_t max_session_file_bytes = 64ull << 30;
  FileSystem* fs = nullptr;                 // nullptr = the real file system
  std::function<double()> clock;            // seconds; default: steady clock (injectable)
  std::string daemon_version = "0.1.0";
  // The GPU tier: makes the DeviceModel running one model's sessions of one cache setting on
  // the device (palud: the CUDA backend; tests may pass the CPU reference). Empty = no GPU tier.
  std::function<Result<std::unique_ptr<model::DeviceModel>>(const model::LlamaModel&, const model::CacheOptions&)>
      make_device;
  uint64_t gpu_budget_bytes = 0;  // Σ of the device sequences' cache bytes
  std::string gpu_name;           // e.g. "cuda:0 NVIDIA H100" (logs)
};

struct EngineCounters {
  uint64_t requests = 0, generated_tokens = 0, demotions = 0, restorations = 0, busy_refusals = 0;
};

class Engine : public RequestHandler {
 public:
  static Result<std::unique_ptr<Engine>> create(EngineOptions options);
  ~Engine() override;

  // Loads a model before start() (palud --model); `cache` is its sessions' default setting.
  Status load_model(const std::string& name, const std::string& path, const api::CacheSettings& cache);
  // Restores every session file under state_dir/sessions (start-up); returns how many.
  Result<int> restore_saved_sessions();

  void start();                      // the engine thread
  void stop(bool save_all = false);  // finish, optionally save every session; joins
  void wait();                       // until stop() from another thread

  // RequestHandler
  void handle(const api::Request& request, const PeerInfo& peer, std::shared_ptr<ResponseSink> sink) override;
  void connection_closed(const PeerInfo& peer) override;

  EngineCounters counters() const;

  struct Model;
  struct CachePool;
  struct Session;

 private:
  struct Item {
    api::Request request;
    PeerInfo peer;
    std::shared_ptr<ResponseSink> sink;
  };

  explicit Engine(EngineOptions options);
  void loop();
  void process(Item& item);
  bool step();  // one batched forward per model with work; false when idle
  double now() const;

  // request handlers (engine thread); each answers through item.sink
  void on_load_model(Item& it);
  void on_list_models(Item& it);
  void on_unload_model(Item& it);
  void on_create_session(Item& it);
  void on_append(Item& it);
  void on_generate(Item& it);
  void on_cancel(Item& it);
  void on_fork(Item& it);
  void on_save(Item& it);
  void on_restore(Item& it);
  void on_close(Item& it);
  void on_list_sessions(Item& it);
  void on_stats(Item& it);
  void on_tokenize(Item& it);
  void on_detokenize(Item& it);

  Result<Model*> find_model(const std::string& name);
  Result<Session*> find_session(const api::SessionRef& ref, uid_t uid);
  // find_session, then FAILED_PRECONDITION when a generate or an append is still running on it.
  Result<Session*> find_idle_session(const api::SessionRef& ref, uid_t uid);
  api::SessionInfo session_info(const Session& s) const;
  api::ModelInfo model_info(const Model& m) const;

  // cache settings: the pool of m for `cache` (validated; made when new).
  Result<CachePool*> pool_for(Model* m, const api::CacheSettings& cache);
  void drop_pool_if_unused(CachePool* p);

  // tiers (engine_tiers.cc)
  Status ensure_resident(Session* s, const std::vector<Session*>& keep = {});
  // Demotes sessions (not in keep) until p can take blocks_needed blocks.
  Status make_room(CachePool* p, int64_t blocks_needed, const std::vector<Session*>& keep);
  // Plans `requests` on p's pool; when they do not fit, demotes sessions (not in keep) until
  // blocks_needed blocks are free and plans again; commits.
  Status commit_with_room(CachePool* p, std::span<const cache::PoolRequest> requests, int64_t blocks_needed,
                          const std::vector<Session*>& keep);
  Status demote(Session* s);
  // Sequence `id` in p's pool holding `image` (room made by demoting sessions not in keep); on
  // failure the pool holds nothing for id.
  Status import_into_pool(CachePool* p, uint64_t id, const cache::SequenceImage& image,
                          const std::vector<Session*>& keep);
  // GPU tier (engine_tiers.cc)
  bool gpu_enabled() const { return static_cast<bool>(opt_.make_device) && opt_.gpu_budget_bytes > 0; }
  uint64_t gpu_used_bytes() const;
  Result<model::DeviceModel*> device_for(CachePool* p);
  // s on the device with room for n more tokens (promoted from host or disk, or grown), GPU
  // sessions not in keep moved to host to make room.
  Status place_on_gpu(Session* s, int n, const std::vector<Session*>& keep);
  Status make_gpu_room(uint64_t bytes, const std::vector<Session*>& keep);
  Status demote_to_host(Session* s, const std::vector<Session*>& keep);
  Status append_positions(Session* s, int n, const std::vector<Session*>& keep);
  Status save_session(Session* s, const std::string& path);
  Result<Session*> restore_session_file(const std::string& path, uid_t uid, const std::string& name);
  std::string saved_path(uid_t uid, const std::string& file_name) const;
  void free_session(Session* s);
  uint64_t disk_used_bytes() const;

  // generation
  void finish_generation(Session* s, api::Code code, const std::string& stop_reason, const std::string& message);
  void emit_token(Session* s, int32_t token);
  void fail_session_work(Session* s, const Status& st);

  EngineOptions opt_;
  std::unique_ptr<FileSystem> own_fs_;
  FileSystem* fs_ = nullptr;
  double start_time_ = 0.0;

  // queue (any thread)
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::vector<uint64_t> closed_connections_;
  bool stopping_ = false, save_on_stop_ = false, stopped_ = false;
  std::condition_variable stopped_cv_;
  std::thread thread_;

  // engine-thread state
  std::unique_ptr<cache::SharedBudget> host_budget_;  // before models_: their pools draw from it
  std::map<std::string, std::unique_ptr<Model>> models_;
  std::map<uint64_t, std::unique_ptr<Session>> sessions_;
  uint64_t next_session_id_ = 1;
  size_t rr_cursor_ = 0;  // round-robin start for prefill fairness

  mutable std::mutex counters_mu_;
  EngineCounters counters_;
  std::atomic<uint32_t> queue_depth_{0};
};

}  // namespace palu::daemon
