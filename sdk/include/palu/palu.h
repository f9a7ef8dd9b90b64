/*
 * palu.h — the C SDK of palu: talk to the palud daemon (sessions with a latent KV cache).
 *
 * C11 (and C++) compatible. Link with -lpalu (pkg-config palu, or CMake find_package(palu)
 * and the target palu::palu; palu::palu_static for the static library).
 *
 * Usage:
 *
 *   palu_client_params cp = palu_client_default_params();   // default socket, 5 s connect
 *   palu_client* c = NULL;
 *   if (palu_client_open(&cp, &c) != PALU_OK) {
 *     fprintf(stderr, "palud: %s\n", palu_client_last_error(c));  // c may be NULL (no memory)
 *     palu_client_free(c);
 *     return 1;
 *   }
 *   palu_session_params sp = palu_session_default_params();
 *   sp.name = "notes";
 *   palu_session_create(c, &sp, NULL);
 *   palu_generate_params gp = palu_generate_default_params();
 *   gp.prompt = "Once upon a time";
 *   gp.max_tokens = 32;
 *   palu_generate_result res = palu_generate_default_result();
 *   int rc = palu_session_generate(c, "notes", &gp, print_chunk, NULL, &res);
 *   ...
 *   palu_client_free(c);
 *
 * Errors: every function that can fail returns an int status: PALU_OK (0) or a negative
 * PALU_E* code. palu_status_name() gives the code's name ("PALU_ENOTFOUND"),
 * palu_status_string() a short description; palu_client_last_error() the detailed message of
 * the client's last failure (naming the field, the expected and the found value, as palud or
 * the SDK wrote it). Codes -1 .. -14 are palud's (palu.api.v1.Code, negated); -100 and below
 * are the SDK's own (connection, timeout, memory).
 *
 * Memory: everything the SDK allocates has a *_free function; every *_free accepts NULL.
 * Strings inside a result (names, text) live as long as the object that holds them. Input
 * strings are UTF-8 and are copied before the call returns.
 *
 * Thread-safety: a palu_client (and the objects it returns) is used by one thread at a time;
 * use one client per thread for parallel work (palud serves many connections). The single
 * exception is palu_client_interrupt(), which any thread may call at any time to stop the
 * generation in progress on that client. The functions without a handle (versions, status
 * names, default params) are thread-safe.
 *
 * Versions: PALU_VERSION_* is the SDK this file belongs to; palu_version() the library linked
 * at run time. PALU_PROTOCOL_VERSION is the wire protocol; palud refuses a client whose
 * protocol differs (PALU_EVERSION, the message names both versions).
 */
#ifndef PALU_PALU_H_
#define PALU_PALU_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PALU_BUILDING_SDK)
#define PALU_API __attribute__((visibility("default")))
#else
#define PALU_API
#endif

/* ---------------------------------------------------------------------------------------- */
/* Versions                                                                                 */

#define PALU_VERSION_MAJOR 0
#define PALU_VERSION_MINOR 1
#define PALU_VERSION_PATCH 0
#define PALU_VERSION_NUMBER (PALU_VERSION_MAJOR * 10000 + PALU_VERSION_MINOR * 100 + PALU_VERSION_PATCH)
#define PALU_PROTOCOL_VERSION 1

/* "0.1.0" of the linked library. */
PALU_API const char* palu_version(void);
/* PALU_VERSION_NUMBER of the linked library. */
PALU_API int palu_version_number(void);

/* ---------------------------------------------------------------------------------------- */
/* Status codes                                                                             */

typedef enum palu_status {
  PALU_OK = 0,
  /* palud's answers (palu.api.v1.Code, negated) */
  PALU_EINVAL = -1,          /* a field is out of range or malformed */
  PALU_ENOTFOUND = -2,       /* unknown model or session */
  PALU_EEXIST = -3,          /* a name already in use */
  PALU_EPERM = -4,           /* the session belongs to another user */
  PALU_ENOSPACE = -5,        /* does not fit in the memory budgets even after offloading */
  PALU_EPRECONDITION = -6,   /* e.g. the session is busy with another request */
  PALU_ECANCELLED = -7,      /* the generation was cancelled */
  PALU_EBUSY = -8,           /* palud's queue is full; retry later */
  PALU_EVERSION = -9,        /* client and daemon speak different protocol versions */
  PALU_EDATALOSS = -10,      /* a corrupt session file (palud kept it aside) */
  PALU_EINTERNAL = -11,      /* a bug in palud */
  PALU_EUNIMPLEMENTED = -12, /* palud does not know this request */
  PALU_ERANGE = -13,         /* e.g. the session's context is full */
  PALU_EIO = -14,            /* palud could not write (disk full, fsync failure) */
  /* the SDK's own */
  PALU_ECONNECT = -100,      /* no palud at the socket (not running, wrong path, no access) */
  PALU_ECLOSED = -101,       /* the connection was lost (palud stopped or closed it) */
  PALU_ETIMEOUT = -102,      /* no answer within the client's timeout */
  PALU_ENOMEM = -103,        /* out of memory in the SDK */
  PALU_EPROTOCOL = -104,     /* palud sent something the SDK cannot read */
  PALU_EARG = -105           /* a bad argument to an SDK function (NULL handle, bad struct_size) */
} palu_status;

/* "PALU_ENOTFOUND"; "PALU_EUNKNOWN" for a code that is not one of the above. Static strings. */
PALU_API const char* palu_status_name(int status);
/* "unknown model or session". Static strings. */
PALU_API const char* palu_status_string(int status);

/* ---------------------------------------------------------------------------------------- */
/* Client                                                                                   */

typedef struct palu_client palu_client;

typedef struct palu_client_params {
  size_t struct_size;         /* sizeof(palu_client_params); set by palu_client_default_params */
  const char* socket_path;    /* NULL: $PALU_SOCKET, else $XDG_RUNTIME_DIR/palu/palud.sock,
                                 else /tmp/palu-<uid>/palu/palud.sock (where palud listens) */
  const char* client_name;    /* shown in palud's log; NULL: "libpalu" */
  int connect_timeout_ms;     /* connect + handshake; default 5000 */
  int request_timeout_ms;     /* wait for each answer (one chunk of a stream); 0 = no limit
                                 (default: a long prompt may take a while) */
  uint32_t protocol_version;  /* 0 = PALU_PROTOCOL_VERSION; other values are for tests */
} palu_client_params;

PALU_API palu_client_params palu_client_default_params(void);

/* Connects and shakes hands. Like sqlite3_open: on failure *out is usually still set to a
 * client in a failed state whose palu_client_last_error() explains (NULL only when memory
 * ran out); free it either way. Errors: PALU_ECONNECT, PALU_ETIMEOUT, PALU_EVERSION,
 * PALU_ECLOSED, PALU_EARG. */
PALU_API int palu_client_open(const palu_client_params* params, palu_client** out);
/* Closes the connection (generations it started are cancelled by palud) and frees. */
PALU_API void palu_client_free(palu_client* client);
/* The message of the client's last failure; "" when the last call succeeded. Valid until the
 * next call on the client. NULL client: a note saying so. */
PALU_API const char* palu_client_last_error(const palu_client* client);
/* The status of the client's last call. */
PALU_API int palu_client_last_status(const palu_client* client);
/* palud's version string ("0.1.0") and protocol version from the handshake. */
PALU_API const char* palu_client_daemon_version(const palu_client* client);
PALU_API uint32_t palu_client_daemon_protocol(const palu_client* client);
/* The socket path the client connected (or tried to connect) to. */
PALU_API const char* palu_client_socket_path(const palu_client* client);
/* Thread-safe: asks the generation now running on this client (palu_session_generate or a
 * palu_stream) to stop; it ends with PALU_ECANCELLED and the tokens generated so far. A call
 * when no generation is running has no effect (each generation starts uninterrupted). */
PALU_API void palu_client_interrupt(palu_client* client);

/* ---------------------------------------------------------------------------------------- */
/* Models                                                                                   */

typedef struct palu_model_info {
  size_t struct_size;
  const char* name;
  const char* path;
  const char* architecture;   /* "llama", "mistral", "qwen2" */
  const char* summary;        /* "4 layers, d=256, 4/4 heads" */
  const char* fingerprint;    /* sessions are bound to it */
  int compressed;             /* 1: a palu-compressed model (latent cache) */
  uint64_t kv_bytes_per_token;
  uint32_t max_context;
  uint32_t vocab_size;
  uint32_t latent_bits;       /* the cache's storage: 0 = f16, else 2/3/4/8 */
  uint32_t window_tokens;     /* newest tokens also kept in f16 */
} palu_model_info;

typedef struct palu_model_list palu_model_list;
PALU_API size_t palu_model_list_count(const palu_model_list* list);
/* NULL when i >= count. */
PALU_API const palu_model_info* palu_model_list_get(const palu_model_list* list, size_t i);
PALU_API void palu_model_list_free(palu_model_list* list);

typedef struct palu_load_params {
  size_t struct_size;
  const char* path;           /* required: Hugging Face dir, palu-compressed dir or .gguf (as
                                 palud sees the file system) */
  const char* name;           /* NULL: the directory / file name */
  uint32_t latent_bits;       /* 0 = f16 */
  uint32_t window_tokens;
} palu_load_params;
PALU_API palu_load_params palu_load_default_params(void);

PALU_API int palu_models_list(palu_client* client, palu_model_list** out);
/* out (may be NULL): a list holding the loaded model. */
PALU_API int palu_model_load(palu_client* client, const palu_load_params* params, palu_model_list** out);
PALU_API int palu_model_unload(palu_client* client, const char* name);

/* ---------------------------------------------------------------------------------------- */
/* Sessions. A session is named by its name (unique per user); palud keeps its KV cache.    */

typedef struct palu_session_info {
  size_t struct_size;
  uint64_t id;
  const char* name;
  const char* model;
  uint32_t tokens;            /* tokens in the cache (the context length) */
  uint32_t max_context;
  uint64_t kv_bytes;          /* bytes its cache takes in its tier */
  const char* tier;           /* "gpu", "host" or "disk" */
  const char* state;          /* "idle", "prefill", "generating" */
  double last_used_unix;
  int saved;                  /* 1: has a saved file */
  /* Added after 0.1 (read them only when struct_size covers them): */
  uint32_t latent_bits;       /* its cache setting: 0 = f16 (latents or rows), else 2/3/4/8 */
  uint32_t window_tokens;     /* newest tokens also kept in f16 */
  int decode_on_host;         /* 1: never moved to the GPU tier */
} palu_session_info;

typedef struct palu_session_list palu_session_list;
PALU_API size_t palu_session_list_count(const palu_session_list* list);
PALU_API const palu_session_info* palu_session_list_get(const palu_session_list* list, size_t i);
/* The session named `name`, or NULL. */
PALU_API const palu_session_info* palu_session_list_find(const palu_session_list* list, const char* name);
PALU_API void palu_session_list_free(palu_session_list* list);

typedef struct palu_session_params {
  size_t struct_size;
  const char* name;           /* NULL: palud picks "s<id>" */
  const char* model;          /* NULL: the first loaded model */
  const char* system_prompt;  /* NULL: none; queued after BOS and run before the session's next
                                 request (the tokens count of the reply does not include it yet) */
  uint32_t max_context;       /* 0 = the model's */
  /* Added after 0.1 (an older caller's smaller struct_size leaves the defaults): */
  int latent_bits;            /* -1 (default): the model's cache setting; 0 = f16 latents;
                                 2, 3, 4 or 8 = quantized (compressed models only) */
  uint32_t window_tokens;     /* with latent_bits 2..8: newest N tokens also in f16 */
  int decode_on_host;         /* 1: never move this session to palud's GPU tier (its cache stays
                                 in host memory and the CPU decodes it) */
} palu_session_params;
PALU_API palu_session_params palu_session_default_params(void);

/* The out lists (may be NULL) hold the one session concerned. */
PALU_API int palu_session_create(palu_client* client, const palu_session_params* params, palu_session_list** out);
PALU_API int palu_sessions_list(palu_client* client, palu_session_list** out);
/* Frees the session in palud; delete_saved = 1 also removes its saved file (the file it was
 * last saved to or restored from; for a session never saved or restored, <name>.palu). */
PALU_API int palu_session_close(palu_client* client, const char* session, int delete_saved);
/* Copies a session (its cache and history) under a new name. */
PALU_API int palu_session_fork(palu_client* client, const char* session, const char* new_name,
                               palu_session_list** out);
/* Saves to palud's state directory as <file_name>.palu (NULL: the session's name); atomic. */
PALU_API int palu_session_save(palu_client* client, const char* session, const char* file_name);
/* Loads a saved session; name NULL: the file name. PALU_EDATALOSS for a corrupt
 * file, PALU_EPRECONDITION for a file of another model. */
PALU_API int palu_session_restore(palu_client* client, const char* file_name, const char* name,
                                  palu_session_list** out);
/* Runs text (tokenized by the model; add_bos 1 puts BOS first) or token ids through the
 * model. tokens_after (may be NULL): the session's length after. */
PALU_API int palu_session_append_text(palu_client* client, const char* session, const char* text, int add_bos,
                                      uint32_t* tokens_after);
PALU_API int palu_session_append_tokens(palu_client* client, const char* session, const int32_t* ids,
                                        size_t n_ids, uint32_t* tokens_after);
/* Stops the generation or append that `session` is running, from whichever client of this
 * user started it. */
PALU_API int palu_session_cancel(palu_client* client, const char* session);

/* ---------------------------------------------------------------------------------------- */
/* Generation                                                                               */

typedef struct palu_generate_params {
  size_t struct_size;
  const char* prompt;              /* appended first; NULL: none */
  const int32_t* prompt_ids;       /* or token ids */
  size_t n_prompt_ids;
  uint32_t max_tokens;             /* default 128 */
  float temperature;               /* default 0.8; 0 = greedy */
  float top_p;                     /* default 0.95 */
  uint32_t top_k;                  /* default 40; 0 = all */
  uint64_t seed;
  int has_seed;                    /* 0 (default): palud picks a seed */
  const char* const* stop;         /* stop strings, not included in the output */
  size_t n_stop;
  const int32_t* stop_ids;         /* stop token ids (EOS always stops unless ignore_eos) */
  size_t n_stop_ids;
  int ignore_eos;
} palu_generate_params;
PALU_API palu_generate_params palu_generate_default_params(void);

/* One piece of a stream: the tokens palud produced since the last piece and their text
 * (UTF-8, never split inside a character; may be empty while a character is incomplete). */
typedef struct palu_chunk {
  size_t struct_size;
  const int32_t* token_ids;
  size_t n_token_ids;
  const char* text;                /* NUL-terminated */
  size_t text_bytes;
} palu_chunk;

typedef struct palu_generate_result {
  size_t struct_size;
  const char* stop_reason;         /* "max_tokens", "eos", "stop", "context_full", "cancelled";
                                      "" when the generation failed before it ended. Static. */
  uint32_t prompt_tokens;          /* tokens appended from the prompt */
  uint32_t generated_tokens;
  double time_to_first_token_ms;
  double decode_tokens_per_s;
} palu_generate_result;
PALU_API palu_generate_result palu_generate_default_result(void);

/* Return 0 to go on, anything else to cancel (the generation then ends with PALU_ECANCELLED). */
typedef int (*palu_chunk_callback)(const palu_chunk* chunk, void* user_data);

/* Generates and calls `on_chunk` (may be NULL) for each piece as it arrives; returns when the
 * generation ended. result (may be NULL) gets the stop reason and counts, also on
 * PALU_ECANCELLED. */
PALU_API int palu_session_generate(palu_client* client, const char* session, const palu_generate_params* params,
                                   palu_chunk_callback on_chunk, void* user_data, palu_generate_result* result);

/* The same as a pull-style iterator:
 *   palu_stream* s; palu_stream_start(c, "notes", &gp, &s);
 *   const palu_chunk* ch;
 *   while ((rc = palu_stream_next(s, &ch)) == 1) fwrite(ch->text, 1, ch->text_bytes, stdout);
 *   // rc: 0 = ended normally, < 0 = error (PALU_ECANCELLED after palu_stream_cancel)
 *   palu_stream_result(s, &res); palu_stream_free(s);
 * The client runs nothing else until the stream ended (other calls get PALU_EPRECONDITION).
 * A stream freed before its end is cancelled first. */
typedef struct palu_stream palu_stream;
PALU_API int palu_stream_start(palu_client* client, const char* session, const palu_generate_params* params,
                               palu_stream** out);
/* 1: *chunk is the next piece (valid until the next call); 0: the generation ended; < 0: error. */
PALU_API int palu_stream_next(palu_stream* stream, const palu_chunk** chunk);
/* Asks palud to stop; palu_stream_next then drains to the end (PALU_ECANCELLED). */
PALU_API int palu_stream_cancel(palu_stream* stream);
PALU_API int palu_stream_result(const palu_stream* stream, palu_generate_result* result);
PALU_API void palu_stream_free(palu_stream* stream);

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                */

typedef struct palu_tokens palu_tokens;
/* model NULL: the first loaded model. */
PALU_API int palu_tokenize(palu_client* client, const char* model, const char* text, int add_bos, palu_tokens** out);
PALU_API size_t palu_tokens_count(const palu_tokens* tokens);
PALU_API const int32_t* palu_tokens_data(const palu_tokens* tokens);
PALU_API void palu_tokens_free(palu_tokens* tokens);
/* *out_text: NUL-terminated UTF-8, free with palu_string_free. */
PALU_API int palu_detokenize(palu_client* client, const char* model, const int32_t* ids, size_t n_ids,
                             char** out_text);
PALU_API void palu_string_free(char* text);

/* ---------------------------------------------------------------------------------------- */
/* Stats                                                                                    */

typedef struct palu_tier_info {
  size_t struct_size;
  const char* tier;            /* "gpu", "host", "disk" */
  uint64_t budget_bytes;
  uint64_t used_bytes;
  uint32_t sessions;
} palu_tier_info;

typedef struct palu_daemon_stats {
  size_t struct_size;
  uint64_t demotions;          /* sessions moved down a tier */
  uint64_t restorations;       /* sessions brought back up */
  uint64_t requests;
  uint64_t generated_tokens;
  uint32_t queue_depth;
  double uptime_s;
} palu_daemon_stats;

typedef struct palu_stats palu_stats;
PALU_API int palu_stats_get(palu_client* client, palu_stats** out);
PALU_API const palu_daemon_stats* palu_stats_daemon(const palu_stats* stats);
PALU_API size_t palu_stats_tier_count(const palu_stats* stats);
PALU_API const palu_tier_info* palu_stats_tier(const palu_stats* stats, size_t i);
/* The caller's sessions; owned by the stats object. */
PALU_API const palu_session_list* palu_stats_sessions(const palu_stats* stats);
PALU_API void palu_stats_free(palu_stats* stats);

#ifdef __cplusplus
}
#endif

#endif /* PALU_PALU_H_ */
