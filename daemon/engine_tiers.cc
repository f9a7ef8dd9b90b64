// Engine: memory tiers (host pool ↔ disk files) and session persistence (save / restore).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "daemon/engine.h"
#include "daemon/engine_state.h"
#include "daemon/session_file.h"

namespace palu::daemon {

namespace {

std::string bytes_str(uint64_t b) {
  char buf[64];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / 1073741824.0);
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", b / 1048576.0);
  else std::snprintf(buf, sizeof buf, "%llu bytes", (unsigned long long)b);
  return buf;
}

}  // namespace

uint64_t Engine::disk_used_bytes() const {
  uint64_t n = 0;
  for (const auto& [id, s] : sessions_) {
    if (!s->resident()) n += s->spill_bytes;
  }
  return n;
}

std::string Engine::saved_path(uid_t uid, const std::string& file_name) const {
  return opt_.state_dir + "/sessions/" + std::to_string(uid) + "/" + file_name + ".palu";
}

// The session's state as a session file (its cache blocks exported from the pool).
// metadata_json carries what the engine needs beyond the cache bytes: the session's context and
// its cache setting (files written before per-session settings lack the two cache keys: they
// were made with the model's setting).
static Result<SessionFile> snapshot(const Engine::Model& m, const Engine::Session& s) {
  SessionFile f;
  f.name = s.name;
  f.owner_uid = s.owner;
  f.model_name = m.name;
  f.model_fingerprint = m.fingerprint;
  f.cache_description = s.pool->pool->layout().describe();
  f.tokens = s.tokens;
  f.metadata_json = "{\"max_context\": " + std::to_string(s.max_context) +
                    ", \"latent_bits\": " + std::to_string(s.pool->cache.latent_bits()) +
                    ", \"window_tokens\": " + std::to_string(s.pool->cache.window_tokens()) + "}";
  if (s.on_gpu()) {
    PALU_ASSIGN_OR_RETURN(f.image, s.dev->export_image(s.pool->pool->layout()));
  } else {
    PALU_ASSIGN_OR_RETURN(f.image, s.pool->pool->export_sequence((cache::SeqId)s.id));
  }
  return f;
}

void Engine::free_session(Session* s) {
  Model* m = s->model;
  CachePool* p = s->pool;
  if (s->on_gpu()) {
    s->dev.reset();
  } else if (s->resident()) {
    auto plan = p->pool->plan(cache::PoolRequest::free((cache::SeqId)s->id));
    if (plan.is_ok()) (void)p->pool->commit(plan.value());
  } else if (!s->spill_path.empty()) {
    (void)fs_->remove(s->spill_path);
  }
  --m->sessions;
  --p->sessions;
  sessions_.erase(s->id);
  drop_pool_if_unused(p);
}

Status Engine::demote(Session* s) {
  Model* m = s->model;
  CachePool* p = s->pool;
  if (opt_.disk_dir.empty()) {
    return resource_exhausted("no disk tier to move sessions to (start palud with --disk-dir)");
  }
  PALU_ASSIGN_OR_RETURN(SessionFile f, snapshot(*m, *s));
  const uint64_t estimate = f.image.bytes.size() + f.tokens.size() * 4 + 4096;
  if (disk_used_bytes() + estimate > opt_.disk_budget_bytes) {
    return resource_exhausted("the disk tier holds " + bytes_str(disk_used_bytes()) + " of its " +
                              bytes_str(opt_.disk_budget_bytes) + " budget; moving session '" + s->name +
                              "' there needs " + bytes_str(estimate));
  }
  const std::string path = opt_.disk_dir + "/spill-" + std::to_string(s->id) + ".palu";
  PALU_RETURN_IF_ERROR(write_session_file(*fs_, path, f));
  auto size = fs_->file_size(path);
  PALU_ASSIGN_OR_RETURN(cache::Plan plan, p->pool->plan(cache::PoolRequest::free((cache::SeqId)s->id)));
  PALU_RETURN_IF_ERROR(p->pool->commit(plan));
  s->tier = Tier::kDisk;
  s->spill_path = path;
  s->spill_bytes = size.is_ok() ? size.value() : estimate;
  std::lock_guard<std::mutex> lock(counters_mu_);
  ++counters_.demotions;
  return Status::ok();
}

Status Engine::make_room(CachePool* p, int64_t blocks_needed, const std::vector<Session*>& keep) {
  while (p->pool->stats().free_blocks < blocks_needed) {
    // Victim: resident (in any pool: they share the host budget), not needed this step; idle
    // sessions before busy ones, least recently used first.
    Session* victim = nullptr;
    for (auto& [id, sp] : sessions_) {
      Session* s = sp.get();
      if (!s->resident() || (s->tokens.empty() && s->pending.empty())) continue;
      if (std::find(keep.begin(), keep.end(), s) != keep.end()) continue;
      if (victim == nullptr || std::make_pair(s->busy(), s->last_used) < std::make_pair(victim->busy(), victim->last_used)) {
        victim = s;
      }
    }
    const auto st = p->pool->stats();
    if (victim == nullptr) {
      return resource_exhausted("the KV cache of model '" + p->model->name + "' needs " + std::to_string(blocks_needed) +
                                " free blocks (" + bytes_str((uint64_t)blocks_needed * st.block_bytes) + "); the host budget has " +
                                bytes_str(host_budget_->free_bytes()) + " of " +
                                bytes_str(host_budget_->capacity_bytes()) +
                                " free and no other session can be moved to disk");
    }
    PALU_RETURN_IF_ERROR(demote(victim));
  }
  return Status::ok();
}

Status Engine::commit_with_room(CachePool* p, std::span<const cache::PoolRequest> requests, int64_t blocks_needed,
                                const std::vector<Session*>& keep) {
  auto plan = p->pool->plan(requests);
  if (!plan.is_ok() && plan.status().code() == StatusCode::kResourceExhausted) {
    PALU_RETURN_IF_ERROR(make_room(p, blocks_needed, keep));
    plan = p->pool->plan(requests);
  }
  if (!plan.is_ok()) return plan.status();
  return p->pool->commit(plan.value());
}

Status Engine::import_into_pool(CachePool* p, uint64_t id, const cache::SequenceImage& image,
                                const std::vector<Session*>& keep) {
  const int64_t len = image.length;
  const cache::PoolRequest reqs[2] = {cache::PoolRequest::create((cache::SeqId)id),
                                      cache::PoolRequest::append((cache::SeqId)id, len)};
  PALU_RETURN_IF_ERROR(commit_with_room(p, reqs, p->pool->layout().session_blocks(len), keep));
  Status st = p->pool->import_sequence((cache::SeqId)id, image);
  if (!st.is_ok()) {
    auto undo = p->pool->plan(cache::PoolRequest::free((cache::SeqId)id));
    if (undo.is_ok()) (void)p->pool->commit(undo.value());
  }
  return st;
}

Status Engine::append_positions(Session* s, int n, const std::vector<Session*>& keep) {
  const auto& L = s->pool->pool->layout();
  const int64_t len = (int64_t)s->tokens.size();
  std::vector<Session*> k = keep;
  k.push_back(s);
  const cache::PoolRequest req = cache::PoolRequest::append((cache::SeqId)s->id, n);
  return commit_with_room(s->pool, {&req, 1}, L.blocks_for_tokens(len + n) - L.blocks_for_tokens(len), k);
}

Status Engine::ensure_resident(Session* s, const std::vector<Session*>& keep) {
  if (s->resident()) return Status::ok();
  if (s->on_gpu()) return demote_to_host(s, keep);
  Model* m = s->model;
  CachePool* p = s->pool;
  PALU_ASSIGN_OR_RETURN(SessionFile f, read_session_file(*fs_, s->spill_path, opt_.max_session_file_bytes));
  PALU_RETURN_IF_ERROR(check_session_binding(f, m->fingerprint, p->layout_hash));
  std::vector<Session*> k = keep;
  k.push_back(s);
  PALU_RETURN_IF_ERROR(import_into_pool(p, s->id, f.image, k));
  (void)fs_->remove(s->spill_path);
  s->tier = Tier::kHost;
  s->spill_path.clear();
  s->spill_bytes = 0;
  std::lock_guard<std::mutex> lock(counters_mu_);
  ++counters_.restorations;
  return Status::ok();
}

// ---- GPU tier -----------------------------------------------------------------------------

// What a device sequence counts against the GPU budget: the bytes it can grow to without a
// new placement (its capacity by the pool formula), or what the device says it holds when that
// is more (the CUDA model allocates the whole capacity up front).
static uint64_t gpu_charge(const model::DeviceSequence& d, const cache::CacheLayout& L) {
  return std::max<uint64_t>(d.cache_bytes(), L.session_bytes(d.capacity()));
}

uint64_t Engine::gpu_used_bytes() const {
  uint64_t n = 0;
  for (const auto& [id, s] : sessions_) {
    if (s->on_gpu()) n += gpu_charge(*s->dev, s->pool->pool->layout());
  }
  return n;
}

Result<model::DeviceModel*> Engine::device_for(CachePool* p) {
  if (p->device) return p->device.get();
  if (!p->device_error.is_ok()) return p->device_error;
  auto dm = opt_.make_device(p->model->m(), p->options);
  if (!dm.is_ok()) {
    p->device_error = Status(dm.status().code(), "GPU tier for model '" + p->model->name + "' (" +
                                                     p->pool->layout().describe() + "): " + dm.status().message());
    std::fprintf(stderr, "palud: %s; its sessions run on the CPU\n", p->device_error.message().c_str());
    return p->device_error;
  }
  p->device = std::move(dm).value();
  return p->device.get();
}

Status Engine::make_gpu_room(uint64_t bytes, const std::vector<Session*>& keep) {
  while (gpu_used_bytes() + bytes > opt_.gpu_budget_bytes) {
    Session* victim = nullptr;
    for (auto& [id, sp] : sessions_) {
      Session* s = sp.get();
      if (!s->on_gpu() || std::find(keep.begin(), keep.end(), s) != keep.end()) continue;
      if (victim == nullptr || std::make_pair(s->busy(), s->last_used) < std::make_pair(victim->busy(), victim->last_used)) {
        victim = s;
      }
    }
    if (victim == nullptr) {
      return resource_exhausted("the GPU tier needs " + bytes_str(bytes) + "; " + bytes_str(gpu_used_bytes()) + " of its " +
                                bytes_str(opt_.gpu_budget_bytes) + " budget are in use by sessions of this step");
    }
    PALU_RETURN_IF_ERROR(demote_to_host(victim, keep));
  }
  return Status::ok();
}

Status Engine::demote_to_host(Session* s, const std::vector<Session*>& keep) {
  CachePool* p = s->pool;
  PALU_ASSIGN_OR_RETURN(cache::SequenceImage img, s->dev->export_image(p->pool->layout()));
  std::vector<Session*> k = keep;
  k.push_back(s);
  PALU_RETURN_IF_ERROR(import_into_pool(p, s->id, img, k));
  s->dev.reset();
  s->tier = Tier::kHost;
  std::lock_guard<std::mutex> lock(counters_mu_);
  ++counters_.demotions;
  return Status::ok();
}

Status Engine::place_on_gpu(Session* s, int n, const std::vector<Session*>& keep) {
  CachePool* p = s->pool;
  PALU_ASSIGN_OR_RETURN(model::DeviceModel * dm, device_for(p));
  const int64_t need = (int64_t)s->tokens.size() + n;
  if (s->on_gpu() && s->dev->capacity() >= need) return Status::ok();
  // Capacity: the next power of two ≥ need (at least 256), within the session's context.
  int64_t cap = 256;
  while (cap < need) cap *= 2;
  cap = std::min<int64_t>(cap, s->max_context);
  if (cap < need) return out_of_range("the session needs " + std::to_string(need) + " positions, over its context");
  const cache::CacheLayout& L = p->pool->layout();
  std::vector<Session*> k = keep;
  k.push_back(s);
  // Room first (an estimate: the pool's bytes for that capacity; checked exactly below).
  PALU_RETURN_IF_ERROR(make_gpu_room(L.session_bytes(cap), k));
  PALU_ASSIGN_OR_RETURN(std::unique_ptr<model::DeviceSequence> seq, dm->new_sequence((int)cap));
  if (gpu_used_bytes() + gpu_charge(*seq, L) > opt_.gpu_budget_bytes) {
    return resource_exhausted("the GPU tier needs " + bytes_str(gpu_charge(*seq, L)) + " for session '" + s->name + "'; " +
                              bytes_str(gpu_used_bytes()) + " of its " + bytes_str(opt_.gpu_budget_bytes) + " are in use");
  }
  cache::SequenceImage img;
  std::string spill_to_remove;
  if (s->on_gpu()) {
    PALU_ASSIGN_OR_RETURN(img, s->dev->export_image(L));
  } else if (s->resident()) {
    PALU_ASSIGN_OR_RETURN(img, p->pool->export_sequence((cache::SeqId)s->id));
  } else {
    PALU_ASSIGN_OR_RETURN(SessionFile f, read_session_file(*fs_, s->spill_path, opt_.max_session_file_bytes));
    PALU_RETURN_IF_ERROR(check_session_binding(f, s->model->fingerprint, p->layout_hash));
    img = std::move(f.image);
    spill_to_remove = s->spill_path;
  }
  PALU_RETURN_IF_ERROR(seq->import_image(L, img));
  // Committed: drop the old copy.
  const bool promoted = !s->on_gpu();
  if (s->resident()) {
    auto plan = p->pool->plan(cache::PoolRequest::free((cache::SeqId)s->id));
    if (plan.is_ok()) (void)p->pool->commit(plan.value());
  } else if (!spill_to_remove.empty()) {
    (void)fs_->remove(spill_to_remove);
    s->spill_path.clear();
    s->spill_bytes = 0;
  }
  s->dev = std::move(seq);
  s->tier = Tier::kGpu;
  if (promoted) {
    std::lock_guard<std::mutex> lock(counters_mu_);
    ++counters_.restorations;
  }
  return Status::ok();
}

Status Engine::save_session(Session* s, const std::string& path) {
  Model* m = s->model;
  SessionFile f;
  if (s->resident() || s->on_gpu()) {
    PALU_ASSIGN_OR_RETURN(f, snapshot(*m, *s));
  } else {
    PALU_ASSIGN_OR_RETURN(f, read_session_file(*fs_, s->spill_path, opt_.max_session_file_bytes));
    f.name = s->name;
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const std::string sessions_dir = std::filesystem::path(dir).parent_path().string();
  if (!path_exists(*fs_, sessions_dir)) PALU_RETURN_IF_ERROR(fs_->make_dir(sessions_dir, 0700));
  if (!path_exists(*fs_, dir)) PALU_RETURN_IF_ERROR(fs_->make_dir(dir, 0700));
  return write_session_file(*fs_, path, f);
}

Result<Engine::Session*> Engine::restore_session_file(const std::string& path, uid_t uid, const std::string& name) {
  if (!path_exists(*fs_, path)) return not_found("no saved session " + path);
  auto fr = read_session_file(*fs_, path, opt_.max_session_file_bytes);
  if (!fr.is_ok()) {
    if (fr.status().code() == StatusCode::kDataLoss) {
      auto aside = move_aside(*fs_, path);
      return data_loss(fr.status().message() + (aside.is_ok() ? " (the file was kept aside as " + aside.value() + ")" : ""));
    }
    return fr.status();
  }
  SessionFile f = std::move(fr).value();
  if (f.owner_uid != uid) return permission_denied("saved session " + path + " belongs to another user");
  // Its cache setting and context (metadata_json; a file without the setting used its
  // model's).
  std::optional<api::CacheSettings> setting;
  int max_context = 0;
  {
    const nlohmann::json meta = nlohmann::json::parse(f.metadata_json, nullptr, /*allow_exceptions=*/false);
    if (meta.is_object()) {
      auto uint_of = [&](const char* key) -> std::optional<uint32_t> {
        auto it = meta.find(key);
        if (it == meta.end() || !it->is_number_unsigned() || it->get<uint64_t>() > UINT32_MAX) return std::nullopt;
        return (uint32_t)it->get<uint64_t>();
      };
      if (auto bits = uint_of("latent_bits")) {
        setting.emplace();
        setting->set_latent_bits(*bits);
        setting->set_window_tokens(uint_of("window_tokens").value_or(0));
      }
      max_context = (int)std::min<uint32_t>(uint_of("max_context").value_or(0), (uint32_t)INT32_MAX);
    }
  }
  // The model it was saved with: same fingerprint, and the cache layout of the setting (name
  // preferred).
  Model* m = nullptr;
  CachePool* pool = nullptr;
  Status mismatch = Status::ok();
  for (auto& [n, mp] : models_) {
    if (mp->fingerprint != f.model_fingerprint) continue;
    auto pr = pool_for(mp.get(), setting.value_or(mp->cache));
    if (!pr.is_ok()) {
      mismatch = pr.status();
      continue;
    }
    if (pr.value()->layout_hash != f.image.layout_hash) {
      mismatch = check_session_binding(f, mp->fingerprint, pr.value()->layout_hash);
      drop_pool_if_unused(pr.value());
      continue;
    }
    if (m == nullptr || mp->name == f.model_name) {
      if (pool != nullptr && pool != pr.value()) drop_pool_if_unused(pool);
      m = mp.get();
      pool = pr.value();
    } else {
      drop_pool_if_unused(pr.value());
    }
  }
  if (m == nullptr) {
    auto it = models_.find(f.model_name);
    Model* ref = it != models_.end() ? it->second.get() : models_.empty() ? nullptr : models_.begin()->second.get();
    if (ref == nullptr) return failed_precondition("saved session " + path + " needs model '" + f.model_name + "', which is not loaded");
    PALU_RETURN_IF_ERROR(check_session_binding(f, ref->fingerprint, ref->default_pool()->layout_hash));
    if (!mismatch.is_ok()) return mismatch;
    return failed_precondition("saved session " + path + " does not match any loaded model");
  }
  if ((int64_t)f.tokens.size() != f.image.length) {
    return data_loss("saved session " + path + " has " + std::to_string(f.tokens.size()) + " tokens but " +
                     std::to_string(f.image.length) + " cached positions");
  }
  const uint64_t id = next_session_id_++;
  const int64_t len = f.image.length;
  if (Status st = import_into_pool(pool, id, f.image, {}); !st.is_ok()) {
    drop_pool_if_unused(pool);
    return st;
  }
  auto s = std::make_unique<Session>();
  s->id = id;
  s->name = name;
  s->owner = uid;
  s->model = m;
  s->pool = pool;
  s->tokens = std::move(f.tokens);
  s->max_context = max_context > 0 ? std::min(max_context, m->max_context) : m->max_context;
  s->last_used = now();
  s->saved = true;
  s->saved_file = path;
  // The next-token logits are not saved: run the last token again to get them.
  if (!s->tokens.empty()) {
    auto cut = pool->pool->plan(cache::PoolRequest::truncate((cache::SeqId)id, len - 1));
    if (cut.is_ok()) (void)pool->pool->commit(cut.value());
    s->pending.push_back(s->tokens.back());
    s->tokens.pop_back();
  }
  ++m->sessions;
  ++pool->sessions;
  Session* raw = s.get();
  sessions_[id] = std::move(s);
  return raw;
}

Result<int> Engine::restore_saved_sessions() {
  if (opt_.state_dir.empty()) return 0;
  const std::string root = opt_.state_dir + "/sessions";
  if (!path_exists(*fs_, root)) return 0;
  int restored = 0;
  PALU_ASSIGN_OR_RETURN(std::vector<std::string> uids, fs_->list_dir(root));
  for (const std::string& u : uids) {
    char* end = nullptr;
    const unsigned long uid = std::strtoul(u.c_str(), &end, 10);
    if (u.empty() || *end != '\0') continue;
    auto files = fs_->list_dir(root + "/" + u);
    if (!files.is_ok()) continue;
    for (const std::string& f : files.value()) {
      if (f.size() <= 5 || f.compare(f.size() - 5, 5, ".palu") != 0) continue;
      const std::string name = f.substr(0, f.size() - 5);
      auto s = restore_session_file(root + "/" + u + "/" + f, (uid_t)uid, name);
      if (s.is_ok()) {
        ++restored;
      } else {
        std::fprintf(stderr, "palud: saved session %s/%s/%s not restored: %s\n", root.c_str(), u.c_str(), f.c_str(),
                     s.status().to_string().c_str());
      }
    }
  }
  return restored;
}

}  // namespace palu::daemon
