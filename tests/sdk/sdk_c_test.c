/* The C SDK against a real palud, compiled as C11 (issue 8's must-show 1): every function of
 * palu.h, and every error path a client can reach — daemon absent, protocol mismatch,
 * unknown session, cancelled generations (callback, interrupt, stream cancel, another client's
 * cancel), bad arguments, a daemon that goes away mid-connection.
 *
 *   sdk_c_test PALUD MODEL_DIR
 * starts PALUD (with --model MODEL_DIR) in a temporary directory; exit status 0 = all passed.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "palu/palu.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                                     \
  do {                                                                                  \
    ++checks;                                                                           \
    if (!(cond)) {                                                                      \
      ++failures;                                                                       \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);         \
    }                                                                                   \
  } while (0)

/* rc must equal want; on mismatch print the client's message. */
#define CHECK_RC(c, rc, want)                                                              \
  do {                                                                                     \
    int rc_ = (rc);                                                                        \
    ++checks;                                                                              \
    if (rc_ != (want)) {                                                                   \
      ++failures;                                                                          \
      fprintf(stderr, "%s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, #rc, \
              palu_status_name(rc_), palu_client_last_error(c), palu_status_name(want));   \
    }                                                                                      \
  } while (0)

static char dir[256];
static char socket_path[320];
static const char* palud_path;
static const char* model_dir;
static pid_t daemon_pid = -1;

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Starts palud and waits (<= 60 s) until a client can open. */
static int start_daemon(void) {
  char state[300], spill[300], log[300];
  snprintf(state, sizeof state, "%s/state", dir);
  snprintf(spill, sizeof spill, "%s/spill", dir);
  snprintf(log, sizeof log, "%s/palud.log", dir);
  daemon_pid = fork();
  if (daemon_pid == 0) {
    FILE* f = freopen(log, "a", stdout);
    (void)f;
    dup2(1, 2);
    execl(palud_path, palud_path, "--socket", socket_path, "--state-dir", state, "--disk-dir", spill,
          "--host-budget", "16MiB", "--threads", "2", (char*)NULL);
    _exit(127);
  }
  for (int i = 0; i < 600; ++i) {
    palu_client_params p = palu_client_default_params();
    p.socket_path = socket_path;
    palu_client* c = NULL;
    int rc = palu_client_open(&p, &c);
    palu_client_free(c);
    if (rc == PALU_OK) return 1;
    int status;
    if (waitpid(daemon_pid, &status, WNOHANG) == daemon_pid) {
      daemon_pid = -1;
      return 0;
    }
    sleep_ms(100);
  }
  return 0;
}

static void stop_daemon(int sig) {
  if (daemon_pid <= 0) return;
  kill(daemon_pid, sig);
  waitpid(daemon_pid, NULL, 0);
  daemon_pid = -1;
}

static palu_client* open_client(void) {
  palu_client_params p = palu_client_default_params();
  p.socket_path = socket_path;
  p.client_name = "sdk_c_test";
  palu_client* c = NULL;
  int rc = palu_client_open(&p, &c);
  CHECK_RC(c, rc, PALU_OK);
  return c;
}

/* ---------------------------------------------------------------------------------------- */

static void test_versions_and_names(void) {
  CHECK(strcmp(palu_version(), "0.1.0") == 0);
  CHECK(palu_version_number() == PALU_VERSION_NUMBER);
  CHECK(strcmp(palu_status_name(PALU_OK), "PALU_OK") == 0);
  CHECK(strcmp(palu_status_name(PALU_ENOTFOUND), "PALU_ENOTFOUND") == 0);
  CHECK(strcmp(palu_status_name(PALU_ECONNECT), "PALU_ECONNECT") == 0);
  CHECK(strcmp(palu_status_name(12345), "PALU_EUNKNOWN") == 0);
  CHECK(strcmp(palu_status_string(PALU_ECANCELLED), "cancelled") == 0);
  CHECK(strlen(palu_status_string(-999)) > 0);
  /* Every code has a distinct name. */
  const int codes[] = {PALU_OK, PALU_EINVAL, PALU_ENOTFOUND, PALU_EEXIST, PALU_EPERM, PALU_ENOSPACE,
                       PALU_EPRECONDITION, PALU_ECANCELLED, PALU_EBUSY, PALU_EVERSION, PALU_EDATALOSS,
                       PALU_EINTERNAL, PALU_EUNIMPLEMENTED, PALU_ERANGE, PALU_EIO, PALU_ECONNECT, PALU_ECLOSED,
                       PALU_ETIMEOUT, PALU_ENOMEM, PALU_EPROTOCOL, PALU_EARG};
  const size_t n = sizeof codes / sizeof codes[0];
  for (size_t i = 0; i < n; ++i) {
    CHECK(strcmp(palu_status_name(codes[i]), "PALU_EUNKNOWN") != 0);
    for (size_t j = i + 1; j < n; ++j) CHECK(strcmp(palu_status_name(codes[i]), palu_status_name(codes[j])) != 0);
  }
  /* NULL-safety of every free and of the accessors. */
  palu_client_free(NULL);
  palu_model_list_free(NULL);
  palu_session_list_free(NULL);
  palu_tokens_free(NULL);
  palu_string_free(NULL);
  palu_stats_free(NULL);
  palu_stream_free(NULL);
  palu_client_interrupt(NULL);
  CHECK(palu_model_list_count(NULL) == 0);
  CHECK(palu_model_list_get(NULL, 0) == NULL);
  CHECK(palu_session_list_count(NULL) == 0);
  CHECK(palu_session_list_find(NULL, "x") == NULL);
  CHECK(palu_tokens_count(NULL) == 0 && palu_tokens_data(NULL) == NULL);
  CHECK(palu_stats_daemon(NULL) == NULL && palu_stats_tier_count(NULL) == 0 && palu_stats_sessions(NULL) == NULL);
  CHECK(strlen(palu_client_last_error(NULL)) > 0);
  CHECK(palu_client_last_status(NULL) == PALU_EARG);
  CHECK(palu_models_list(NULL, NULL) == PALU_EARG);
  CHECK(palu_stream_next(NULL, NULL) == PALU_EARG);
}

static void test_daemon_absent(void) {
  palu_client_params p = palu_client_default_params();
  p.socket_path = "/nonexistent-palu-dir/palud.sock";
  palu_client* c = NULL;
  CHECK_RC(c, palu_client_open(&p, &c), PALU_ECONNECT);
  CHECK(c != NULL);
  CHECK(palu_client_last_status(c) == PALU_ECONNECT);
  CHECK(strstr(palu_client_last_error(c), "/nonexistent-palu-dir/palud.sock") != NULL);
  CHECK(strcmp(palu_client_socket_path(c), "/nonexistent-palu-dir/palud.sock") == 0);
  /* Calls on a failed client fail cleanly. */
  palu_model_list* models = NULL;
  CHECK_RC(c, palu_models_list(c, &models), PALU_ECLOSED);
  CHECK(models == NULL);
  palu_client_free(c);

  /* A path too long for a Unix socket, and a bad struct_size. */
  char long_path[300];
  memset(long_path, 'a', sizeof long_path - 1);
  long_path[sizeof long_path - 1] = 0;
  p.socket_path = long_path;
  c = NULL;
  CHECK_RC(c, palu_client_open(&p, &c), PALU_EARG);
  CHECK(strstr(palu_client_last_error(c), "socket path") != NULL);
  palu_client_free(c);
  p = palu_client_default_params();
  p.struct_size = sizeof p + 8;
  c = NULL;
  CHECK_RC(c, palu_client_open(&p, &c), PALU_EARG);
  CHECK(strstr(palu_client_last_error(c), "struct_size") != NULL);
  palu_client_free(c);
  CHECK(palu_client_open(&p, NULL) == PALU_EARG);
}

static void test_protocol_mismatch(void) {
  palu_client_params p = palu_client_default_params();
  p.socket_path = socket_path;
  p.protocol_version = 2;
  palu_client* c = NULL;
  CHECK_RC(c, palu_client_open(&p, &c), PALU_EVERSION);
  CHECK(strstr(palu_client_last_error(c), "version 2") != NULL);
  CHECK(strstr(palu_client_last_error(c), "version 1") != NULL);
  CHECK(palu_client_daemon_protocol(c) == 1);
  palu_client_free(c);
}

static void test_models(palu_client* c) {
  CHECK(strcmp(palu_client_daemon_version(c), "0.1.0") == 0);
  CHECK(palu_client_daemon_protocol(c) == PALU_PROTOCOL_VERSION);
  CHECK(strcmp(palu_client_socket_path(c), socket_path) == 0);
  CHECK(strcmp(palu_client_last_error(c), "") == 0);

  /* palud starts with no model here: load it, then the error paths of loading. */
  palu_model_list* models = NULL;
  CHECK_RC(c, palu_models_list(c, &models), PALU_OK);
  CHECK(palu_model_list_count(models) == 0);
  palu_model_list_free(models);
  palu_load_params lp = palu_load_default_params();
  lp.path = model_dir;
  palu_model_list* loaded = NULL;
  CHECK_RC(c, palu_model_load(c, &lp, &loaded), PALU_OK);
  CHECK(palu_model_list_count(loaded) == 1);
  palu_model_list_free(loaded);
  CHECK_RC(c, palu_model_load(c, &lp, NULL), PALU_EEXIST);
  /* A second model loads next to it: every model's sessions draw from the one host budget. */
  lp.name = "second";
  CHECK_RC(c, palu_model_load(c, &lp, NULL), PALU_OK);
  CHECK_RC(c, palu_models_list(c, &models), PALU_OK);
  CHECK(palu_model_list_count(models) == 2);
  palu_model_list_free(models);
  CHECK_RC(c, palu_model_unload(c, "second"), PALU_OK);
  CHECK_RC(c, palu_model_unload(c, "second"), PALU_ENOTFOUND);
  CHECK(strstr(palu_client_last_error(c), "second") != NULL);
  /* Unload and load again under another name, then back. */
  CHECK_RC(c, palu_model_unload(c, "ref-mha"), PALU_OK);
  CHECK_RC(c, palu_model_load(c, &lp, NULL), PALU_OK);
  CHECK_RC(c, palu_model_unload(c, "second"), PALU_OK);
  lp.name = NULL;
  CHECK_RC(c, palu_model_load(c, &lp, NULL), PALU_OK);

  CHECK_RC(c, palu_models_list(c, &models), PALU_OK);
  CHECK(palu_model_list_count(models) == 1);
  const palu_model_info* m = palu_model_list_get(models, 0);
  CHECK(m != NULL);
  if (m) {
    CHECK(m->struct_size == sizeof(palu_model_info));
    CHECK(strcmp(m->name, "ref-mha") == 0);
    CHECK(strcmp(m->path, model_dir) == 0 || strstr(m->path, "ref-mha") != NULL);
    CHECK(m->vocab_size > 1000 && m->max_context > 0 && m->kv_bytes_per_token > 0);
    CHECK(strlen(m->architecture) > 0 && strlen(m->fingerprint) > 0 && strlen(m->summary) > 0);
  }
  CHECK(palu_model_list_get(models, 1) == NULL);
  palu_model_list_free(models);

  lp.path = "/nonexistent/model";
  lp.name = "bad";
  int rc = palu_model_load(c, &lp, NULL);
  CHECK(rc < 0);
  CHECK(strstr(palu_client_last_error(c), "/nonexistent/model") != NULL);
  lp.path = NULL;
  CHECK_RC(c, palu_model_load(c, &lp, NULL), PALU_EARG);
}

static void test_tokenizer(palu_client* c) {
  palu_tokens* t = NULL;
  CHECK_RC(c, palu_tokenize(c, NULL, "Hello world", 1, &t), PALU_OK);
  CHECK(palu_tokens_count(t) >= 3);
  const int32_t* ids = palu_tokens_data(t);
  CHECK(ids != NULL && ids[0] == 1); /* BOS */
  char* text = NULL;
  CHECK_RC(c, palu_detokenize(c, "ref-mha", ids + 1, palu_tokens_count(t) - 1, &text), PALU_OK);
  CHECK(text != NULL && strstr(text, "Hello world") != NULL);
  palu_string_free(text);
  palu_tokens_free(t);
  t = NULL;
  CHECK_RC(c, palu_tokenize(c, "no-such-model", "x", 0, &t), PALU_ENOTFOUND);
  CHECK(t == NULL);
  const int32_t bad[1] = {99999999};
  text = NULL;
  CHECK_RC(c, palu_detokenize(c, NULL, bad, 1, &text), PALU_EINVAL);
  CHECK(text == NULL);
  CHECK(strstr(palu_client_last_error(c), "99999999") != NULL);
}

static int chunks_seen;
static int tokens_seen;
static char text_seen[4096];

static int collect(const palu_chunk* ch, void* user) {
  (void)user;
  ++chunks_seen;
  tokens_seen += (int)ch->n_token_ids;
  CHECK(ch->struct_size == sizeof(palu_chunk));
  CHECK(strlen(ch->text) == ch->text_bytes);
  if (strlen(text_seen) + ch->text_bytes < sizeof text_seen) strcat(text_seen, ch->text);
  return 0;
}

static int stop_after_two(const palu_chunk* ch, void* user) {
  (void)ch;
  int* n = (int*)user;
  return ++*n >= 2;
}

static int interrupt_after_two(const palu_chunk* ch, void* user) {
  (void)ch;
  static int n = 0;
  if (++n == 2) palu_client_interrupt((palu_client*)user);
  return 0;
}

static void greedy(palu_generate_params* gp, const char* prompt, uint32_t n) {
  *gp = palu_generate_default_params();
  gp->prompt = prompt;
  gp->max_tokens = n;
  gp->temperature = 0.f;
  gp->ignore_eos = 1;
}

static void test_sessions_and_generation(palu_client* c) {
  palu_session_params sp = palu_session_default_params();
  sp.name = "alpha";
  sp.system_prompt = "You are a helpful assistant.";
  palu_session_list* one = NULL;
  CHECK_RC(c, palu_session_create(c, &sp, &one), PALU_OK);
  CHECK(palu_session_list_count(one) == 1);
  const palu_session_info* si = palu_session_list_get(one, 0);
  uint32_t system_tokens = si ? si->tokens : 0;
  CHECK(si && strcmp(si->name, "alpha") == 0 && strcmp(si->model, "ref-mha") == 0);
  palu_session_list_free(one);
  CHECK_RC(c, palu_session_create(c, &sp, NULL), PALU_EEXIST);

  /* Append text and ids. */
  uint32_t after = 0;
  CHECK_RC(c, palu_session_append_text(c, "alpha", " Once upon a time", 0, &after), PALU_OK);
  CHECK(after > system_tokens + 2); /* BOS + system prompt + the text */
  const int32_t ids[3] = {727, 728, 729};
  uint32_t after2 = 0;
  CHECK_RC(c, palu_session_append_tokens(c, "alpha", ids, 3, &after2), PALU_OK);
  CHECK(after2 == after + 3);
  const int32_t bad_id[1] = {-5};
  CHECK_RC(c, palu_session_append_tokens(c, "alpha", bad_id, 1, NULL), PALU_EINVAL);
  CHECK_RC(c, palu_session_append_tokens(c, "alpha", NULL, 2, NULL), PALU_EARG);
  CHECK_RC(c, palu_session_append_text(c, NULL, "x", 0, NULL), PALU_EARG);
  /* Input that alone needs more than the host budget (16 MiB: 1024 tokens of ref-mha's f16
     K/V rows, 16 KiB each): ENOSPACE naming the budget. */
  palu_session_params hp = palu_session_default_params();
  hp.name = "huge";
  CHECK_RC(c, palu_session_create(c, &hp, NULL), PALU_OK);
  static int32_t many[1100];
  for (int i = 0; i < 1100; ++i) many[i] = 700 + i % 100;
  CHECK_RC(c, palu_session_append_tokens(c, "huge", many, 1100, NULL), PALU_ENOSPACE);
  CHECK(strstr(palu_client_last_error(c), "host budget") != NULL);
  CHECK_RC(c, palu_session_close(c, "huge", 0), PALU_OK);
  /* Per-session cache settings and the host-decode policy. */
  palu_session_params cp = palu_session_default_params();
  CHECK(cp.latent_bits == -1 && cp.window_tokens == 0 && cp.decode_on_host == 0);
  cp.name = "quant";
  cp.latent_bits = 4; /* ref-mha is not compressed */
  CHECK_RC(c, palu_session_create(c, &cp, NULL), PALU_EINVAL);
  CHECK(strstr(palu_client_last_error(c), "compressed") != NULL);
  cp.latent_bits = -2;
  CHECK_RC(c, palu_session_create(c, &cp, NULL), PALU_EARG);
  cp.latent_bits = -1;
  cp.window_tokens = 8;
  CHECK_RC(c, palu_session_create(c, &cp, NULL), PALU_EARG);
  CHECK(strstr(palu_client_last_error(c), "window_tokens") != NULL);
  cp.window_tokens = 0;
  cp.latent_bits = 0;
  cp.decode_on_host = 1;
  palu_session_list* ql = NULL;
  CHECK_RC(c, palu_session_create(c, &cp, &ql), PALU_OK);
  const palu_session_info* qi = palu_session_list_get(ql, 0);
  CHECK(qi != NULL && qi->decode_on_host == 1 && qi->latent_bits == 0 && qi->window_tokens == 0);
  palu_session_list_free(ql);
  CHECK_RC(c, palu_session_close(c, "quant", 0), PALU_OK);

  /* Fork before generating: both branches then generate the same greedy continuation. */
  palu_session_list* forked = NULL;
  CHECK_RC(c, palu_session_fork(c, "alpha", "beta", &forked), PALU_OK);
  CHECK(palu_session_list_count(forked) == 1 && palu_session_list_get(forked, 0)->tokens == after2);
  palu_session_list_free(forked);

  palu_generate_params gp;
  greedy(&gp, " The end", 8);
  palu_generate_result r1 = palu_generate_default_result();
  chunks_seen = tokens_seen = 0;
  text_seen[0] = 0;
  CHECK_RC(c, palu_session_generate(c, "alpha", &gp, collect, NULL, &r1), PALU_OK);
  CHECK(strcmp(r1.stop_reason, "max_tokens") == 0);
  CHECK(r1.generated_tokens == 8 && tokens_seen == 8 && chunks_seen >= 1);
  CHECK(r1.prompt_tokens >= 2);
  char first_text[4096];
  strcpy(first_text, text_seen);

  /* The same through the pull iterator on the fork: identical text. */
  palu_stream* s = NULL;
  CHECK_RC(c, palu_stream_start(c, "beta", &gp, &s), PALU_OK);
  CHECK_RC(c, palu_sessions_list(c, &one), PALU_EPRECONDITION); /* the stream holds the client */
  char stream_text[4096] = "";
  int n_tokens = 0, rc;
  const palu_chunk* ch = NULL;
  while ((rc = palu_stream_next(s, &ch)) == 1) {
    n_tokens += (int)ch->n_token_ids;
    strncat(stream_text, ch->text, sizeof stream_text - strlen(stream_text) - 1);
  }
  CHECK_RC(c, rc, 0);
  CHECK(n_tokens == 8);
  CHECK(strcmp(stream_text, first_text) == 0);
  palu_generate_result r2 = palu_generate_default_result();
  CHECK_RC(c, palu_stream_result(s, &r2), PALU_OK);
  CHECK(r2.generated_tokens == 8 && strcmp(r2.stop_reason, "max_tokens") == 0);
  CHECK(palu_stream_next(s, &ch) == 0); /* stays ended */
  palu_stream_free(s);

  /* Stop strings and sampling with a seed: the same seed gives the same text. */
  palu_generate_params sampled = palu_generate_default_params();
  sampled.max_tokens = 6;
  sampled.seed = 42;
  sampled.has_seed = 1;
  sampled.ignore_eos = 1;
  CHECK_RC(c, palu_session_fork(c, "alpha", "gamma", NULL), PALU_OK);
  CHECK_RC(c, palu_session_fork(c, "alpha", "delta", NULL), PALU_OK);
  text_seen[0] = 0;
  CHECK_RC(c, palu_session_generate(c, "gamma", &sampled, collect, NULL, NULL), PALU_OK);
  char sampled_text[4096];
  strcpy(sampled_text, text_seen);
  text_seen[0] = 0;
  CHECK_RC(c, palu_session_generate(c, "delta", &sampled, collect, NULL, NULL), PALU_OK);
  CHECK(strcmp(sampled_text, text_seen) == 0);
  const int32_t stop_ids[1] = {0};
  sampled.stop_ids = stop_ids;
  sampled.n_stop_ids = 1;
  const char* stops[1] = {"zzzz-never"};
  sampled.stop = stops;
  sampled.n_stop = 1;
  CHECK_RC(c, palu_session_generate(c, "gamma", &sampled, NULL, NULL, NULL), PALU_OK);
  sampled.temperature = -1.f;
  CHECK_RC(c, palu_session_generate(c, "gamma", &sampled, NULL, NULL, NULL), PALU_EINVAL);
  CHECK(strstr(palu_client_last_error(c), "temperature") != NULL);

  /* Unknown session. */
  palu_generate_result rx = palu_generate_default_result();
  CHECK_RC(c, palu_session_generate(c, "no-such-session", &gp, NULL, NULL, &rx), PALU_ENOTFOUND);
  CHECK(strstr(palu_client_last_error(c), "no-such-session") != NULL);
  CHECK(strcmp(rx.stop_reason, "") == 0);
  CHECK_RC(c, palu_session_save(c, "no-such-session", NULL), PALU_ENOTFOUND);
  CHECK_RC(c, palu_session_close(c, "no-such-session", 0), PALU_ENOTFOUND);
  CHECK_RC(c, palu_session_fork(c, "no-such-session", "x", NULL), PALU_ENOTFOUND);
  CHECK_RC(c, palu_session_restore(c, "no-such-file", NULL, NULL), PALU_ENOTFOUND);

  /* Cancelled generation: by the callback, by palu_client_interrupt, by palu_stream_cancel,
   * and by another client's palu_session_cancel. The session stays usable each time. */
  palu_generate_params longer;
  greedy(&longer, NULL, 64);
  int count = 0;
  palu_generate_result rc1 = palu_generate_default_result();
  CHECK_RC(c, palu_session_generate(c, "alpha", &longer, stop_after_two, &count, &rc1), PALU_ECANCELLED);
  CHECK(strcmp(rc1.stop_reason, "cancelled") == 0);
  CHECK(rc1.generated_tokens >= 2 && rc1.generated_tokens < 64);
  palu_generate_result rc2 = palu_generate_default_result();
  CHECK_RC(c, palu_session_generate(c, "alpha", &longer, interrupt_after_two, c, &rc2), PALU_ECANCELLED);
  CHECK(strcmp(rc2.stop_reason, "cancelled") == 0 && rc2.generated_tokens < 64);
  CHECK_RC(c, palu_stream_start(c, "alpha", &longer, &s), PALU_OK);
  CHECK(palu_stream_next(s, &ch) == 1);
  CHECK_RC(c, palu_stream_result(s, &r2), PALU_EPRECONDITION); /* not ended yet */
  CHECK_RC(c, palu_stream_cancel(s), PALU_OK);
  while ((rc = palu_stream_next(s, &ch)) == 1) {
  }
  CHECK_RC(c, rc, PALU_ECANCELLED);
  palu_stream_free(s);

  palu_client* other = open_client();
  CHECK_RC(c, palu_stream_start(c, "alpha", &longer, &s), PALU_OK);
  CHECK(palu_stream_next(s, &ch) == 1);
  CHECK_RC(other, palu_session_cancel(other, "alpha"), PALU_OK);
  while ((rc = palu_stream_next(s, &ch)) == 1) {
  }
  CHECK_RC(c, rc, PALU_ECANCELLED);
  palu_stream_free(s);
  /* A stream freed before its end is cancelled; the client is usable right after. */
  CHECK_RC(c, palu_stream_start(c, "alpha", &longer, &s), PALU_OK);
  palu_stream_free(s);
  CHECK_RC(c, palu_session_append_text(c, "alpha", " again", 0, &after), PALU_OK);
  palu_client_free(other);

  /* Sessions, save, restore, close. */
  palu_session_list* all = NULL;
  CHECK_RC(c, palu_sessions_list(c, &all), PALU_OK);
  CHECK(palu_session_list_count(all) == 4);
  const palu_session_info* a = palu_session_list_find(all, "alpha");
  CHECK(a != NULL && a->tokens == after && strcmp(a->state, "idle") == 0 && a->kv_bytes > 0);
  CHECK(a != NULL && (strcmp(a->tier, "host") == 0 || strcmp(a->tier, "disk") == 0));
  CHECK(palu_session_list_find(all, "nope") == NULL);
  palu_session_list_free(all);

  CHECK_RC(c, palu_session_save(c, "alpha", "alpha-copy"), PALU_OK);
  CHECK_RC(c, palu_session_save(c, "alpha", NULL), PALU_OK);
  CHECK_RC(c, palu_session_restore(c, "alpha-copy", "alpha", NULL), PALU_EEXIST);
  palu_session_list* restored = NULL;
  CHECK_RC(c, palu_session_restore(c, "alpha-copy", "epsilon", &restored), PALU_OK);
  CHECK(palu_session_list_count(restored) == 1);
  if (palu_session_list_count(restored) == 1) {
    const palu_session_info* e = palu_session_list_get(restored, 0);
    if (e->tokens != after) fprintf(stderr, "restored %u tokens, saved %u\n", e->tokens, after);
    CHECK(e->tokens == after && strcmp(e->name, "epsilon") == 0);
  }
  palu_session_list_free(restored);
  /* The restored copy continues exactly as the original. */
  palu_generate_params g4;
  greedy(&g4, " And", 4);
  text_seen[0] = 0;
  CHECK_RC(c, palu_session_generate(c, "alpha", &g4, collect, NULL, NULL), PALU_OK);
  strcpy(first_text, text_seen);
  text_seen[0] = 0;
  CHECK_RC(c, palu_session_generate(c, "epsilon", &g4, collect, NULL, NULL), PALU_OK);
  CHECK(strcmp(first_text, text_seen) == 0);

  CHECK_RC(c, palu_session_close(c, "epsilon", 0), PALU_OK);
  CHECK_RC(c, palu_session_close(c, "alpha", 1), PALU_OK);
  CHECK_RC(c, palu_session_restore(c, "alpha", NULL, NULL), PALU_ENOTFOUND); /* deleted with it */
  CHECK_RC(c, palu_session_restore(c, "alpha-copy", NULL, &restored), PALU_OK); /* named as the file */
  CHECK(palu_session_list_count(restored) == 1 && strcmp(palu_session_list_get(restored, 0)->name, "alpha-copy") == 0);
  palu_session_list_free(restored);

  /* Corrupt saved file: DATA_LOSS, kept aside. */
  char file[400];
  snprintf(file, sizeof file, "%s/state/sessions/%d/alpha-copy.palu", dir, (int)getuid());
  FILE* f = fopen(file, "r+b");
  CHECK(f != NULL);
  if (f) {
    fseek(f, 200, SEEK_SET);
    fputc(0x5a, f);
    fputc(0xa5, f);
    fclose(f);
  }
  CHECK_RC(c, palu_session_close(c, "alpha-copy", 0), PALU_OK);
  CHECK_RC(c, palu_session_restore(c, "alpha-copy", NULL, NULL), PALU_EDATALOSS);
  CHECK(strstr(palu_client_last_error(c), "alpha-copy") != NULL);
}

static void test_stats(palu_client* c) {
  palu_stats* st = NULL;
  CHECK_RC(c, palu_stats_get(c, &st), PALU_OK);
  const palu_daemon_stats* d = palu_stats_daemon(st);
  CHECK(d != NULL && d->requests > 10 && d->generated_tokens > 20 && d->uptime_s > 0);
  CHECK(palu_stats_tier_count(st) >= 2);
  int host = 0;
  for (size_t i = 0; i < palu_stats_tier_count(st); ++i) {
    const palu_tier_info* t = palu_stats_tier(st, i);
    CHECK(t->used_bytes <= t->budget_bytes);
    if (strcmp(t->tier, "host") == 0) host = t->budget_bytes == 16ull << 20;
  }
  CHECK(host);
  CHECK(palu_stats_tier(st, 99) == NULL);
  CHECK(palu_session_list_count(palu_stats_sessions(st)) == 3); /* beta, gamma, delta */
  palu_stats_free(st);
}

/* palu_client_interrupt from another thread while a generation runs. */
static void* interrupter(void* arg) {
  sleep_ms(300);
  palu_client_interrupt((palu_client*)arg);
  return NULL;
}

static void test_interrupt_from_thread(palu_client* c) {
  palu_generate_params gp;
  greedy(&gp, NULL, 100000);
  pthread_t t;
  pthread_create(&t, NULL, interrupter, c);
  palu_generate_result r = palu_generate_default_result();
  CHECK_RC(c, palu_session_generate(c, "beta", &gp, NULL, NULL, &r), PALU_ECANCELLED);
  pthread_join(t, NULL);
  CHECK(strcmp(r.stop_reason, "cancelled") == 0 && r.generated_tokens > 0);
}

/* The daemon goes away mid-connection: ECLOSED, then ECONNECT for new clients. */
static void test_daemon_gone(palu_client* c) {
  stop_daemon(SIGKILL);
  palu_session_list* l = NULL;
  CHECK_RC(c, palu_sessions_list(c, &l), PALU_ECLOSED);
  CHECK(strstr(palu_client_last_error(c), socket_path) != NULL);
  CHECK_RC(c, palu_sessions_list(c, &l), PALU_ECLOSED);
  palu_client_params p = palu_client_default_params();
  p.socket_path = socket_path;
  palu_client* d = NULL;
  CHECK_RC(d, palu_client_open(&p, &d), PALU_ECONNECT);
  palu_client_free(d);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s PALUD MODEL_DIR\n", argv[0]);
    return 2;
  }
  palud_path = argv[1];
  model_dir = argv[2];
  strcpy(dir, "/tmp/palu-sdk-XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 2;
  }
  snprintf(socket_path, sizeof socket_path, "%s/run/palud.sock", dir);

  test_versions_and_names();
  test_daemon_absent();
  if (!start_daemon()) {
    fprintf(stderr, "palud did not start; its log is %s/palud.log\n", dir);
    return 1;
  }
  test_protocol_mismatch();
  palu_client* c = open_client();
  test_models(c);
  test_tokenizer(c);
  test_sessions_and_generation(c);
  test_stats(c);
  test_interrupt_from_thread(c);
  test_daemon_gone(c);
  palu_client_free(c);
  stop_daemon(SIGKILL);
  printf("sdk_c_test: %d checks, %d failed\n", checks, failures);
  if (failures == 0) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  } else {
    fprintf(stderr, "palud's log: %s/palud.log\n", dir);
  }
  return failures == 0 ? 0 : 1;
}
