// The engine's GPU tier (EngineOptions::make_device), exercised in CI with the CPU reference
// DeviceModel standing in for the device (palud passes the CUDA one; the tier logic is the same,
// and tests/unit/cuda covers the CUDA sequences' export / import). Sessions whose device caches
// together need ~3× the GPU budget all complete with the tokens a host-only engine gives; the
// budget is never exceeded (sampled while they run); stats show GPU sessions, demotions to host
// and promotions back; a decode_on_host session never goes to the GPU; a session saved while on
// the GPU restores and continues identically.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "runtime/device_models.h"
#include "tests/unit/daemon/engine_test_util.h"

namespace palu::daemon {
namespace {

using namespace palu::daemon::testing;

// Tiny model: full f16 rows, 2 layers × K/V × 16 values = 128 B a token; a device sequence of
// 256 positions counts 32 KiB.
constexpr uint64_t kGpuBudget = 80 << 10;  // two such sequences

class EngineGpuTierTest : public ::testing::Test {
 protected:
  EngineGpuTierTest() : tmp_("engine_gpu"), model_(tmp_.path(), "tiny", 21) {}

  std::unique_ptr<Engine> make_engine(bool gpu) {
    EngineOptions o;
    o.host_budget_bytes = 8ull << 20;
    o.state_dir = tmp_.path() + (gpu ? "/state-gpu" : "/state-host");
    o.disk_dir = tmp_.path() + (gpu ? "/spill-gpu" : "/spill-host");
    o.disk_budget_bytes = 64ull << 20;
    std::filesystem::create_directories(o.disk_dir);
    if (gpu) {
      o.gpu_budget_bytes = kGpuBudget;
      o.gpu_name = "cpu reference standing in for a GPU";
      o.make_device = [](const model::LlamaModel& m, const model::CacheOptions& co) {
        model::DeviceModelOptions d;
        d.cache = co;
        return runtime::make_device_model(m, backends::DeviceKind::kCpu, d);
      };
    }
    auto e = Engine::create(std::move(o));
    EXPECT_TRUE(e.is_ok()) << e.status().to_string();
    if (!e.is_ok()) return nullptr;
    auto engine = std::move(e).value();
    engine->start();
    EXPECT_EQ(call(*engine, load_request("tiny", model_.path())).code(), api::OK);
    return engine;
  }

  static std::vector<int32_t> ids_of(const std::vector<api::Response>& rs, uint64_t id) {
    std::vector<int32_t> out;
    for (const auto& r : rs) {
      if (r.id() == id && r.has_chunk()) out.insert(out.end(), r.chunk().token_ids().begin(), r.chunk().token_ids().end());
    }
    return out;
  }

  // Generates n greedy tokens in `session` and returns them (and the final response).
  static std::vector<int32_t> generate(Engine& e, const std::string& session, uint32_t n, api::Response* final_out = nullptr) {
    static std::atomic<uint64_t> next{50000};
    api::Request r = generate_request(session, n);
    r.mutable_generate()->mutable_sampling()->set_temperature(0.f);
    r.set_id(next++);
    auto sink = std::make_shared<RecordingSink>();
    e.handle(r, self_peer(), sink);
    auto fin = sink->wait_final(r.id(), 60000);
    EXPECT_TRUE(fin.has_value());
    if (fin && final_out) *final_out = *fin;
    if (fin) {
      EXPECT_EQ(fin->code(), api::OK) << fin->message();
    }
    return ids_of(sink->responses(), r.id());
  }

  static api::StatsReply stats(Engine& e) { return call(e, simple_request(api::Request::kStats)).stats(); }

  TempDir tmp_;
  TinyModelDir model_;
};

const std::vector<std::string> kPrompts = {"Once upon a time", "The history of", "In a small village",
                                           "The cat sat",      "A long time ago", "She opened the door"};

TEST_F(EngineGpuTierTest, SessionsOverThreeTimesTheGpuBudgetCompleteLikeTheHostOnlyEngine) {
  constexpr uint32_t kTokens = 20;
  // The reference: the same sessions on a host-only engine, one after another.
  std::vector<std::vector<int32_t>> expected;
  {
    auto host = make_engine(false);
    ASSERT_NE(host, nullptr);
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      ASSERT_EQ(call(*host, create_request("tiny", "r" + std::to_string(i), kPrompts[i])).code(), api::OK);
      expected.push_back(generate(*host, "r" + std::to_string(i), kTokens));
      ASSERT_EQ(expected.back().size(), kTokens);
    }
    host->stop();
  }
  auto engine = make_engine(true);
  ASSERT_NE(engine, nullptr);
  std::atomic<bool> done{false};
  std::atomic<uint64_t> max_gpu{0};
  std::atomic<uint32_t> max_gpu_sessions{0};
  std::thread poller([&] {
    while (!done) {
      const api::StatsReply now = stats(*engine);
      for (const auto& t : now.tiers()) {
        if (t.tier() != "gpu") continue;
        EXPECT_EQ(t.budget_bytes(), kGpuBudget);
        max_gpu = std::max<uint64_t>(max_gpu, t.used_bytes());
        max_gpu_sessions = std::max<uint32_t>(max_gpu_sessions, t.sessions());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::vector<std::vector<int32_t>> got(kPrompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    clients.emplace_back([&, i] {
      const std::string name = "s" + std::to_string(i);
      EXPECT_EQ(call(*engine, create_request("tiny", name, kPrompts[i])).code(), api::OK);
      got[i] = generate(*engine, name, kTokens);
    });
  }
  for (auto& t : clients) t.join();
  done = true;
  poller.join();
  for (size_t i = 0; i < kPrompts.size(); ++i) EXPECT_EQ(got[i], expected[i]) << kPrompts[i];
  EXPECT_LE(max_gpu.load(), kGpuBudget);
  EXPECT_GT(max_gpu_sessions.load(), 0u) << "no session ever ran on the GPU tier";
  const api::StatsReply st = stats(*engine);
  EXPECT_GT(st.demotions(), 0u);
  EXPECT_GT(st.restorations(), 0u);
  int on_gpu = 0;
  for (const auto& si : st.sessions()) on_gpu += si.tier() == "gpu";
  EXPECT_GT(on_gpu, 0);
  EXPECT_LE(on_gpu, 2);  // 32 KiB each within 80 KiB

  // A session saved while on the GPU restores (to host) and both continue identically.
  std::string on_gpu_name;
  for (const auto& si : st.sessions()) {
    if (si.tier() == "gpu") on_gpu_name = si.name();
  }
  ASSERT_FALSE(on_gpu_name.empty());
  ASSERT_EQ(call(*engine, save_request(on_gpu_name, "kept")).code(), api::OK);
  ASSERT_EQ(call(*engine, restore_request("kept", "back")).code(), api::OK);
  EXPECT_EQ(generate(*engine, "back", 6), generate(*engine, on_gpu_name, 6));
  engine->stop();
}

TEST_F(EngineGpuTierTest, DecodeOnHostSessionsStayInHostMemory) {
  auto engine = make_engine(true);
  ASSERT_NE(engine, nullptr);
  api::Request c = create_request("tiny", "local", "Once upon a time");
  c.mutable_create_session()->set_decode_on_host(true);
  const api::Response created = call(*engine, c);
  ASSERT_EQ(created.code(), api::OK) << created.message();
  EXPECT_TRUE(created.session().decode_on_host());
  ASSERT_EQ(call(*engine, create_request("tiny", "remote", "Once upon a time")).code(), api::OK);
  const auto a = generate(*engine, "local", 8);
  const auto b = generate(*engine, "remote", 8);
  EXPECT_EQ(a, b);  // same prompt, same model: the tier does not change the tokens
  const api::StatsReply st = stats(*engine);
  for (const auto& si : st.sessions()) {
    if (si.name() == "local") {
      EXPECT_EQ(si.tier(), "host");
    }
    if (si.name() == "remote") {
      EXPECT_EQ(si.tier(), "gpu");
    }
  }
  engine->stop();
}

TEST_F(EngineGpuTierTest, ADeviceThatCannotBeMadeLeavesSessionsOnTheCpu) {
  EngineOptions o;
  o.host_budget_bytes = 8ull << 20;
  o.gpu_budget_bytes = kGpuBudget;
  o.make_device = [](const model::LlamaModel&, const model::CacheOptions&) -> Result<std::unique_ptr<model::DeviceModel>> {
    return resource_exhausted("device memory: 0 bytes free (test)");
  };
  auto e = Engine::create(std::move(o));
  ASSERT_TRUE(e.is_ok());
  auto engine = std::move(e).value();
  engine->start();
  ASSERT_EQ(call(*engine, load_request("tiny", model_.path())).code(), api::OK);
  ASSERT_EQ(call(*engine, create_request("tiny", "s", "Once upon a time")).code(), api::OK);
  EXPECT_EQ(generate(*engine, "s", 5).size(), 5u);
  const api::StatsReply st = stats(*engine);
  for (const auto& si : st.sessions()) EXPECT_EQ(si.tier(), "host");
  engine->stop();
}

}  // namespace
}  // namespace palu::daemon
