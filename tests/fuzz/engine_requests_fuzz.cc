// Fuzz target: sequences of requests of every type, as decoded protobuf messages, into a fresh
// engine (daemon/engine.h) with a tiny random model loaded: the request validation and handling
// that sit behind the socket server (names that become file names, token ids, sampling ranges,
// session references across uids and connections, save / restore / fork / close / cancel, streams
// whose client stops reading).
//
// Input: records of [flags u8][length u16 LE][serialized palu.api.v1.Request]. flags bit 0: the
// request comes from another uid; bits 1-2: connection id 1..4; bits 4-7: when non-zero, the
// client stops reading after that many responses (as the server's sink does when a backlog
// overflows). LoadModel paths are replaced by the tiny model's directory (the fuzzer must not
// read arbitrary files).
//
// Properties: every request is answered (a final response, or a refused send for a client that
// stopped reading) within 10 s: no hang; every message is valid UTF-8; the engine stops cleanly.
//
// Seed: PALU_FUZZ_WRITE_SEED=DIR ./fuzz_engine_requests -runs=0 writes sessions of requests.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>

#include "daemon/engine.h"
#include "model/safetensors.h"
#include "sdk/proto/framing.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/request_seeds.h"

namespace {

namespace api = palu::api::v1;
using palu::daemon::PeerInfo;

// A random 2-layer Llama (d 32, vocabulary 8000 = ref-mha's tokenizer, context 128).
const std::string& model_dir() {
  static const std::string dir = [] {
    const std::string d = palu::fuzz::scratch_dir() + "/tiny";
    std::filesystem::create_directories(d);
    std::ofstream(d + "/config.json")
        << R"({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8000, "rms_norm_eps": 1e-5,
               "rope_theta": 10000.0, "tie_word_embeddings": true, "max_position_embeddings": 128,
               "bos_token_id": 1, "eos_token_id": 2})";
    std::mt19937 rng(3);
    std::vector<std::string> names;
    std::vector<std::vector<int64_t>> shapes;
    std::vector<std::vector<float>> data;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale) {
      int64_t n = 1;
      for (int64_t x : shape) n *= x;
      std::normal_distribution<float> dist(0.f, scale);
      std::vector<float> v((size_t)n);
      for (float& x : v) x = dist(rng);
      names.push_back(name);
      shapes.push_back(std::move(shape));
      data.push_back(std::move(v));
    };
    add("model.embed_tokens.weight", {8000, 32}, 0.5f);
    add("model.norm.weight", {32}, 1.f);
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {32}, 1.f);
      add(p + "post_attention_layernorm.weight", {32}, 1.f);
      add(p + "self_attn.q_proj.weight", {32, 32}, 0.05f);
      add(p + "self_attn.k_proj.weight", {16, 32}, 0.05f);
      add(p + "self_attn.v_proj.weight", {16, 32}, 0.05f);
      add(p + "self_attn.o_proj.weight", {32, 32}, 0.05f);
      add(p + "mlp.gate_proj.weight", {64, 32}, 0.05f);
      add(p + "mlp.up_proj.weight", {64, 32}, 0.05f);
      add(p + "mlp.down_proj.weight", {32, 64}, 0.05f);
    }
    std::vector<palu::model::TensorToWrite> tensors;
    for (size_t i = 0; i < names.size(); ++i) tensors.push_back({names[i], palu::DType::kF32, shapes[i], data[i].data()});
    const palu::Status st = palu::model::write_safetensors_file(d + "/model.safetensors", tensors);
    PALU_FUZZ_CHECK(st.is_ok(), st.message().c_str());
    std::filesystem::copy_file(palu::fuzz::shared_file("models/ref-mha/tokenizer.model"), d + "/tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
    return d;
  }();
  return dir;
}

// Records responses; refuses every send after `accept` of them when accept > 0.
class Sink final : public palu::daemon::ResponseSink {
 public:
  explicit Sink(int accept) : accept_(accept) {}
  bool send(const api::Response& r) override {
    PALU_FUZZ_CHECK(palu::api::is_valid_utf8(r.message()), "response messages are UTF-8");
    std::lock_guard lock(mu_);
    if (accept_ > 0 && sends_ >= accept_) {
      refused_ = true;
      cv_.notify_all();
      return false;
    }
    ++sends_;
    if (r.final()) final_ = true;
    cv_.notify_all();
    return true;
  }
  bool closed() const override {
    std::lock_guard lock(mu_);
    return refused_;
  }
  // True when a final response came or a send was refused within the timeout.
  bool wait_done(int timeout_ms) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return final_ || refused_; });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  const int accept_;
  int sends_ = 0;
  bool final_ = false, refused_ = false;
};

// One request, answered; `peer` as the server would give it.
void run_one(palu::daemon::Engine& engine, api::Request request, const PeerInfo& peer, int accept) {
  auto sink = std::make_shared<Sink>(accept);
  engine.handle(request, peer, sink);
  if (!sink->wait_done(10000)) {
    std::fprintf(stderr, "no answer within 10 s to: %s", palu::api::request_to_json_line(request).c_str());
    PALU_FUZZ_CHECK(false, "every request is answered");
  }
}

void write_seeds(const std::string& dir) {
  auto record = [](uint8_t flags, const api::Request& r) {
    const std::string payload = r.SerializeAsString();
    std::string out(1, (char)flags);
    const uint16_t n = (uint16_t)payload.size();
    out.append(reinterpret_cast<const char*>(&n), 2);
    return out + payload;
  };
  // Each request type on its own, then a session's life: create, append, generate, fork, save,
  // restore, tokenize, detokenize, stats, close; another with a client that stops reading.
  std::string life, other;
  for (const auto& [name, request] : palu::fuzz::every_request_type()) {
    api::Request r = request;
    if (r.has_load_model()) r.mutable_load_model()->set_name("second");
    if (r.has_create_session()) r.mutable_create_session()->set_model("");
    if (r.has_tokenize()) r.mutable_tokenize()->set_model("");
    if (r.has_detokenize()) r.mutable_detokenize()->set_model("");
    if (r.has_generate()) r.mutable_generate()->set_max_tokens(8);
    palu::fuzz::write_seed_file(dir + "/" + name, record(2, r));
    if (name != "load_model" && name != "unload_model" && name != "handshake") life += record(2, r);
  }
  palu::fuzz::write_seed_file(dir + "/session_life", life);
  api::Request create, gen;
  create.mutable_create_session()->set_name("x");
  gen.mutable_generate()->mutable_session()->set_name("x");
  gen.mutable_generate()->set_max_tokens(50);
  other = record(4, create) + record(4 | (3 << 4), gen) + record(4, gen) + record(5, gen);
  palu::fuzz::write_seed_file(dir + "/stop_reading_then_other_uid", other);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in a string field is a parse failure the targets expect; keep the log quiet.
  google::protobuf::SetLogHandler(nullptr);
  if (const char* dir = std::getenv("PALU_FUZZ_WRITE_SEED")) write_seeds(dir);
  (void)model_dir();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string state = palu::fuzz::scratch_dir() + "/state";
  std::error_code ec;
  std::filesystem::remove_all(state, ec);
  palu::daemon::EngineOptions o;
  o.host_budget_bytes = 4ull << 20;
  o.state_dir = state;
  o.max_queue = 64;
  o.max_sessions = 16;
  o.max_generate_tokens = 64;
  o.prefill_chunk_tokens = 32;
  auto engine = palu::daemon::Engine::create(o);
  PALU_FUZZ_CHECK(engine.is_ok(), engine.status().message().c_str());
  api::CacheSettings cache;
  const palu::Status loaded = (*engine)->load_model("tiny", model_dir(), cache);
  PALU_FUZZ_CHECK(loaded.is_ok(), loaded.message().c_str());
  (*engine)->start();

  size_t at = 0;
  int requests = 0;
  while (at + 3 <= size && requests < 32) {
    const uint8_t flags = data[at];
    uint16_t n;
    std::memcpy(&n, data + at + 1, 2);
    at += 3;
    n = (uint16_t)std::min<size_t>(n, size - at);
    api::Request request;
    const bool parsed = request.ParseFromArray(data + at, n);
    at += n;
    if (!parsed) continue;
    if (request.has_load_model()) request.mutable_load_model()->set_path(model_dir());
    ++requests;
    PeerInfo peer;
    peer.uid = ::getuid() + (flags & 1);
    peer.gid = ::getgid();
    peer.pid = ::getpid();
    peer.connection_id = 1 + ((flags >> 1) & 3);
    run_one(**engine, request, peer, flags >> 4);
  }
  (*engine)->stop(false);
  return 0;
}
