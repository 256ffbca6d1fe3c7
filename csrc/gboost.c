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
 * This file: the interpreter's life (globals, version, init, shutdown); engine handles are in
 * gboost_engine.c, strings and error messages in gboost_strings.c (gboost_internal.h).
 */
#include "gboost_internal.h" /* first: Python.h precedes the system headers */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gboost_capi.inc" /* static const char gboost_capi_source[] (generated) */

#ifndef GBOOST_PYTHON_EXECUTABLE
#define GBOOST_PYTHON_EXECUTABLE "" /* the build's python, used as program name when present */
#endif

#define GB_STR2(x) #x
#define GB_STR(x) GB_STR2(x)
static const char k_version[] =
    GB_STR(GBOOST_VERSION_MAJOR) "." GB_STR(GBOOST_VERSION_MINOR) "." GB_STR(GBOOST_VERSION_PATCH);

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
int g_state = ST_NONE;
PyObject* g_module = NULL;
gboost_engine* g_engines = NULL;
static int g_refs = 0;
static int g_started_python = 0;
static pthread_t g_init_thread;
static PyThreadState* g_saved_tstate = NULL;
static char g_init_error[2048];

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

