/*
 * What the files of libgboost share (not installed; the public ABI is gboost.h):
 *   gboost.c          the interpreter's life: globals, version, init, shutdown
 *   gboost_engine.c   engine handles: create, calls into Python, free
 *   gboost_strings.c  malloc'ed strings and Python errors turned into messages
 * Shared functions are hidden: only gboost.h's GBOOST_API names leave the library.
 */
#ifndef GBOOST_INTERNAL_H
#define GBOOST_INTERNAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>

#define GBOOST_BUILDING 1
#include "gboost.h"

#define GB_HIDDEN __attribute__((visibility("hidden")))

enum { ST_NONE = 0, ST_READY = 1, ST_DONE = 2 };

struct gboost_engine {
    PyObject* handle; /* _gboost_capi.EngineHandle; NULL once closed (guarded by mu) */
    pthread_mutex_t mu;
    pthread_cond_t idle;
    int inflight;
    int closing;
    int listed;
    struct gboost_engine* prev;
    struct gboost_engine* next;
};

/* defined in gboost.c */
extern GB_HIDDEN pthread_mutex_t g_lock;
extern GB_HIDDEN int g_state; /* read with atomics, written under g_lock */
extern GB_HIDDEN PyObject* g_module; /* _gboost_capi */
extern GB_HIDDEN gboost_engine* g_engines;

static inline int state(void) { return __atomic_load_n(&g_state, __ATOMIC_ACQUIRE); }

/* gboost_strings.c */
GB_HIDDEN char* dup_bytes(const char* s, size_t n);
GB_HIDDEN char* dup_cstr(const char* s);
GB_HIDDEN char* dup_fmt(const char* fmt, ...);
GB_HIDDEN void set_error(char** error_out, char* msg);
GB_HIDDEN char* py_str_dup(PyObject* s);
GB_HIDDEN char* fetch_py_error(void);

/* gboost_engine.c; engine_detach waits for in-flight calls, close_handle needs the GIL */
GB_HIDDEN PyObject* engine_detach(gboost_engine* e);
GB_HIDDEN void close_handle(PyObject* h);

#endif
