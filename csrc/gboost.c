/*
 * gboost C ABI implementation: embeds CPython and drives the Python glue of gboost_capi.py
 * (compiled into this library as gboost_capi_source, see embed_py.py).
 *
 * Locking rules (to stay deadlock-free):
 *   - g_lock (global state, list of open engines) and engine->mu (in-flight count) are never
 *     waited for while holding the GIL, except g_lock in gboost_init (serialises start-up);
 *   - the GIL is taken with PyGILState_Ensure only around calls into Python, and Python code
 *     releases it while waiting for the engine's event loop;
 *   - no Python exception ever escapes: each is turned into a malloc'ed message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GBOOST_BUILDING 1
#include "gboost.h"

#include "gboost_capi.inc" /* static const char gboost_capi_source[] (generated) */

#ifndef GBOOST_PYTHON_EXECUTABLE
#define GBOOST_PYTHON_EXECUTABLE "" /* the build's python, used as program name when present */
#endif

#define GB_STR2(x) #x
#define GB_STR(x) GB_STR2(x)
static const char k_version[] =
    GB_STR(GBOOST_VERSION_MAJOR) "." GB_STR(GBOOST_VERSION_MINOR) "." GB_STR(GBOOST_VERSION_PATCH);

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

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_state = ST_NONE; /* read with atomics, written under g_lock */
static int g_refs = 0;
static int g_started_python = 0;
static pthread_t g_init_thread;
static PyThreadState* g_saved_tstate = NULL;
static PyObject* g_module = NULL; /* _gboost_capi */
static gboost_engine* g_engines = NULL;
static char g_init_error[2048];

/* ------------------------------------------------------------------------------- strings */
static char* dup_bytes(const char* s, size_t n) {
    char* out = (char*)malloc(n + 1);
    if (out) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
}

static char* dup_cstr(const char* s) { return dup_bytes(s, strlen(s)); }

static char* dup_fmt(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return dup_cstr(buf);
}

static void set_error(char** error_out, char* msg) {
    if (error_out)
        *error_out = msg;
    else
        free(msg);
}

static int state(void) { return __atomic_load_n(&g_state, __ATOMIC_ACQUIRE); }

/* GIL held. A copy of a Python str as UTF-8; NULL (Python error set) if it is not one. */
static char* py_str_dup(PyObject* s) {
    Py_ssize_t n = 0;
    const char* u;
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "gboost glue returned %.80s instead of str", Py_TYPE(s)->tp_name);
        return NULL;
    }
    u = PyUnicode_AsUTF8AndSize(s, &n);
    if (!u) return NULL;
    return dup_bytes(u, (size_t)n);
}

/* GIL held, a Python error set: clear it and return its message (never NULL unless OOM). */
static char* fetch_py_error(void) {
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    char* msg = NULL;
    PyErr_Fetch(&type, &value, &tb);
    if (!type) return dup_cstr("gboost: unknown error (no Python exception set)");
    PyErr_NormalizeException(&type, &value, &tb);
    if (g_module && value) {
        PyObject* s = PyObject_CallMethod(g_module, "error_message", "O", value);
        if (s) {
            msg = py_str_dup(s);
            Py_DECREF(s);
        }
        if (!msg) PyErr_Clear();
    }
    if (!msg) /* no glue (start-up) or it failed: the exception type only, never unredacted text */
        msg = dup_fmt("%s (gboost could not format the message)",
                      PyExceptionClass_Check(type) ? ((PyTypeObject*)type)->tp_name : "Python error");
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return msg;
}

/* ------------------------------------------------------------------------------- version */
const char* gboost_version(void) { return k_version; }

const char* gboost_status_string(gboost_status status) {
    switch (status) {
    case GBOOST_OK: return "ok";
    case GBOOST_ERR_PYTHON: return "python error";
    case GBOOST_ERR_STATE: return "invalid state";
    case GBOOST_ERR_ARGUMENT: return "invalid argument";
    }
    return "unknown status";
}

const char* gboost_init_error(void) {
    const char* r;
    pthread_mutex_lock(&g_lock);
    r = g_init_error[0] ? g_init_error : NULL;
    pthread_mutex_unlock(&g_lock);
    return r;
}

/* --------------------------------------------------------------------------------- init */
static void init_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_init_error, sizeof g_init_error, fmt, ap);
    va_end(ap);
}

/* GIL held: compile and run the embedded glue as module _gboost_capi, check the engine. */
static gboost_status load_glue(int own_interpreter) {
    PyObject *code, *mod, *r;
    char* msg;
    if (g_module) return GBOOST_OK;
    code = Py_CompileString(gboost_capi_source, "gboost_capi.py", Py_file_input);
    if (!code) goto fail;
    mod = PyImport_ExecCodeModuleEx("_gboost_capi", code, "gboost_capi.py");
    Py_DECREF(code);
    if (!mod) goto fail;
    g_module = mod;
    r = PyObject_CallMethod(mod, "check_environment", NULL);
    if (!r) {
        msg = fetch_py_error();
        init_error("%s", msg ? msg : "cannot import the gboost Python package");
        free(msg);
        Py_CLEAR(g_module);
        return GBOOST_ERR_PYTHON;
    }
    Py_DECREF(r);
    if (own_interpreter) { /* nobody else configures Python logging: stderr, redacted */
        r = PyObject_CallMethod(mod, "setup_logging", NULL);
        if (r)
            Py_DECREF(r);
        else
            PyErr_Clear();
    }
    return GBOOST_OK;
fail:
    msg = fetch_py_error();
    init_error("cannot load the gboost glue module: %s", msg ? msg : "?");
    free(msg);
    return GBOOST_ERR_PYTHON;
}

static gboost_status start_python(const char* where) {
    PyConfig c;
    PyStatus st;
    char* argv0[] = {(char*)""};
    const char* exe = NULL;
    static char exe_buf[4096];
    struct stat sb;

    PyConfig_InitPythonConfig(&c);
    c.install_signal_handlers = 0; /* the host owns SIGINT & co. */
    c.parse_argv = 0;
    st = PyConfig_SetBytesArgv(&c, 1, argv0);
    if (PyStatus_Exception(st)) goto fail;
    if (where && *where) {
        if (stat(where, &sb) != 0) {
            PyConfig_Clear(&c);
            init_error("python_home_or_null: %s does not exist", where);
            return GBOOST_ERR_ARGUMENT;
        }
        if (S_ISDIR(sb.st_mode)) {
            char probe[4096];
            snprintf(probe, sizeof probe, "%s/lib/python%d.%d/os.py", where, PY_MAJOR_VERSION, PY_MINOR_VERSION);
            if (access(probe, R_OK) != 0) {
                PyConfig_Clear(&c);
                init_error("python_home_or_null: %s is not a Python %d.%d home (no lib/python%d.%d/os.py)", where,
                           PY_MAJOR_VERSION, PY_MINOR_VERSION, PY_MAJOR_VERSION, PY_MINOR_VERSION);
                return GBOOST_ERR_ARGUMENT;
            }
            st = PyConfig_SetBytesString(&c, &c.home, where);
            /* and its interpreter as program name, so sys.executable is not a PATH guess */
            snprintf(exe_buf, sizeof exe_buf, "%s/bin/python%d.%d", where, PY_MAJOR_VERSION, PY_MINOR_VERSION);
            if (access(exe_buf, X_OK) == 0) exe = exe_buf;
        } else {
            exe = where; /* an interpreter (venv bin/python): found prefix and pyvenv.cfg from it */
        }
    } else if (GBOOST_PYTHON_EXECUTABLE[0] && !getenv("PYTHONHOME") && access(GBOOST_PYTHON_EXECUTABLE, X_OK) == 0) {
        exe = GBOOST_PYTHON_EXECUTABLE;
    }
    if (PyStatus_Exception(st)) goto fail;
    if (exe) {
        st = PyConfig_SetBytesString(&c, &c.program_name, exe);
        if (PyStatus_Exception(st)) goto fail;
    }
    st = Py_InitializeFromConfig(&c); /* never Py_ExitStatusException: it would exit the host */
    if (PyStatus_Exception(st)) goto fail;
    PyConfig_Clear(&c);
    return GBOOST_OK;
fail:
    PyConfig_Clear(&c);
    init_error("cannot initialise Python: %s%s%s", st.func ? st.func : "", st.func ? ": " : "",
               st.err_msg ? st.err_msg : "unknown error");
    return GBOOST_ERR_PYTHON;
}

gboost_status gboost_init(const char* python_home_or_null) {
    gboost_status rc;
    pthread_mutex_lock(&g_lock);
    if (g_state == ST_DONE) {
        init_error("gboost_init after the final gboost_shutdown: the interpreter cannot be restarted");
        pthread_mutex_unlock(&g_lock);
        return GBOOST_ERR_STATE;
    }
    if (g_state == ST_READY) {
        g_refs++;
        pthread_mutex_unlock(&g_lock);
        return GBOOST_OK;
    }
    g_init_error[0] = '\0';
    if (!Py_IsInitialized()) {
        rc = start_python(python_home_or_null);
        if (rc != GBOOST_OK) {
            pthread_mutex_unlock(&g_lock);
            return rc;
        }
        g_started_python = 1;
        g_init_thread = pthread_self();
        rc = load_glue(1); /* this thread holds the GIL after initialisation */
        g_saved_tstate = PyEval_SaveThread();
    } else {
        /* the host's interpreter, or ours after a failed load_glue */
        PyGILState_STATE gs = PyGILState_Ensure();
        rc = load_glue(g_started_python);
        PyGILState_Release(gs);
    }
    if (rc == GBOOST_OK) {
        g_refs = 1;
        __atomic_store_n(&g_state, ST_READY, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* ------------------------------------------------------------------------------- engines */
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
static PyObject* engine_detach(gboost_engine* e) {
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
static void close_handle(PyObject* h) {
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

/* ------------------------------------------------------------------------------ shutdown */
void gboost_shutdown(void) {
    gboost_engine *list, *e;
    PyGILState_STATE gs;
    int finalize;

    pthread_mutex_lock(&g_lock);
    if (g_state != ST_READY || --g_refs > 0) {
        pthread_mutex_unlock(&g_lock);
        return;
    }
    __atomic_store_n(&g_state, ST_DONE, __ATOMIC_RELEASE); /* new calls fail from here on */
    list = g_engines;
    g_engines = NULL;
    for (e = list; e; e = e->next) e->listed = 0;
    finalize = g_started_python && pthread_equal(g_init_thread, pthread_self());
    pthread_mutex_unlock(&g_lock);

    gs = PyGILState_Ensure();
    for (e = list; e;) {
        gboost_engine* next = e->next;
        PyObject* h;
        e->prev = e->next = NULL;
        /* engine_detach may wait for in-flight calls: they need the GIL */
        Py_BEGIN_ALLOW_THREADS
        h = engine_detach(e);
        Py_END_ALLOW_THREADS
        if (h) close_handle(h);
        e = next;
    }
    Py_CLEAR(g_module);
    PyGILState_Release(gs);

    if (finalize) {
        PyEval_RestoreThread(g_saved_tstate);
        g_saved_tstate = NULL;
        Py_FinalizeEx();
    }
}
