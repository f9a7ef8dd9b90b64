// Helpers for tests of the engine in-process: a tiny Llama model directory on disk (what
// LoadModel reads), a ResponseSink that records responses, and a blocking call with a timeout.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "daemon/engine.h"
#include "model/safetensors.h"

namespace palu::daemon::testing {

inline std::string shared_dir() {
  if (const char* env = std::getenv("PALU_SHARED_DIR")) return env;
  return PALU_DEFAULT_SHARED_DIR;
}

// A directory removed at destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    std::string tmpl = std::filesystem::temp_directory_path().string() + "/palu_" + tag + "_XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A random 2-layer Llama (d 32, 4 heads, 2 KV heads, vocabulary 8000 = ref-mha's tokenizer)
// written as config.json + model.safetensors + tokenizer.model. Another seed gives another
// model (another fingerprint) of the same shape and cache layout.
class TinyModelDir {
 public:
  TinyModelDir(const std::string& parent, const std::string& name, uint32_t seed) {
    dir_ = parent + "/" + name;
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ + "/config.json")
        << R"({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8000, "rms_norm_eps": 1e-5,
               "rope_theta": 10000.0, "tie_word_embeddings": true, "max_position_embeddings": 256,
               "bos_token_id": 1, "eos_token_id": 2})";
    std::mt19937 rng(seed);
    add("model.embed_tokens.weight", {8000, 32}, 0.5f, &rng);
    add("model.norm.weight", {32}, 1.0f, &rng);
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {32}, 1.0f, &rng);
      add(p + "post_attention_layernorm.weight", {32}, 1.0f, &rng);
      add(p + "self_attn.q_proj.weight", {32, 32}, 0.05f, &rng);
      add(p + "self_attn.k_proj.weight", {16, 32}, 0.05f, &rng);
      add(p + "self_attn.v_proj.weight", {16, 32}, 0.05f, &rng);
      add(p + "self_attn.o_proj.weight", {32, 32}, 0.05f, &rng);
      add(p + "mlp.gate_proj.weight", {64, 32}, 0.05f, &rng);
      add(p + "mlp.up_proj.weight", {64, 32}, 0.05f, &rng);
      add(p + "mlp.down_proj.weight", {32, 64}, 0.05f, &rng);
    }
    std::vector<model::TensorToWrite> tensors;
    for (size_t i = 0; i < names_.size(); ++i) {
      tensors.push_back({names_[i], DType::kF32, shapes_[i], data_[i].data()});
    }
    const Status st = model::write_safetensors_file(dir_ + "/model.safetensors", tensors);
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    std::filesystem::copy_file(shared_dir() + "/models/ref-mha/tokenizer.model", dir_ + "/tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
  }
  const std::string& path() const { return dir_; }

 private:
  void add(const std::string& name, std::vector<int64_t> shape, float scale, std::mt19937* rng) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::normal_distribution<float> dist(0.f, scale);
    std::vector<float> v((size_t)n);
    for (float& x : v) x = dist(*rng);
    names_.push_back(name);
    shapes_.push_back(std::move(shape));
    data_.push_back(std::move(v));
  }
  std::string dir_;
  std::vector<std::string> names_;
  std::vector<std::vector<int64_t>> shapes_;
  std::vector<std::vector<float>> data_;
};

// Records every response; wait_final() blocks (bounded) until the final response of an id.
class RecordingSink final : public ResponseSink {
 public:
  bool send(const api::Response& response) override {
    std::lock_guard lock(mu_);
    responses_.push_back(response);
    cv_.notify_all();
    return true;
  }
  bool closed() const override { return false; }

  std::optional<api::Response> wait_final(uint64_t id, int timeout_ms = 20000) {
    std::unique_lock lock(mu_);
    std::optional<api::Response> found;
    cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
      for (const auto& r : responses_) {
        if (r.id() == id && r.final()) {
          found = r;
          return true;
        }
      }
      return false;
    });
    return found;
  }
  std::vector<api::Response> responses() const {
    std::lock_guard lock(mu_);
    return responses_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<api::Response> responses_;
};

inline PeerInfo self_peer(uint64_t connection_id = 1) {
  PeerInfo p;
  p.uid = ::getuid();
  p.gid = ::getgid();
  p.pid = ::getpid();
  p.connection_id = connection_id;
  return p;
}

// Sends one request to a started engine and returns its final response (INTERNAL with a
// message when none came within the timeout, so a test fails instead of hanging).
inline api::Response call(Engine& engine, api::Request request, const PeerInfo& peer = self_peer()) {
  static std::atomic<uint64_t> next_id{1000};
  if (request.id() == 0) request.set_id(next_id++);
  auto sink = std::make_shared<RecordingSink>();
  engine.handle(request, peer, sink);
  auto r = sink->wait_final(request.id());
  if (!r) return make_response(request.id(), api::INTERNAL, "test: no final response within the timeout");
  return *r;
}

inline api::Request load_request(const std::string& name, const std::string& path) {
  api::Request r;
  r.mutable_load_model()->set_name(name);
  r.mutable_load_model()->set_path(path);
  return r;
}
inline api::Request create_request(const std::string& model, const std::string& name, const std::string& prompt) {
  api::Request r;
  r.mutable_create_session()->set_model(model);
  r.mutable_create_session()->set_name(name);
  r.mutable_create_session()->set_system_prompt(prompt);
  return r;
}
inline api::Request append_request(const std::string& session, const std::string& text) {
  api::Request r;
  r.mutable_append()->mutable_session()->set_name(session);
  r.mutable_append()->set_text(text);
  return r;
}
inline api::Request generate_request(const std::string& session, uint32_t max_tokens) {
  api::Request r;
  r.mutable_generate()->mutable_session()->set_name(session);
  r.mutable_generate()->set_max_tokens(max_tokens);
  r.mutable_generate()->set_ignore_eos(true);
  return r;
}
inline api::Request save_request(const std::string& session, const std::string& file) {
  api::Request r;
  r.mutable_save()->mutable_session()->set_name(session);
  r.mutable_save()->set_file_name(file);
  return r;
}
inline api::Request restore_request(const std::string& file, const std::string& name) {
  api::Request r;
  r.mutable_restore()->set_file_name(file);
  r.mutable_restore()->set_name(name);
  return r;
}
inline api::Request simple_request(api::Request::BodyCase body) {
  api::Request r;
  switch (body) {
    case api::Request::kListModels: r.mutable_list_models(); break;
    case api::Request::kListSessions: r.mutable_list_sessions(); break;
    default: r.mutable_stats(); break;
  }
  return r;
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace palu::daemon::testing
