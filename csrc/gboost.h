/*
 * gboost C ABI: the gboost Python inference engine (PRM-guided SLM/LLM collaboration) embedded
 * in process through the CPython C API. Plain C (C89-compatible declarations), usable from C++.
 *
 * Life cycle
 *   gboost_init(NULL)                      once per process, before any other call
 *   gboost_engine_create(config, &err)     loads the models; one handle per model set
 *   gboost_generate / gboost_solve         from any number of host threads, concurrently
 *   gboost_engine_free(engine)             after every call on that handle has returned
 *   gboost_shutdown()                      optional, at exit, after everything else
 *
 * Ownership
 *   - Every `char*` this library returns (results and *error_out messages) is allocated by the
 *     library, owned by the caller, NUL-terminated UTF-8, and must be released with
 *     gboost_string_free() (not free/delete). Passing NULL to gboost_string_free is a no-op.
 *   - `const char*` returns (gboost_version, gboost_status_string, gboost_init_error) point to
 *     static storage owned by the library: never free them.
 *   - gboost_engine* is an opaque handle owned by the caller, released with gboost_engine_free.
 *   - Input strings are only read during the call; the library keeps no pointer to them.
 *
 * Errors
 *   No function aborts or exits the host. A failing call returns NULL (pointer results) or a
 *   negative gboost_status, and, when error_out is not NULL, stores in *error_out a message
 *   ("ExceptionType: message", no traceback, credentials redacted) that the caller frees with
 *   gboost_string_free. On success *error_out is set to NULL. error_out may be NULL.
 *
 * Threads
 *   After gboost_init the GIL is released; every call takes it with PyGILState_Ensure only
 *   around its calls into Python, and the GIL is released again while a call waits for the
 *   engine. Calls on one handle (from several host threads) share that handle's scheduler, so
 *   their forward passes are batched together. If the host initialised Python itself, gboost
 *   uses that interpreter; the host must then not hold the GIL in one thread while another
 *   thread is inside a gboost call that it waits for.
 *   gboost_engine_free waits for the calls already running on its handle to return; no call
 *   may start on a handle once gboost_engine_free has been called on it. gboost_init and
 *   gboost_shutdown may not run concurrently with calls that use an engine.
 */
#ifndef GBOOST_H
#define GBOOST_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  ifdef GBOOST_BUILDING
#    define GBOOST_API __declspec(dllexport)
#  else
#    define GBOOST_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define GBOOST_API __attribute__((visibility("default")))
#else
#  define GBOOST_API
#endif

#define GBOOST_VERSION_MAJOR 0
#define GBOOST_VERSION_MINOR 1
#define GBOOST_VERSION_PATCH 0
/* Bumped on any incompatible change of the functions or JSON shapes below. */
#define GBOOST_ABI_VERSION 1

typedef enum gboost_status {
    GBOOST_OK = 0,
    GBOOST_ERR_PYTHON = -1,   /* the interpreter or the gboost Python package failed */
    GBOOST_ERR_STATE = -2,    /* wrong life-cycle state (e.g. gboost_init after gboost_shutdown) */
    GBOOST_ERR_ARGUMENT = -3  /* a NULL or invalid argument */
} gboost_status;

/* Opaque engine handle: the models, the KV pool, the scheduler and one event loop thread. */
typedef struct gboost_engine gboost_engine;

/* Library version, "MAJOR.MINOR.PATCH". Static string; callable before gboost_init. */
GBOOST_API const char* gboost_version(void);

/* Static, human-readable name of a status. */
GBOOST_API const char* gboost_status_string(gboost_status status);

/*
 * Start (or adopt) the Python interpreter and load the gboost glue. Thread-safe; reference
 * counted: each successful call must be matched by one gboost_shutdown.
 *   python_home_or_null: NULL to use the Python gboost was built against (or $PYTHONHOME);
 *     a directory: used as PYTHONHOME (the prefix holding lib/python3.X);
 *     a file: the python executable to behave as, e.g. a virtualenv's bin/python, so that the
 *     venv's site-packages are found.
 *   Ignored when Python is already initialised in this process (the host's interpreter is used
 *   as is and is never finalised by gboost).
 * Returns GBOOST_OK; GBOOST_ERR_ARGUMENT (python_home_or_null does not exist or is not a home of
 * this Python version), GBOOST_ERR_PYTHON (the interpreter did not start, or the gboost package
 * `engine` is not importable), both explained by gboost_init_error(); GBOOST_ERR_STATE after the
 * final gboost_shutdown (CPython with torch loaded cannot be re-initialised). A failed call can be
 * retried (e.g. after fixing PYTHONPATH).
 * When gboost starts the interpreter, signal handlers are left to the host, sys.argv is [""],
 * and Python log records (WARNING and up) go to stderr with credentials redacted.
 */
GBOOST_API gboost_status gboost_init(const char* python_home_or_null);

/* Why the last gboost_init failed, or NULL. Static buffer owned by the library (do not free),
 * valid until the next gboost_init. */
GBOOST_API const char* gboost_init_error(void);

/*
 * Undo one gboost_init. The last one closes every engine still open (their handles must still
 * be passed to gboost_engine_free, which then only releases memory) and, if gboost started the
 * interpreter and this is the thread that called gboost_init, finalises Python. From another
 * thread the interpreter is left running. No gboost call may be in flight. No-op when not
 * initialised.
 */
GBOOST_API void gboost_shutdown(void);

/*
 * Load the models and build the serving stack. config_json (UTF-8 JSON object):
 *   {"slm": "qwen2.5-coder-0.5b" | "/path/hf_dir" | "/path/x.gguf" | "Org/Hub-id",   (required)
 *    "llm": same kinds | "http(s)://host/v1" (OpenAI-compatible) | null,   default null
 *    "prm": model | null (null: the local LLM, else the SLM),              default null
 *    "prm_kind": "judge" | "token_pair" | "two_class",                     default "judge"
 *    "base": model | null (the SLM's untuned base: search fusion_rule "proxy"), default null
 *    "slm_adapter": dir | null (a peft LoRA adapter for the SLM),           default null
 *    "slm_adapter_mode": "auto" | "merge" | "unmerged" (merged at load, or one resident base with
 *        the delta on the SLM's rows only; auto: unmerged when "base" is the SLM's checkpoint), default "auto"
 *    "lora_modules": {"name": dir, ...} (adapters unmerged on the SLM's one resident copy; a generate
 *        or solve call picks one with "adapter": "name"),                default {}
 *    "dtype": "bfloat16" | "float16" | "float32",                          default "bfloat16"
 *    "weights": "bf16" | "int8" | "int4" (every model's linears; int4: a GGUF's 4-bit tensors as
 *        they are, others requantized), default "bf16"
 *    "device": "cpu" | "cuda" | "cuda:N",                                  default "cpu"
 *    "kv_memory_gb": 2.0, "block_size": 16,
 *    "search": { SearchConfig fields (engine/search/config.py) },          default {}
 *    "collab_mode": "speculative" | "exact", "max_draft": 16, "draft_policy": "fixed" | "adaptive",
 *    "on_llm_fault": "fallback" | "fail",
 *    "topk_support": 20, "llm_timeout_s": 60.0, "llm_top_logprobs": 20,
 *    "llm_kind": "auto" | "completions" | "chat", "llm_model": name | null}
 * Unknown keys are an error. A remote LLM's API key is read from $GBOOST_LLM_API_KEY. The PRM uses
 * the defaults of its kind (engine/prm/scorer.py PRMSpec: judge needs "Yes" to be one token,
 * token_pair the tag "\u043a\u0438" and "+"/"-"). With "llm": null the search cannot take collab
 * steps: use method slm/bon/beam, or gboost with "collab_width": 0.
 * Returns a new handle (free with gboost_engine_free) or NULL with *error_out set.
 */
GBOOST_API gboost_engine* gboost_engine_create(const char* config_json, char** error_out);

/*
 * Sample a continuation of `prompt` (UTF-8) from one resident model.
 * params_json (NULL or "" for defaults): {"temperature": 0.0 (greedy), "top_k": 0, "top_p": 1.0,
 *   "max_tokens": 64, "seed": null, "stop_token_ids": [], "ignore_eos": false,
 *   "role": "slm" | "llm" | "prm" | "base", "chat": false (wrap the prompt in the chat template)}
 * Returns (free with gboost_string_free) a JSON object
 *   {"text": str, "token_ids": [int], "seconds": float, "finish_reason": "stop" | "length",
 *    "prompt_tokens": int}
 * or NULL with *error_out set. Same tokens as the Python Engine.generate with the same params.
 */
GBOOST_API char* gboost_generate(gboost_engine* engine, const char* prompt, const char* params_json,
                                 char** error_out);

/*
 * Solve one question with the configured search (SearchConfig.method: gboost, slm, llm, fusion,
 * bon, beam, rsd). overrides_json (NULL or "" for none): SearchConfig fields replacing the
 * engine's "search" config for this call only, plus "include_tree": true to add the search tree.
 * Returns (free with gboost_string_free) the JSON of gboost.search.api.SolveResult.to_dict():
 *   {"answer": str | null, "text": str, "method": str, "score": float | null,
 *    "steps": [{"text", "action", "reward"}], "cost": {...}, "stats": {...} [, "tree": {...}]}
 * or NULL with *error_out set.
 */
GBOOST_API char* gboost_solve(gboost_engine* engine, const char* question, const char* overrides_json,
                              char** error_out);

/*
 * JSON description of a handle: {"abi_version", "config", "search" (effective SearchConfig),
 * "roles", "kv_free_blocks", "scheduler_batches", "scheduler_max_batch", "backend_cost" (tokens
 * computed by every model for all solve calls so far), "python": {"version", "executable",
 * "prefix"}}. Free with gboost_string_free. NULL with *error_out set on error.
 */
GBOOST_API char* gboost_engine_info(gboost_engine* engine, char** error_out);

/* Release a string returned by this library. NULL is a no-op. */
GBOOST_API void gboost_string_free(char* s);

/*
 * Close a handle: waits for the calls already running on it to return, stops its event loop
 * thread and releases the models and the KV pool. NULL is a no-op. The handle is invalid
 * afterwards (no call may start on it once gboost_engine_free was called).
 */
GBOOST_API void gboost_engine_free(gboost_engine* engine);

#ifdef __cplusplus
}
#endif

#endif /* GBOOST_H */
