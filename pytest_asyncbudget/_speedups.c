/*
 * Optional compiled twins of the plugin's two hottest wrappers.
 *
 * SelectTimer wraps a stock asyncio loop's ``selector.select`` for the lag probe
 * (pytest_asyncbudget/probes/lag.py, ``_SelectorTicks``): it runs once per loop
 * iteration of every budgeted test. SocketGuard wraps ``socket.socket.recv``/``send``/...
 * for no_blocking (pytest_asyncbudget/patches.py, ``_socket_positional_wrapper``): it
 * runs at every read and write of asyncio's transports. The Python wrappers cost about
 * 0.20 and 0.13 us per call; these do the same work without a Python frame.
 *
 * This file is built only where a C compiler is at hand (setup.py marks it optional).
 * Each object is the twin of a Python wrapper that stays the reference and the fallback
 * (ASYNCBUDGET_PURE_PYTHON=1 always uses the Python ones); tests/test_speedups.py checks
 * that the two behave the same, call for call.
 *
 * SelectTimer(original, ready_queue, on_blocked, floor)
 *     __call__(timeout=None)   the wrapper: time the stretch that ends now, call
 *                              original(timeout), start the next stretch
 *     state() -> (left | None, iterations, ready)
 *     stop()                   from now on a pass-through
 *     clock() (module level)   the clock this module reads, for lag.py's check
 *
 * SocketGuard(original, gettimeout, slow)   see below (patches.py's socket wrapper)
 *
 * unshare_files() (module level)   unshare(CLONE_FILES) for the calling thread, on Linux:
 *                                  os.unshare() for Pythons before 3.12 (sampler.py)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <time.h>
#ifdef __linux__
#include <sched.h>  /* unshare, CLONE_FILES (pyconfig.h has defined _GNU_SOURCE) */
#endif

/* time.perf_counter()'s clock: CLOCK_MONOTONIC on Linux, mach_absolute_time() (which
 * CLOCK_UPTIME_RAW reads) on macOS. lag.py checks the two agree before using this. */
#ifdef __APPLE__
#define TIMER_CLOCK CLOCK_UPTIME_RAW
#else
#define TIMER_CLOCK CLOCK_MONOTONIC
#endif

static double
now_seconds(void)
{
    struct timespec ts;
    clock_gettime(TIMER_CLOCK, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *original;    /* the selector's own bound select() */
    PyObject *ready_queue; /* loop._ready */
    PyObject *on_blocked;  /* on_blocked(duration, start, ready) */
    double floor;
    double left;       /* when the current stretch began, valid if busy */
    int busy;          /* 0: waiting in select, or stopped */
    int stopped;
    Py_ssize_t iterations;
    Py_ssize_t ready;  /* callbacks queued when the current stretch began */
} SelectTimer;

/* timeout == 0, as Python's ``timeout == 0`` answers it. -1 on error. */
static int
is_poll(PyObject *timeout)
{
    if (timeout == Py_None) {
        return 0;
    }
    if (PyFloat_CheckExact(timeout)) {
        return PyFloat_AS_DOUBLE(timeout) == 0.0;
    }
    if (PyLong_CheckExact(timeout)) {
        int overflow = 0;
        long v = PyLong_AsLongAndOverflow(timeout, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        return overflow == 0 && v == 0;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        return -1;
    }
    int r = PyObject_RichCompareBool(timeout, zero, Py_EQ);
    Py_DECREF(zero);
    return r;
}

static PyObject *
SelectTimer_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    SelectTimer *self = (SelectTimer *)callable;
    double now = now_seconds();
    if (!self->busy) {
        /* stopped (a wrapper someone put over ours still calls it) */
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *timeout = Py_None;
    if (nargs >= 1) {
        timeout = args[0];
    }
    else if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 1) {
        timeout = args[0]; /* select(timeout=...): the only keyword select() takes */
    }
    double since = self->left;
    self->iterations++;
    if (now - since >= self->floor) {
        PyObject *r = PyObject_CallFunction(self->on_blocked, "ddn", now - since, since, self->ready);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    int poll = is_poll(timeout);
    if (poll < 0) {
        return NULL;
    }
    if (poll) {
        /* A poll: the next stretch starts now. */
        Py_ssize_t n = PyObject_Size(self->ready_queue);
        if (n < 0) {
            return NULL;
        }
        self->ready = n;
        self->left = now;
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    }
    /* A wait: the stretch after it starts with no queued callbacks. */
    self->ready = 0;
    self->busy = 0;
    PyObject *result = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    if (!self->stopped) {
        self->left = now_seconds();
        self->busy = 1;
    }
    return result;
}

static PyObject *
SelectTimer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *original, *ready_queue, *on_blocked;
    double floor;
    static char *kwlist[] = {"original", "ready_queue", "on_blocked", "floor", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOd:SelectTimer", kwlist,
                                     &original, &ready_queue, &on_blocked, &floor)) {
        return NULL;
    }
    SelectTimer *self = (SelectTimer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = SelectTimer_vectorcall;
    Py_INCREF(original);
    self->original = original;
    Py_INCREF(ready_queue);
    self->ready_queue = ready_queue;
    Py_INCREF(on_blocked);
    self->on_blocked = on_blocked;
    self->floor = floor;
    self->iterations = 0;
    Py_ssize_t n = PyObject_Size(ready_queue);
    if (n < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->ready = n;
    self->left = now_seconds();
    self->busy = 1;
    self->stopped = 0;
    return (PyObject *)self;
}

static int
SelectTimer_traverse(SelectTimer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->ready_queue);
    Py_VISIT(self->on_blocked);
    return 0;
}

static int
SelectTimer_clear(SelectTimer *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->ready_queue);
    Py_CLEAR(self->on_blocked);
    return 0;
}

static void
SelectTimer_dealloc(SelectTimer *self)
{
    PyObject_GC_UnTrack(self);
    SelectTimer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
SelectTimer_state(SelectTimer *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        return Py_BuildValue("(dnn)", self->left, self->iterations, self->ready);
    }
    return Py_BuildValue("(Onn)", Py_None, self->iterations, self->ready);
}

static PyObject *
SelectTimer_stop(SelectTimer *self, PyObject *Py_UNUSED(ignored))
{
    self->stopped = 1;
    self->busy = 0;
    Py_RETURN_NONE;
}

static PyMethodDef SelectTimer_methods[] = {
    {"state", (PyCFunction)SelectTimer_state, METH_NOARGS,
     "(when the current stretch began or None, iterations, callbacks ready when it began)"},
    {"stop", (PyCFunction)SelectTimer_stop, METH_NOARGS, "Turn into a pass-through for good."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SelectTimerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pytest_asyncbudget._speedups.SelectTimer",
    .tp_basicsize = sizeof(SelectTimer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A selector.select wrapper that times the loop's busy stretches.",
    .tp_new = SelectTimer_new,
    .tp_dealloc = (destructor)SelectTimer_dealloc,
    .tp_traverse = (traverseproc)SelectTimer_traverse,
    .tp_clear = (inquiry)SelectTimer_clear,
    .tp_vectorcall_offset = offsetof(SelectTimer, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_methods = SelectTimer_methods,
};

/* ------------------------------------------------------------------------------------
 * SocketGuard(original, gettimeout, slow): the no_blocking wrapper for socket methods
 * that take positional arguments only (recv, send, ...; patches.py,
 * _socket_positional_wrapper, is its Python twin and the reference).
 *
 * A call on a socket whose timeout is 0.0 (non-blocking: every socket of asyncio's
 * transports) goes straight to the original; so does a call gettimeout() cannot answer
 * (not a socket: the original raises its own error) and one with keyword arguments or
 * more than four arguments (the original refuses them). Anything else goes to
 * slow(*args), which decides in Python. It binds like a function (a method descriptor),
 * so ``sock.recv(n)`` calls it with the socket first and no bound method is made.
 */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *original;
    PyObject *gettimeout;
    PyObject *slow;
    PyObject *dict;
} SocketGuard;

static PyObject *
SocketGuard_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    SocketGuard *self = (SocketGuard *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || nargs > 5 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        /* the socket and up to four arguments, by position only: anything else is an
         * argument error the original raises itself */
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    }
    PyObject *timeout = PyObject_Vectorcall(self->gettimeout, args, 1, NULL);
    if (timeout == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    }
    int through = PyFloat_CheckExact(timeout) && PyFloat_AS_DOUBLE(timeout) == 0.0;
    Py_DECREF(timeout);
    if (through) {
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    }
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

static PyObject *
SocketGuard_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *original, *gettimeout, *slow;
    static char *kwlist[] = {"original", "gettimeout", "slow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:SocketGuard", kwlist, &original, &gettimeout, &slow)) {
        return NULL;
    }
    SocketGuard *self = (SocketGuard *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = SocketGuard_vectorcall;
    Py_INCREF(original);
    self->original = original;
    Py_INCREF(gettimeout);
    self->gettimeout = gettimeout;
    Py_INCREF(slow);
    self->slow = slow;
    self->dict = NULL;
    return (PyObject *)self;
}

static int
SocketGuard_traverse(SocketGuard *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->gettimeout);
    Py_VISIT(self->slow);
    Py_VISIT(self->dict);
    return 0;
}

static int
SocketGuard_clear(SocketGuard *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->gettimeout);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->dict);
    return 0;
}

static void
SocketGuard_dealloc(SocketGuard *self)
{
    PyObject_GC_UnTrack(self);
    SocketGuard_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
SocketGuard_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyObject *
SocketGuard_repr(SocketGuard *self)
{
    return PyUnicode_FromFormat("<pytest-asyncbudget no_blocking guard around %R>", self->original);
}

static PyGetSetDef SocketGuard_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SocketGuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pytest_asyncbudget._speedups.SocketGuard",
    .tp_basicsize = sizeof(SocketGuard),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A socket method wrapper that lets non-blocking sockets straight through.",
    .tp_new = SocketGuard_new,
    .tp_dealloc = (destructor)SocketGuard_dealloc,
    .tp_traverse = (traverseproc)SocketGuard_traverse,
    .tp_clear = (inquiry)SocketGuard_clear,
    .tp_vectorcall_offset = offsetof(SocketGuard, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = SocketGuard_descr_get,
    .tp_repr = (reprfunc)SocketGuard_repr,
    .tp_dictoffset = offsetof(SocketGuard, dict),
    .tp_getset = SocketGuard_getset,
};

static PyObject *
speedups_clock(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return PyFloat_FromDouble(now_seconds());
}

static PyObject *
speedups_unshare_files(PyObject *module, PyObject *Py_UNUSED(ignored))
{
#if defined(__linux__) && defined(CLONE_FILES)
    if (unshare(CLONE_FILES) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
#else
    errno = ENOSYS;
    return PyErr_SetFromErrno(PyExc_OSError);
#endif
}

static PyMethodDef speedups_methods[] = {
    {"clock", speedups_clock, METH_NOARGS, "The clock SelectTimer reads, in seconds."},
    {"unshare_files", speedups_unshare_files, METH_NOARGS,
     "Give the calling thread a file-descriptor table of its own (unshare(CLONE_FILES))."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pytest_asyncbudget._speedups",
    .m_doc = "Optional compiled parts of pytest-asyncbudget's hot paths.",
    .m_size = -1,
    .m_methods = speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&SelectTimerType) < 0 || PyType_Ready(&SocketGuardType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "SelectTimer", (PyObject *)&SelectTimerType) < 0
        || PyModule_AddObjectRef(m, "SocketGuard", (PyObject *)&SocketGuardType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
