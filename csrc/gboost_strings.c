/* malloc'ed strings for the C side, and Python errors turned into such messages. */
#include "gboost_internal.h" /* first: Python.h precedes the system headers */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char* dup_bytes(const char* s, size_t n) {
    char* out = (char*)malloc(n + 1);
    if (out) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
}

char* dup_cstr(const char* s) { return dup_bytes(s, strlen(s)); }

char* dup_fmt(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return dup_cstr(buf);
}

void set_error(char** error_out, char* msg) {
    if (error_out)
        *error_out = msg;
    else
        free(msg);
}

/* GIL held. A copy of a Python str as UTF-8; NULL (Python error set) if it is not one. */
char* py_str_dup(PyObject* s) {
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
char* fetch_py_error(void) {
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

