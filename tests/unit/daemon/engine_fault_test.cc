// The engine under bad input and injected faults (issue 9's table, docs/reliability.md): a
// request flood against the bounded queue, disk full and fsync failures during a save, a session
// file saved by another model, model files that lie, the injected clock. Each case checks the
// answer (code and a message naming the problem) and that the engine goes on serving.
//
// The engine runs in-process on a tiny random model written to a temp directory; every wait is
// bounded (RecordingSink::wait_final), so a misbehaving engine fails a test instead of hanging it.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "backends/base/host_alloc.h"
#include "daemon/engine.h"
#include "daemon/file_system.h"
#include "daemon/server.h"
#include "sdk/proto/framing.h"
#include "tests/unit/daemon/engine_test_util.h"

namespace palu::daemon {
namespace {

using namespace palu::daemon::testing;
namespace fs = std::filesystem;

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path().filename().string());
  return out;
}

class EngineFaultTest : public ::testing::Test {
 protected:
  EngineFaultTest() : tmp_("engine_fault"), model_a_(tmp_.path(), "model-a", 11), model_b_(tmp_.path(), "model-b", 12) {}

  // An engine over `fs` (the real file system when null), state in tmp/state.
  std::unique_ptr<Engine> make_engine(FileSystem* fs = nullptr, int max_queue = 1024,
                                      std::function<double()> clock = {}) {
    EngineOptions o;
    o.host_budget_bytes = 8ull << 20;
    o.state_dir = tmp_.path() + "/state";
    o.max_queue = max_queue;
    o.fs = fs;
    o.clock = std::move(clock);
    auto e = Engine::create(std::move(o));
    EXPECT_TRUE(e.is_ok()) << e.status().to_string();
    return e.is_ok() ? std::move(e).value() : nullptr;
  }
  std::string saved_file(const std::string& file) const {
    return tmp_.path() + "/state/sessions/" + std::to_string(::getuid()) + "/" + file + ".palu";
  }

  TempDir tmp_;
  TinyModelDir model_a_, model_b_;
};

// ---- request flood ---------------------------------------------------------------------------

// A flood beyond max_queue: every request over the limit gets BUSY at once (handle() never
// blocks, nothing is dropped silently), the queued ones are answered, and the engine serves
// normally afterwards.
TEST_F(EngineFaultTest, RequestFloodIsAnsweredBusyAndTheEngineGoesOn) {
  constexpr int kQueue = 8, kFlood = 200;
  auto engine = make_engine(nullptr, kQueue);
  ASSERT_NE(engine, nullptr);
  // The engine thread is not started yet: the queue fills exactly.
  auto sink = std::make_shared<RecordingSink>();
  for (int i = 1; i <= kFlood; ++i) {
    api::Request r = simple_request(i % 2 ? api::Request::kListModels : api::Request::kStats);
    r.set_id(i);
    engine->handle(r, self_peer(), sink);
  }
  std::vector<api::Response> early = sink->responses();
  ASSERT_EQ((int)early.size(), kFlood - kQueue);  // answered synchronously: BUSY
  for (const auto& r : early) {
    EXPECT_EQ(r.code(), api::BUSY);
    EXPECT_GT(r.id(), (uint64_t)kQueue);
    EXPECT_TRUE(r.final());
    EXPECT_TRUE(contains(r.message(), "queue is full (8 requests)")) << r.message();
  }
  EXPECT_EQ(engine->counters().busy_refusals, (uint64_t)(kFlood - kQueue));

  engine->start();
  for (int i = 1; i <= kQueue; ++i) {
    auto r = sink->wait_final(i);
    ASSERT_TRUE(r.has_value()) << "queued request " << i << " was not answered";
    EXPECT_EQ(r->code(), api::OK) << r->message();
  }
  // Alive: a model loads and a session generates.
  ASSERT_EQ(call(*engine, load_request("tiny", model_a_.path())).code(), api::OK);
  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Hello")).code(), api::OK);
  auto g = call(*engine, generate_request("s", 4));
  EXPECT_EQ(g.code(), api::OK) << g.message();
  EXPECT_EQ(g.chunk().generated_tokens(), 4u);

  // A flood while the engine runs: every request gets exactly one final answer, OK or BUSY.
  auto sink2 = std::make_shared<RecordingSink>();
  for (int i = 1; i <= kFlood; ++i) {
    api::Request r = simple_request(api::Request::kStats);
    r.set_id(10000 + i);
    engine->handle(r, self_peer(), sink2);
  }
  int ok = 0, busy = 0;
  for (int i = 1; i <= kFlood; ++i) {
    auto r = sink2->wait_final(10000 + i);
    ASSERT_TRUE(r.has_value()) << "request " << i << " of the second flood was not answered";
    if (r->code() == api::OK) ++ok;
    else if (r->code() == api::BUSY) ++busy;
    else ADD_FAILURE() << r->message();
  }
  EXPECT_EQ(ok + busy, kFlood);
  EXPECT_GE(ok, kQueue);
  EXPECT_EQ(call(*engine, simple_request(api::Request::kListSessions)).code(), api::OK);
}

// The same flood through a real socket: the server hands every decoded request to the engine on
// its I/O thread; over max_queue the client reads BUSY for each, the queued ones are answered
// once the engine runs, and the daemon (server + engine) keeps serving new connections.
class FrameClient {
 public:
  explicit FrameClient(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = ::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~FrameClient() { ::close(fd_); }
  bool connected() const { return connected_; }
  bool send(const std::string& bytes) {
    std::string_view rest = bytes;
    while (!rest.empty()) {
      const ssize_t n = ::send(fd_, rest.data(), rest.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      rest.remove_prefix((size_t)n);
    }
    return true;
  }
  // The next response, or nullopt after 5 s.
  std::optional<api::Response> read() {
    for (int waited = 0; waited < 5000;) {
      if (auto f = decoder_.next()) {
        api::Response r;
        if (!r.ParseFromString(f->payload)) return std::nullopt;
        return r;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) {
        waited += 100;
        continue;
      }
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0 || !decoder_.feed(std::string_view(buf, (size_t)n)).is_ok()) return std::nullopt;
    }
    return std::nullopt;
  }
  bool handshake() {
    api::Request h;
    h.set_id(1);
    h.mutable_handshake()->set_protocol_version(palu::api::kProtocolVersion);
    if (!send(palu::api::encode_frame(h))) return false;
    auto r = read();
    return r && r->code() == api::OK;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  palu::api::FrameDecoder decoder_;
};

TEST_F(EngineFaultTest, RequestFloodThroughTheSocketGetsBusyAndTheDaemonStaysAlive) {
  constexpr int kQueue = 4, kFlood = 100;
  auto engine = make_engine(nullptr, kQueue);
  ASSERT_NE(engine, nullptr);
  ServerOptions so;
  so.socket_path = tmp_.path() + "/run/palud.sock";
  so.daemon_version = "test";
  auto server = Server::create(so, engine.get());
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  (*server)->start_in_thread();

  FrameClient flood(so.socket_path);
  ASSERT_TRUE(flood.connected());
  ASSERT_TRUE(flood.handshake());
  std::string burst;
  for (int i = 0; i < kFlood; ++i) {
    api::Request r = simple_request(api::Request::kStats);
    r.set_id(100 + i);
    burst += palu::api::encode_frame(r);
  }
  ASSERT_TRUE(flood.send(burst));  // one write: the engine thread is not running yet
  for (int i = 0; i < kFlood - kQueue; ++i) {
    auto r = flood.read();
    ASSERT_TRUE(r.has_value()) << "BUSY answer " << i << " missing";
    EXPECT_EQ(r->code(), api::BUSY) << r->message();
    EXPECT_GE(r->id(), 100u + kQueue);
  }
  engine->start();
  for (int i = 0; i < kQueue; ++i) {
    auto r = flood.read();
    ASSERT_TRUE(r.has_value()) << "queued request " << i << " not answered";
    EXPECT_EQ(r->code(), api::OK) << r->message();
    EXPECT_LT(r->id(), 100u + kQueue);
  }
  EXPECT_EQ(engine->counters().busy_refusals, (uint64_t)(kFlood - kQueue));

  // Alive: the flooding connection and a new one are both served.
  FrameClient next(so.socket_path);
  ASSERT_TRUE(next.connected());
  ASSERT_TRUE(next.handshake());
  for (FrameClient* c : {&flood, &next}) {
    api::Request r = load_request("tiny", model_a_.path());
    r.set_id(7);
    ASSERT_TRUE(c->send(palu::api::encode_frame(r)));
    auto reply = c->read();
    ASSERT_TRUE(reply.has_value());
    // The first load succeeds; the second finds the name taken: either way a real answer.
    EXPECT_TRUE(reply->code() == api::OK || reply->code() == api::ALREADY_EXISTS) << reply->message();
  }
  EXPECT_EQ((*server)->stats().connections_open, 2u);
  (*server)->stop();
  engine->stop();
}

// ---- disk full and fsync failure during a save ---------------------------------------------

// A save that hits a full disk or a failing fsync (of the file or of its directory) answers
// IO_ERROR naming the problem; the previous save stays byte for byte, no temp file is left, and
// the engine goes on: the session still generates, a later save succeeds and restores.
TEST_F(EngineFaultTest, SaveFailuresAreIoErrorsAndKeepTheOldFile) {
  RealFileSystem real;
  FaultyFileSystem faulty(real);
  auto engine = make_engine(&faulty);
  ASSERT_NE(engine, nullptr);
  engine->start();
  ASSERT_EQ(call(*engine, load_request("tiny", model_a_.path())).code(), api::OK);
  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Once upon a time")).code(), api::OK);
  auto first = call(*engine, save_request("s", "s"));
  ASSERT_EQ(first.code(), api::OK) << first.message();
  const std::string path = saved_file("s");
  const std::string old_bytes = read_bytes(path);
  ASSERT_FALSE(old_bytes.empty());

  struct Case {
    const char* name;
    std::function<void()> inject;
    const char* expect;  // in the message
  };
  const std::vector<Case> cases = {
      {"disk full at the first byte", [&] { faulty.disk_full_after(0); }, "disk full"},
      {"disk full mid-file", [&] { faulty.disk_full_after(old_bytes.size() / 2); }, "disk full"},
      {"write error", [&] { faulty.fail_write(2, EIO); }, "Input/output error"},
      {"fsync of the file", [&] { faulty.fail_sync(1, EIO); }, "fsync"},
      {"fsync of the file, quota", [&] { faulty.fail_sync(1, EDQUOT); }, "quota"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    // The session changes, so a successful save would change the file.
    ASSERT_EQ(call(*engine, append_request("s", " there was a fox")).code(), api::OK);
    c.inject();
    auto r = call(*engine, save_request("s", "s"));
    faulty.clear_faults();
    EXPECT_EQ(r.code(), api::IO_ERROR) << r.message();
    EXPECT_TRUE(contains(r.message(), c.expect)) << r.message();
    EXPECT_EQ(read_bytes(path), old_bytes) << "the previous save must stay whole";
    for (const auto& n : names_in(fs::path(path).parent_path().string())) {
      EXPECT_FALSE(is_atomic_temp_name(n)) << "temp file left behind: " << n;
    }
    // The engine goes on.
    auto g = call(*engine, generate_request("s", 2));
    EXPECT_EQ(g.code(), api::OK) << g.message();
  }
  auto ok = call(*engine, save_request("s", "s"));
  ASSERT_EQ(ok.code(), api::OK) << ok.message();
  EXPECT_NE(read_bytes(path), old_bytes);
  auto restored = call(*engine, restore_request("s", "s2"));
  ASSERT_EQ(restored.code(), api::OK) << restored.message();
  EXPECT_EQ(restored.session().tokens(), ok.session().tokens());
}

// ---- a session file from another model -------------------------------------------------------

// A file saved by model A, restored while only model B (same shapes, other weights) is loaded
// under the same name: FAILED_PRECONDITION naming both fingerprints; the file is not corrupt, so
// it stays where it is (not moved aside); model B keeps serving, and once A is back (under another
// name) the file restores onto it.
TEST_F(EngineFaultTest, SessionFileFromAnotherModelIsFailedPrecondition) {
  auto engine = make_engine();
  ASSERT_NE(engine, nullptr);
  engine->start();
  ASSERT_EQ(call(*engine, load_request("tiny", model_a_.path())).code(), api::OK);
  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Hello there")).code(), api::OK);
  ASSERT_EQ(call(*engine, save_request("s", "from-a")).code(), api::OK);
  api::Request close;
  close.mutable_close()->mutable_session()->set_name("s");
  ASSERT_EQ(call(*engine, close).code(), api::OK);
  api::Request unload;
  unload.mutable_unload_model()->set_name("tiny");
  ASSERT_EQ(call(*engine, unload).code(), api::OK);
  auto loaded_b = call(*engine, load_request("tiny", model_b_.path()));
  ASSERT_EQ(loaded_b.code(), api::OK) << loaded_b.message();

  const std::string bytes = read_bytes(saved_file("from-a"));
  auto r = call(*engine, restore_request("from-a", "s"));
  EXPECT_EQ(r.code(), api::FAILED_PRECONDITION) << r.message();
  EXPECT_TRUE(contains(r.message(), "was saved by model tiny (fingerprint xxh3-64:")) << r.message();
  EXPECT_TRUE(contains(r.message(), "this model is xxh3-64:")) << r.message();
  EXPECT_EQ(read_bytes(saved_file("from-a")), bytes) << "a valid file of another model is kept as it is";

  ASSERT_EQ(call(*engine, create_request("tiny", "b", "Hi")).code(), api::OK);
  EXPECT_EQ(call(*engine, generate_request("b", 3)).code(), api::OK);

  // Model A back (the budget holds one model: B goes first).
  api::Request close_b;
  close_b.mutable_close()->mutable_session()->set_name("b");
  ASSERT_EQ(call(*engine, close_b).code(), api::OK);
  ASSERT_EQ(call(*engine, unload).code(), api::OK);
  ASSERT_EQ(call(*engine, load_request("a", model_a_.path())).code(), api::OK);
  auto back = call(*engine, restore_request("from-a", "s"));
  EXPECT_EQ(back.code(), api::OK) << back.message();
  EXPECT_EQ(back.session().model(), "a");
}

// close {delete_saved}: removes the file the session was last saved to or restored from (found
// by the soak: a session saved under another file name used to leave its file behind), and
// only that file.
TEST_F(EngineFaultTest, CloseWithDeleteSavedRemovesTheSessionsOwnSavedFile) {
  auto engine = make_engine();
  ASSERT_NE(engine, nullptr);
  engine->start();
  ASSERT_EQ(call(*engine, load_request("tiny", model_a_.path())).code(), api::OK);
  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Hello there")).code(), api::OK);
  ASSERT_EQ(call(*engine, save_request("s", "keep")).code(), api::OK);
  ASSERT_EQ(call(*engine, save_request("s", "snap")).code(), api::OK);
  auto close = [&](const std::string& name, bool del) {
    api::Request c;
    c.mutable_close()->mutable_session()->set_name(name);
    c.mutable_close()->set_delete_saved(del);
    return call(*engine, c).code();
  };
  ASSERT_EQ(close("s", true), api::OK);
  EXPECT_FALSE(fs::exists(saved_file("snap"))) << "the last file it was saved to";
  EXPECT_TRUE(fs::exists(saved_file("keep"))) << "an older file of the session is not touched";
  // Restored under another name: delete_saved removes the file it came from.
  ASSERT_EQ(call(*engine, restore_request("keep", "t")).code(), api::OK);
  ASSERT_EQ(close("t", false), api::OK);
  EXPECT_TRUE(fs::exists(saved_file("keep")));
  ASSERT_EQ(call(*engine, restore_request("keep", "u")).code(), api::OK);
  ASSERT_EQ(close("u", true), api::OK);
  EXPECT_FALSE(fs::exists(saved_file("keep")));
  // Never saved: <name>.palu, if any.
  ASSERT_EQ(call(*engine, create_request("tiny", "v", "Hi")).code(), api::OK);
  ASSERT_EQ(close("v", true), api::OK);
  EXPECT_TRUE(names_in(tmp_.path() + "/state/sessions/" + std::to_string(::getuid())).empty());
}

// ---- truncated and lying model files ---------------------------------------------------------

// Each broken copy of the model is refused by LoadModel with a message naming the file and the
// defect; nothing is loaded, no budget is kept, and the good model loads afterwards.
TEST_F(EngineFaultTest, LyingModelFilesAreRefusedWithTheProblemNamed) {
  auto engine = make_engine();
  ASSERT_NE(engine, nullptr);
  engine->start();
  const std::string good = model_a_.path();
  const std::string weights = read_bytes(good + "/model.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, weights.data(), 8);
  const std::string header = weights.substr(8, header_len);

  struct Case {
    const char* name;
    std::function<void(const std::string& dir)> breakit;
    std::vector<std::string> expect;  // every one in the message
    api::Code code;
  };
  auto write = [](const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  };
  auto le64 = [](uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); };
  // The weights with the first tensor's data_offsets replaced (the header length adjusted).
  auto with_first_offsets = [&](const std::string& offsets) {
    std::string h = header;
    const size_t key = h.find("\"data_offsets\"");
    const size_t open = h.find('[', key), close = h.find(']', key);
    EXPECT_TRUE(key != std::string::npos && open != std::string::npos && close != std::string::npos) << h;
    h.replace(open + 1, close - open - 1, offsets);
    return le64(h.size()) + h + weights.substr(8 + header_len);
  };
  const std::vector<Case> cases = {
      {"safetensors truncated in the data",
       [&](const std::string& d) { write(d + "/model.safetensors", weights.substr(0, weights.size() / 2)); },
       {"model.safetensors", "lie outside the data section"}, api::DATA_LOSS},
      {"safetensors header length past the end",
       [&](const std::string& d) { write(d + "/model.safetensors", le64(1ull << 40) + weights.substr(8)); },
       {"model.safetensors", "header length 1099511627776"}, api::DATA_LOSS},
      {"safetensors offsets past the data section",
       [&](const std::string& d) { write(d + "/model.safetensors", with_first_offsets("0,99999999999")); },
       {"model.safetensors", "data_offsets [0, 99999999999] lie outside the data section"}, api::DATA_LOSS},
      {"safetensors offsets disagree with the shape",
       [&](const std::string& d) { write(d + "/model.safetensors", with_first_offsets("0,4")); },
       {"model.safetensors", "data_offsets span 4 bytes but shape"}, api::DATA_LOSS},
      {"config.json with a string size",
       [&](const std::string& d) {
         write(d + "/config.json",
               R"({"model_type": "llama", "hidden_size": "32", "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "vocab_size": 8000})");
       },
       {"config.json", "'hidden_size' must be an integer, found \"32\""}, api::INVALID_ARGUMENT},
      {"config.json with heads that do not divide",
       [&](const std::string& d) {
         write(d + "/config.json",
               R"({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 8000})");
       },
       {"config.json", "must be a multiple of num_key_value_heads (3)"}, api::INVALID_ARGUMENT},
      {"config.json not JSON",
       [&](const std::string& d) { write(d + "/config.json", "{\"model_type\": \"llama\", "); },
       {"config.json", "not valid JSON"}, api::INVALID_ARGUMENT},
  };
  int n = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = tmp_.path() + "/broken-" + std::to_string(n++);
    fs::copy(good, dir, fs::copy_options::recursive);
    c.breakit(dir);
    auto r = call(*engine, load_request("broken", dir));
    EXPECT_EQ(r.code(), c.code) << r.message();
    for (const auto& e : c.expect) EXPECT_TRUE(contains(r.message(), e)) << r.message();
    auto list = call(*engine, simple_request(api::Request::kListModels));
    EXPECT_EQ(list.models().models_size(), 0);
  }

  // GGUF files that lie: counts far beyond the file, a string length past the end.
  auto gguf_with = [](uint64_t n_tensors, uint64_t n_kv, const std::string& rest) {
    std::string f = "GGUF";
    const uint32_t version = 3;
    f.append(reinterpret_cast<const char*>(&version), 4);
    f.append(reinterpret_cast<const char*>(&n_tensors), 8);
    f.append(reinterpret_cast<const char*>(&n_kv), 8);
    return f + rest;
  };
  const std::string key = "general.architecture";
  std::string kv_huge_string = le64(key.size()) + key;
  const uint32_t string_type = 8;
  kv_huge_string.append(reinterpret_cast<const char*>(&string_type), 4);
  kv_huge_string += le64(1ull << 62) + "llama";
  const std::vector<std::pair<std::string, std::string>> ggufs = {
      {gguf_with(1ull << 60, 0, ""), "tensor"},
      {gguf_with(0, 1ull << 60, ""), "n_kv"},
      {gguf_with(0, 1, kv_huge_string), "general.architecture"},
      {gguf_with(0, 0, "").substr(0, 10), "truncated"},
  };
  for (const auto& [bytes, what] : ggufs) {
    SCOPED_TRACE(what);
    const std::string path = tmp_.path() + "/lying-" + std::to_string(n++) + ".gguf";
    write(path, bytes);
    auto r = call(*engine, load_request("lying", path));
    EXPECT_EQ(r.code(), api::DATA_LOSS) << r.message();
    EXPECT_TRUE(contains(r.message(), path)) << r.message();
    EXPECT_TRUE(contains(r.message(), what)) << r.message();
  }

  auto ok = call(*engine, load_request("tiny", good));
  ASSERT_EQ(ok.code(), api::OK) << ok.message();
  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Hello")).code(), api::OK);
  EXPECT_EQ(call(*engine, generate_request("s", 2)).code(), api::OK);
}

// ---- clients that stop reading a stream --------------------------------------------------------

// Accepts `accept` responses, then refuses every send (what the server's sink does once a client
// stopped reading and its backlog overflowed).
class StopReadingSink final : public ResponseSink {
 public:
  explicit StopReadingSink(int accept) : accept_(accept) {}
  bool send(const api::Response&) override { return ++sends_ <= accept_; }
  bool closed() const override { return sends_ > accept_; }
  int sends() const { return sends_; }

 private:
  const int accept_;
  std::atomic<int> sends_{0};
};

uint64_t host_used_bytes(Engine& engine) {
  auto stats = call(engine, simple_request(api::Request::kStats));
  for (const auto& t : stats.stats().tiers()) {
    if (t.tier() == "host") return t.used_bytes();
  }
  ADD_FAILURE() << "no host tier in Stats";
  return 0;
}

// A generation whose client stops reading is cancelled at the first refused chunk (nothing more
// is generated or sent); one whose connection closes is cancelled too. The session stays idle
// and usable, and closing it gives every cache block back.
TEST_F(EngineFaultTest, ClientThatStopsReadingIsCancelledAndItsBlocksFreedOnClose) {
  auto engine = make_engine();
  ASSERT_NE(engine, nullptr);
  engine->start();
  ASSERT_EQ(call(*engine, load_request("tiny", model_a_.path())).code(), api::OK);
  const uint64_t baseline = host_used_bytes(*engine);
  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Once upon a time")).code(), api::OK);

  auto sink = std::make_shared<StopReadingSink>(3);
  api::Request g = generate_request("s", 200);
  g.set_id(77);
  engine->handle(g, self_peer(7), sink);
  // Bounded wait until the session is idle again.
  bool idle = false;
  for (int i = 0; i < 200 && !idle; ++i) {
    auto list = call(*engine, simple_request(api::Request::kListSessions));
    idle = list.sessions().sessions_size() == 1 && list.sessions().sessions(0).state() == "idle";
    if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(idle) << "the generation was not cancelled";
  EXPECT_EQ(sink->sends(), 4) << "the chunk refused, and nothing after it";
  EXPECT_LT(engine->counters().generated_tokens, 10u);

  // The connection of a running generation closes: cancelled, the sink hears no more.
  auto sink2 = std::make_shared<RecordingSink>();
  api::Request g2 = generate_request("s", 200);
  g2.set_id(78);
  const PeerInfo peer = self_peer(8);
  engine->handle(g2, peer, sink2);
  // Close once the stream runs (a close processed before the request would cancel nothing).
  for (int i = 0; i < 500 && sink2->responses().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_FALSE(sink2->responses().empty());
  engine->connection_closed(peer);
  idle = false;
  for (int i = 0; i < 200 && !idle; ++i) {
    auto list = call(*engine, simple_request(api::Request::kListSessions));
    idle = list.sessions().sessions(0).state() == "idle";
    if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(idle);
  const size_t heard = sink2->responses().size();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(sink2->responses().size(), heard) << "responses after the connection closed";
  EXPECT_LT(heard, 200u);

  // Still usable; closing it frees every block.
  auto again = call(*engine, generate_request("s", 3));
  EXPECT_EQ(again.code(), api::OK) << again.message();
  EXPECT_EQ(again.chunk().generated_tokens(), 3u);
  EXPECT_GT(host_used_bytes(*engine), baseline);
  api::Request close;
  close.mutable_close()->mutable_session()->set_name("s");
  ASSERT_EQ(call(*engine, close).code(), api::OK);
  EXPECT_EQ(host_used_bytes(*engine), baseline);
}

// ---- host allocation failure -----------------------------------------------------------------

// Every host allocation of a model load fails in turn (the nth, n = 1, 2, ... until the load
// needs fewer): each attempt is RESOURCE_EXHAUSTED naming what could not be allocated, leaves no
// model and no budget behind (the final load gets the whole budget again), and the engine goes
// on. Then allocations failing mid-request: a save whose cache image cannot be allocated is
// RESOURCE_EXHAUSTED with nothing written, the session keeps generating, the next save works.
TEST_F(EngineFaultTest, HostAllocationFailuresAtLoadAndMidRequestAreClearErrors) {
  auto engine = make_engine();
  ASSERT_NE(engine, nullptr);
  engine->start();
  int64_t nth = 1;
  for (;; ++nth) {
    ASSERT_LT(nth, 500) << "the load never succeeded";
    api::Response r;
    int64_t failures = 0;
    {
      ScopedHostAllocFailure fail(nth);
      r = call(*engine, load_request("tiny", model_a_.path()));
      failures = fail.failures();
    }
    if (failures == 0) {
      ASSERT_EQ(r.code(), api::OK) << r.message();
      break;
    }
    SCOPED_TRACE("allocation " + std::to_string(nth) + " failed");
    EXPECT_EQ(r.code(), api::RESOURCE_EXHAUSTED) << r.message();
    EXPECT_TRUE(contains(r.message(), "out of memory converting tensor '") ||
                contains(r.message(), "cache pool: cannot allocate"))
        << r.message();
    EXPECT_EQ(call(*engine, simple_request(api::Request::kListModels)).models().models_size(), 0);
  }
  // 2 layers x 9 weights + embeddings + final norm converted, then the pool's arena.
  EXPECT_GE(nth, 21);
  auto stats = call(*engine, simple_request(api::Request::kStats));
  ASSERT_GE(stats.stats().tiers_size(), 1);

  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Once upon a time")).code(), api::OK);
  {
    ScopedHostAllocFailure fail(1, /*and_after=*/true);
    auto r = call(*engine, save_request("s", "s"));
    EXPECT_EQ(r.code(), api::RESOURCE_EXHAUSTED) << r.message();
    EXPECT_TRUE(contains(r.message(), "cache export: cannot allocate")) << r.message();
    EXPECT_GE(fail.failures(), 1);
  }
  EXPECT_FALSE(fs::exists(saved_file("s")));
  auto g = call(*engine, generate_request("s", 3));
  EXPECT_EQ(g.code(), api::OK) << g.message();
  auto saved = call(*engine, save_request("s", "s"));
  EXPECT_EQ(saved.code(), api::OK) << saved.message();
  EXPECT_TRUE(fs::exists(saved_file("s")));
}

// ---- the injected clock ----------------------------------------------------------------------

// EngineOptions::clock is the engine's only time source: uptime and a session's last use follow
// it exactly (no wall-clock reads), so time-dependent behaviour is testable without sleeping.
TEST_F(EngineFaultTest, InjectedClockDrivesUptimeAndLastUse) {
  std::atomic<double> now{1000.0};
  auto engine = make_engine(nullptr, 1024, [&] { return now.load(); });
  ASSERT_NE(engine, nullptr);
  engine->start();
  ASSERT_EQ(call(*engine, load_request("tiny", model_a_.path())).code(), api::OK);
  now = 1005.0;
  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Hello")).code(), api::OK);
  // The system prompt is prefilled by later engine steps; an Append is answered once the
  // session's pending input (prompt included) is in the cache, so nothing touches the session
  // after this until the clock moves on.
  ASSERT_EQ(call(*engine, append_request("s", " there")).code(), api::OK);
  now = 1042.5;
  auto stats = call(*engine, simple_request(api::Request::kStats));
  ASSERT_EQ(stats.code(), api::OK);
  EXPECT_DOUBLE_EQ(stats.stats().uptime_s(), 42.5);
  ASSERT_EQ(stats.stats().sessions_size(), 1);
  EXPECT_DOUBLE_EQ(stats.stats().sessions(0).last_used_unix(), 5.0);
  now = 1100.0;
  ASSERT_EQ(call(*engine, append_request("s", " world")).code(), api::OK);
  auto list = call(*engine, simple_request(api::Request::kListSessions));
  ASSERT_EQ(list.sessions().sessions_size(), 1);
  EXPECT_DOUBLE_EQ(list.sessions().sessions(0).last_used_unix(), 100.0);
}

}  // namespace
}  // namespace palu::daemon
