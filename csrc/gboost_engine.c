/* Engine handles: one Python EngineHandle each, calls counted in flight so that a free (or
 * gboost_shutdown) waits for them. See gboost.c for the locking rules. */
#include "gboost_internal.h" /* first: Python.h precedes the system headers */

#include <stdlib.h>

static int engine_enter(gboost_engine* e, char** error_out) {
    int st = state();
    if (!e) {
        set_error(error_out, dup_cstr("gboost: engine is NULL"));
        return 0;
    }
    if (st != ST_READY) {
        set_error(error_out, dup_cstr(st == ST_DONE ? "gboost: already shut down" : "gboost: call gboost_init first"));
        return 0;
    }
    pthread_mutex_lock(&e->mu);
    if (e->closing || !e->handle) {
        pthread_mutex_unlock(&e->mu);
        set_error(error_out, dup_cstr("gboost: engine handle is closed"));
        return 0;
    }
    e->inflight++;
    pthread_mutex_unlock(&e->mu);
    return 1;
}

static void engine_leave(gboost_engine* e) {
    pthread_mutex_lock(&e->mu);
    if (--e->inflight == 0) pthread_cond_broadcast(&e->idle);
    pthread_mutex_unlock(&e->mu);
}

/* Mark closing, wait for in-flight calls, take the Python handle out (the caller closes it). */
PyObject* engine_detach(gboost_engine* e) {
    PyObject* h;
    pthread_mutex_lock(&e->mu);
    e->closing = 1;
    while (e->inflight > 0) pthread_cond_wait(&e->idle, &e->mu);
    h = e->handle;
    e->handle = NULL;
    pthread_mutex_unlock(&e->mu);
    return h;
}

/* GIL held. */
void close_handle(PyObject* h) {
    PyObject* r = PyObject_CallMethod(h, "close", NULL);
    if (r)
        Py_DECREF(r);
    else
        PyErr_Clear();
    Py_DECREF(h);
}

gboost_engine* gboost_engine_create(const char* config_json, char** error_out) {
    gboost_engine* e;
    PyObject* h;
    PyGILState_STATE gs;
    char* err = NULL;
    int st = state();

    if (error_out) *error_out = NULL;
    if (st != ST_READY) {
        set_error(error_out, dup_cstr(st == ST_DONE ? "gboost: already shut down" : "gboost: call gboost_init first"));
        return NULL;
    }
    if (!config_json) {
        set_error(error_out, dup_cstr("gboost: config_json is NULL"));
        return NULL;
    }
    e = (gboost_engine*)calloc(1, sizeof *e);
    if (!e) {
        set_error(error_out, dup_cstr("gboost: out of memory"));
        return NULL;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->idle, NULL);

    gs = PyGILState_Ensure();
    h = PyObject_CallMethod(g_module, "create_engine", "s", config_json);
    if (!h) err = fetch_py_error();
    PyGILState_Release(gs);
    if (!h) {
        pthread_cond_destroy(&e->idle);
        pthread_mutex_destroy(&e->mu);
        free(e);
        set_error(error_out, err ? err : dup_cstr("gboost: engine creation failed"));
        return NULL;
    }
    e->handle = h;
    pthread_mutex_lock(&g_lock);
    e->next = g_engines;
    if (g_engines) g_engines->prev = e;
    g_engines = e;
    e->listed = 1;
    pthread_mutex_unlock(&g_lock);
    return e;
}

/* method(a, b) on the handle -> malloc'ed str result, or NULL with *error_out set. */
static char* call_handle(gboost_engine* e, const char* method, const char* a, const char* b, int nargs,
                         char** error_out) {
    PyGILState_STATE gs;
    PyObject* r;
    char* out = NULL;
    char* err = NULL;
    if (error_out) *error_out = NULL;
    if (nargs > 0 && !a) {
        set_error(error_out, dup_fmt("gboost: %s: the text argument is NULL", method));
        return NULL;
    }
    if (!engine_enter(e, error_out)) return NULL;
    gs = PyGILState_Ensure();
    if (nargs > 0)
        r = PyObject_CallMethod(e->handle, method, "sz", a, b);
    else
        r = PyObject_CallMethod(e->handle, method, NULL);
    if (r) {
        out = py_str_dup(r);
        Py_DECREF(r);
    }
    if (!out) err = fetch_py_error();
    PyGILState_Release(gs);
    engine_leave(e);
    if (!out) set_error(error_out, err ? err : dup_cstr("gboost: out of memory"));
    return out;
}

char* gboost_generate(gboost_engine* engine, const char* prompt, const char* params_json, char** error_out) {
    return call_handle(engine, "generate", prompt, params_json, 2, error_out);
}

char* gboost_solve(gboost_engine* engine, const char* question, const char* overrides_json, char** error_out) {
    return call_handle(engine, "solve", question, overrides_json, 2, error_out);
}

char* gboost_engine_info(gboost_engine* engine, char** error_out) {
    return call_handle(engine, "info", NULL, NULL, 0, error_out);
}

void gboost_string_free(char* s) { free(s); }

void gboost_engine_free(gboost_engine* e) {
    PyObject* h;
    if (!e) return;
    h = engine_detach(e);
    pthread_mutex_lock(&g_lock);
    if (e->listed) {
        if (e->prev) e->prev->next = e->next;
        else g_engines = e->next;
        if (e->next) e->next->prev = e->prev;
        e->listed = 0;
    }
    pthread_mutex_unlock(&g_lock);
    if (h && state() == ST_READY) {
        PyGILState_STATE gs = PyGILState_Ensure();
        close_handle(h);
        PyGILState_Release(gs);
    } /* else: closed by gboost_shutdown already (h is NULL) */
    pthread_cond_destroy(&e->idle);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
