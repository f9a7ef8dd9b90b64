// palu-daemon-bench: load a running palud with N concurrent clients and measure what they see.
//
//   palu-daemon-bench --socket PATH [--clients 1,8,32] [--tokens 64] [--prompt TEXT] [--model NAME]
//
// Each client connects, handshakes, creates a session and asks for one greedy generation of
// --tokens tokens (EOS ignored) after the prompt; all clients start together. Reports, per
// client count: aggregate decode tokens/s (all generated tokens / wall time from the first
// request to the last final chunk), p50/p99 time to first token (request sent → first chunk
// received) and p50 per-client decode tokens/s. Prints a Markdown table.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "sdk/proto/framing.h"
#include "sdk/proto/palu.pb.h"

namespace api = palu::api::v1;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class Conn {
 public:
  explicit Conn(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (::connect(fd_, (sockaddr*)&a, sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  bool send(const api::Request& r) {
    const std::string b = palu::api::encode_frame(r);
    size_t off = 0;
    while (off < b.size()) {
      const ssize_t n = ::send(fd_, b.data() + off, b.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += (size_t)n;
    }
    return true;
  }
  bool read(api::Response* out) {
    while (true) {
      if (auto f = dec_.next()) return out->ParseFromString(f->payload);
      if (!dec_.status().is_ok()) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 600000) <= 0) return false;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return false;
      (void)dec_.feed(std::string_view(buf, (size_t)n));
    }
  }

 private:
  int fd_ = -1;
  palu::api::FrameDecoder dec_{64u << 20};
};

struct ClientResult {
  bool ok = false;
  std::string error;
  double ttft_s = 0, end_s = 0, first_s = 0;
  int tokens = 0;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, (size_t)(p * (v.size() - 1) + 0.5));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-daemon-bench: concurrent clients against a running palud"};
  std::string socket_path, prompt = "Once upon a time", model;
  std::vector<int> clients{1, 8, 32};
  int tokens = 64;
  app.add_option("--socket", socket_path, "palud's socket")->required();
  app.add_option("--clients", clients, "client counts")->delimiter(',')->check(CLI::Range(1, 1024));
  app.add_option("--tokens", tokens, "tokens generated per client")->check(CLI::Range(1, 1 << 20));
  app.add_option("--prompt", prompt, "prompt of every client");
  app.add_option("--model", model, "model name (default: the daemon's first)");
  CLI11_PARSE(app, argc, argv);

  std::printf("| clients | tokens each | aggregate decode tok/s | TTFT p50 ms | TTFT p99 ms | per-client tok/s p50 | errors |\n"
              "|---:|---:|---:|---:|---:|---:|---:|\n");
  int run = 0;
  for (int n : clients) {
    ++run;
    std::vector<ClientResult> res(n);
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> th;
    for (int i = 0; i < n; ++i) {
      th.emplace_back([&, i] {
        ClientResult& r = res[i];
        Conn c(socket_path);
        api::Request q;
        api::Response a;
        auto fail = [&](const std::string& e) {
          r.error = e;
          ++ready;
        };
        if (!c.ok()) return fail("cannot connect to " + socket_path);
        q.set_id(1);
        q.mutable_handshake()->set_protocol_version(palu::api::kProtocolVersion);
        if (!c.send(q) || !c.read(&a) || a.code() != api::OK) return fail("handshake: " + a.message());
        q.Clear();
        q.set_id(2);
        q.mutable_create_session()->set_model(model);
        q.mutable_create_session()->set_name("bench-" + std::to_string(run) + "-" + std::to_string(i) + "-" +
                                             std::to_string(::getpid()));
        if (!c.send(q) || !c.read(&a) || a.code() != api::OK) return fail("create_session: " + a.message());
        const uint64_t sid = a.session().id();
        ++ready;
        while (!go) std::this_thread::yield();
        q.Clear();
        q.set_id(3);
        auto* g = q.mutable_generate();
        g->mutable_session()->set_id(sid);
        g->set_prompt(prompt);
        g->set_max_tokens(tokens);
        g->set_ignore_eos(true);
        g->mutable_sampling()->set_temperature(0.f);
        const double t0 = now_s();
        if (!c.send(q)) return;
        while (c.read(&a)) {
          if (r.first_s == 0 && a.chunk().token_ids_size() > 0) {
            r.first_s = now_s();
            r.ttft_s = r.first_s - t0;
          }
          r.tokens += a.chunk().token_ids_size();
          if (a.final()) {
            r.end_s = now_s();
            r.ok = a.code() == api::OK;
            if (!r.ok) r.error = a.message();
            break;
          }
        }
        q.Clear();
        q.set_id(4);
        q.mutable_close()->mutable_session()->set_id(sid);
        if (c.send(q)) c.read(&a);
      });
    }
    while (ready < n) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const double t0 = now_s();
    go = true;
    for (auto& t : th) t.join();
    double end = t0;
    int total = 0, errors = 0;
    std::vector<double> ttft, rate;
    for (const auto& r : res) {
      if (!r.ok) {
        ++errors;
        if (!r.error.empty()) std::fprintf(stderr, "client error: %s\n", r.error.c_str());
        continue;
      }
      end = std::max(end, r.end_s);
      total += r.tokens;
      ttft.push_back(r.ttft_s * 1e3);
      if (r.tokens > 1 && r.end_s > r.first_s) rate.push_back((r.tokens - 1) / (r.end_s - r.first_s));
    }
    std::printf("| %d | %d | %.1f | %.1f | %.1f | %.1f | %d |\n", n, tokens, total / std::max(end - t0, 1e-9),
                percentile(ttft, 0.5), percentile(ttft, 0.99), percentile(rate, 0.5), errors);
    std::fflush(stdout);
  }
  return 0;
}
