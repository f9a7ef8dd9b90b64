// One request of every type with realistic fields, for the seed corpora of the wire-format
// targets (frame_decoder, json_lines): PALU_FUZZ_WRITE_SEED=DIR ./fuzz_frame_decoder -runs=0
// writes one file per request type into DIR.
#pragma once

#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "sdk/proto/palu.pb.h"

namespace palu::fuzz {

inline std::vector<std::pair<std::string, api::v1::Request>> every_request_type() {
  using api::v1::Request;
  std::vector<std::pair<std::string, Request>> out;
  auto add = [&](const std::string& name, uint64_t id) -> Request& {
    out.emplace_back(name, Request());
    out.back().second.set_id(id);
    return out.back().second;
  };
  {
    auto* h = add("handshake", 1).mutable_handshake();
    h->set_protocol_version(1);
    h->set_client_name("palu-cli 0.1.0");
  }
  {
    auto* m = add("load_model", 2).mutable_load_model();
    m->set_name("ref-mha");
    m->set_path("/models/ref-mha");
    m->mutable_cache()->set_latent_bits(4);
    m->mutable_cache()->set_window_tokens(32);
  }
  add("list_models", 3).mutable_list_models();
  add("unload_model", 4).mutable_unload_model()->set_name("ref-mha");
  {
    auto* c = add("create_session", 5).mutable_create_session();
    c->set_model("ref-mha");
    c->set_name("chat-1");
    c->set_max_context(2048);
    c->set_system_prompt("You are a helpful assistant.");
  }
  {
    auto* a = add("append", 6).mutable_append();
    a->mutable_session()->set_name("chat-1");
    a->set_text("Hello, how are you? \xc3\xa9");
    a->set_add_bos(true);
  }
  {
    auto* a = add("append_ids", 7).mutable_append();
    a->mutable_session()->set_id(3);
    for (int32_t id : {1, 450, 4996, 17354}) a->add_token_ids(id);
  }
  {
    auto* g = add("generate", 8).mutable_generate();
    g->mutable_session()->set_name("chat-1");
    g->set_prompt("Once upon a time");
    g->set_max_tokens(64);
    g->mutable_sampling()->set_temperature(0.7f);
    g->mutable_sampling()->set_top_p(0.9f);
    g->mutable_sampling()->set_top_k(40);
    g->mutable_sampling()->set_seed(0xfedcba9876543210ull);
    g->mutable_sampling()->set_has_seed(true);
    g->add_stop("\n\n");
    g->add_stop_ids(2);
    g->set_ignore_eos(false);
  }
  {
    auto* c = add("cancel", 9).mutable_cancel();
    c->set_request_id(8);
    c->mutable_session()->set_name("chat-1");
  }
  {
    auto* f = add("fork", 10).mutable_fork();
    f->mutable_session()->set_id(1);
    f->set_new_name("chat-1.branch");
  }
  {
    auto* s = add("save", 11).mutable_save();
    s->mutable_session()->set_name("chat-1");
    s->set_file_name("chat-1-saved");
  }
  {
    auto* r = add("restore", 12).mutable_restore();
    r->set_file_name("chat-1-saved");
    r->set_name("chat-1-again");
  }
  {
    auto* c = add("close", 13).mutable_close();
    c->mutable_session()->set_name("chat-1");
    c->set_delete_saved(true);
  }
  add("list_sessions", 14).mutable_list_sessions();
  add("stats", 15).mutable_stats();
  {
    auto* t = add("tokenize", 16).mutable_tokenize();
    t->set_model("ref-mha");
    t->set_text("The quick brown fox");
    t->set_add_bos(true);
  }
  {
    auto* d = add("detokenize", 17).mutable_detokenize();
    d->set_model("ref-mha");
    for (int32_t id : {1, 450, 4996, -1, 1000000}) d->add_token_ids(id);
  }
  return out;
}

inline void write_seed_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

}  // namespace palu::fuzz
