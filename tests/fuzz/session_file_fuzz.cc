// Fuzz target: a session file through read_session_file on the real file system (what Restore
// and the start-up restore call), then check_session_binding against a fixed model fingerprint
// and cache layout and, when both pass, import_sequence into a fresh block pool (what the
// engine does next). The pool's invariants must hold after the import, whatever it answered.
//
// Seed: PALU_FUZZ_WRITE_SEED=FILE ./fuzz_session_file -runs=0 writes a valid session file of
// this layout and fingerprint to FILE (tests/fuzz/corpus/session_file/ holds its output).
#include <cstdint>
#include <random>

#include "cache/block_pool.h"
#include "daemon/session_file.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using palu::cache::BlockPool;
using palu::cache::CacheLayout;

constexpr char kFingerprint[] = "xxh3-64:0123456789abcdef";
constexpr uint64_t kMaxFileBytes = 1u << 20;

const CacheLayout& layout() {
  static const CacheLayout l = [] {
    auto r = CacheLayout::create(
        palu::cache::uniform_latent_spec(1, {16}, {16}, palu::cache::CacheStorage::kQ4, 8, 5));
    PALU_FUZZ_CHECK(r.is_ok(), r.status().message().c_str());
    return std::move(r).value();
  }();
  return l;
}

BlockPool make_pool() {
  auto p = BlockPool::create(layout(), 16 * layout().block_bytes());
  PALU_FUZZ_CHECK(p.is_ok(), p.status().message().c_str());
  return std::move(p).value();
}

void write_seed(const std::string& path) {
  BlockPool pool = make_pool();
  const int64_t length = 13;
  auto plan = pool.plan(std::vector<palu::cache::PoolRequest>{palu::cache::PoolRequest::create(1),
                                                              palu::cache::PoolRequest::append(1, length)});
  PALU_FUZZ_CHECK(plan.is_ok() && pool.commit(*plan).is_ok(), "seed pool");
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t p = 0; p < length; ++p) {
    for (auto kv : {palu::cache::Proj::kKey, palu::cache::Proj::kValue}) {
      float z[16];
      for (float& v : z) v = normal(rng);
      PALU_FUZZ_CHECK(pool.write_token(1, p, 0, kv, 0, z).is_ok(), "seed write");
    }
  }
  palu::daemon::SessionFile f;
  f.name = "seed";
  f.owner_uid = 1000;
  f.model_name = "tiny";
  f.model_fingerprint = kFingerprint;
  f.cache_description = layout().describe();
  f.image = *pool.export_sequence(1);
  for (int64_t i = 0; i < length; ++i) f.tokens.push_back((int32_t)(i * 7 + 1));
  f.metadata_json = R"({"temperature":0.7})";
  palu::daemon::RealFileSystem fs;
  // Small image chunks so the seed has several IMAG chunks.
  const palu::Status st = palu::daemon::write_session_file(fs, path, f, 64);
  PALU_FUZZ_CHECK(st.is_ok(), st.message().c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seed = std::getenv("PALU_FUZZ_WRITE_SEED")) write_seed(seed);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static palu::daemon::RealFileSystem fs;
  const std::string path = palu::fuzz::write_scratch_file("s.palu", palu::fuzz::as_view(data, size));
  auto file = palu::daemon::read_session_file(fs, path, kMaxFileBytes);
  if (!file.is_ok()) {
    PALU_FUZZ_CHECK(!file.status().message().empty(), "an error names its problem");
    return 0;
  }
  PALU_FUZZ_CHECK((int64_t)file->tokens.size() == file->image.length, "one token per cached position");
  for (int32_t t : file->tokens) PALU_FUZZ_CHECK(t >= 0, "token ids are non-negative");
  if (!palu::daemon::check_session_binding(*file, kFingerprint, palu::cache::layout_hash(layout()), path).is_ok()) {
    return 0;
  }
  BlockPool pool = make_pool();
  auto plan = pool.plan(std::vector<palu::cache::PoolRequest>{
      palu::cache::PoolRequest::create(1), palu::cache::PoolRequest::append(1, file->image.length)});
  if (!plan.is_ok() || !pool.commit(*plan).is_ok()) return 0;  // longer than this small pool
  (void)pool.import_sequence(1, file->image);
  const palu::Status inv = pool.check_invariants();
  PALU_FUZZ_CHECK(inv.is_ok(), inv.message().c_str());
  return 0;
}
