/*
 * Optional compiled twins of the plugin's hottest wrappers.
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
 * CallGuard(original, kind, data, slow)      see below (patches.py's wrappers on the
 *                                            to_thread path)
 *
 * unshare_files() (module level)   unshare(CLONE_FILES) for the calling thread, on Linux:
 *                                  os.unshare() for Pythons before 3.12 (sampler.py)
 *
 * swap_in(rows, applied, missing), swap_out(applied, missing) (module level)
 *                                  no_blocking's per-test patching loops (patches.py,
 *                                  _apply_rows/_restore_rows), see below
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
/* The layout both guards (SocketGuard, CallGuard below) share, with the functions that
 * only read it: traverse, clear, dealloc, repr, binding and __dict__. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *original;
    PyObject *data;  /* SocketGuard: the socket type's gettimeout; CallGuard: per kind */
    PyObject *slow;
    PyObject *dict;
    int kind;        /* CallGuard only */
} Guard;

typedef Guard SocketGuard;

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
    PyObject *timeout = PyObject_Vectorcall(self->data, args, 1, NULL);
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
    self->data = gettimeout;
    Py_INCREF(slow);
    self->slow = slow;
    self->dict = NULL;
    return (PyObject *)self;
}

static int
Guard_traverse(Guard *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->data);
    Py_VISIT(self->slow);
    Py_VISIT(self->dict);
    return 0;
}

static int
Guard_clear(Guard *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->data);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->dict);
    return 0;
}

static void
Guard_dealloc(Guard *self)
{
    PyObject_GC_UnTrack(self);
    Guard_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Guard_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyObject *
Guard_repr(Guard *self)
{
    return PyUnicode_FromFormat("<pytest-asyncbudget no_blocking guard around %R>", self->original);
}

static PyGetSetDef Guard_getset[] = {
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
    .tp_dealloc = (destructor)Guard_dealloc,
    .tp_traverse = (traverseproc)Guard_traverse,
    .tp_clear = (inquiry)Guard_clear,
    .tp_vectorcall_offset = offsetof(SocketGuard, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = Guard_descr_get,
    .tp_repr = (reprfunc)Guard_repr,
    .tp_dictoffset = offsetof(SocketGuard, dict),
    .tp_getset = Guard_getset,
};

/* ------------------------------------------------------------------------------------
 * CallGuard(original, kind, data, slow): no_blocking's wrappers on the to_thread path.
 *
 * Every asyncio.to_thread()/run_in_executor() call goes through three of them on the
 * loop thread: the executor's submit does Semaphore.acquire(timeout=0), every executor
 * Future makes a Condition and so an RLock, and asyncio reads the finished future's
 * exception() and result(). Each has an answer that needs no look at the probe, and
 * this type gives that answer without a Python frame. Any other call goes to slow, the
 * Python wrapper (patches.py), which stays the reference and decides everything else.
 *
 * kind 1, GUARD_DONE:        original when args[0]._state is in data (a set), else slow;
 *                            for concurrent.futures.Future.result/exception.
 * kind 2, GUARD_NO_WAIT:     original when the call cannot wait: acquire(blocking=False)
 *                            or a timeout that is an int or float <= 0, else slow; for
 *                            threading.Semaphore.acquire(self, blocking=True, timeout=None).
 * kind 3, GUARD_STDLIB_CALLER: result = original(...); returned as it is when data (a
 *                            dict: file name -> is it the user's) says False for the
 *                            calling frame's file, else slow(result); for the Lock/RLock
 *                            factories (only locks the user's code makes are watched).
 *
 * It binds like a function, as the Python wrappers do.
 * ------------------------------------------------------------------------------------ */
enum { GUARD_DONE = 1, GUARD_NO_WAIT = 2, GUARD_STDLIB_CALLER = 3 };

typedef Guard CallGuard;

static PyObject *str_state, *str_blocking, *str_timeout;

/* 1: the call cannot wait; 0: it may (or the arguments are unusual: ask slow). */
static int
guard_no_wait(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *blocking = nargs > 1 ? args[1] : NULL;
    PyObject *timeout = nargs > 2 ? args[2] : NULL;
    if (nargs < 1 || nargs > 3) {
        return 0;
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject *value = args[nargs + i];
            if (name == str_blocking && blocking == NULL) {
                blocking = value;
            }
            else if (name == str_timeout && timeout == NULL) {
                timeout = value;
            }
            else {
                return 0;  /* a name compared by value, a repeat, a stray: slow decides */
            }
        }
    }
    if (blocking != NULL) {
        int truth = PyObject_IsTrue(blocking);
        if (truth < 0) {
            PyErr_Clear();
            return 0;
        }
        if (!truth) {
            return 1;
        }
    }
    if (timeout != NULL) {
        if (PyFloat_CheckExact(timeout)) {
            return PyFloat_AS_DOUBLE(timeout) <= 0.0;
        }
        if (PyLong_CheckExact(timeout)) {
            int overflow;
            long value = PyLong_AsLongAndOverflow(timeout, &overflow);
            if (value == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            return overflow < 0 || (overflow == 0 && value <= 0);
        }
    }
    return 0;
}

static PyObject *
CallGuard_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CallGuard *self = (CallGuard *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    switch (self->kind) {
    case GUARD_DONE:
        if (nargs >= 1 && nargs <= 2 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) {
            PyObject *state = PyObject_GetAttr(args[0], str_state);
            if (state == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                    return NULL;
                }
                PyErr_Clear();
                break;
            }
            int done = PySet_Contains(self->data, state);
            Py_DECREF(state);
            if (done < 0) {
                PyErr_Clear();  /* an unhashable state: slow decides */
                break;
            }
            if (done) {
                return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
            }
        }
        break;
    case GUARD_NO_WAIT:
        if (guard_no_wait(args, nargs, kwnames)) {
            return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
        }
        break;
    case GUARD_STDLIB_CALLER: {
        PyObject *result = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
        if (result == NULL) {
            return NULL;
        }
        PyFrameObject *frame = PyEval_GetFrame();  /* borrowed: the caller's frame */
        if (frame != NULL) {
            PyCodeObject *code = PyFrame_GetCode(frame);
            PyObject *user = PyDict_GetItemWithError(self->data, code->co_filename);  /* borrowed */
            Py_DECREF(code);
            if (user == Py_False) {
                return result;
            }
            if (user == NULL && PyErr_Occurred()) {
                PyErr_Clear();
            }
        }
        PyObject *out = PyObject_CallOneArg(self->slow, result);
        Py_DECREF(result);
        return out;
    }
    }
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

static PyObject *
CallGuard_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *original, *data, *slow;
    int kind;
    static char *kwlist[] = {"original", "kind", "data", "slow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiOO:CallGuard", kwlist, &original, &kind, &data, &slow)) {
        return NULL;
    }
    if (kind == GUARD_DONE && !PyAnySet_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "CallGuard kind 1 needs a set or frozenset");
        return NULL;
    }
    if (kind == GUARD_STDLIB_CALLER && !PyDict_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "CallGuard kind 3 needs a dict");
        return NULL;
    }
    if (kind < GUARD_DONE || kind > GUARD_STDLIB_CALLER) {
        PyErr_Format(PyExc_ValueError, "unknown CallGuard kind %d", kind);
        return NULL;
    }
    CallGuard *self = (CallGuard *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = CallGuard_vectorcall;
    self->kind = kind;
    Py_INCREF(original);
    self->original = original;
    Py_INCREF(data);
    self->data = data;
    Py_INCREF(slow);
    self->slow = slow;
    self->dict = NULL;
    return (PyObject *)self;
}

static PyTypeObject CallGuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pytest_asyncbudget._speedups.CallGuard",
    .tp_basicsize = sizeof(CallGuard),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A no_blocking wrapper that answers the calls that cannot wait without Python.",
    .tp_new = CallGuard_new,
    .tp_dealloc = (destructor)Guard_dealloc,
    .tp_traverse = (traverseproc)Guard_traverse,
    .tp_clear = (inquiry)Guard_clear,
    .tp_vectorcall_offset = offsetof(CallGuard, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = Guard_descr_get,
    .tp_repr = (reprfunc)Guard_repr,
    .tp_dictoffset = offsetof(CallGuard, dict),
    .tp_getset = Guard_getset,
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

/*
 * swap_in(rows, applied, missing) and swap_out(applied, missing): the two loops of
 * no_blocking's per-test patching (patches.py, _apply_rows/_restore_rows are the Python
 * twins). A row is (namespace, attr, expected, wrapper, class or None, original, had_own,
 * target):
 *
 * swap_in   for each row whose attribute is still `expected` (`missing`: not set on the
 *           class itself), put `wrapper` there (setattr on a class, so that its caches
 *           stay right) and append the row to `applied`; a row whose attribute is
 *           `wrapper` already is appended as it is; any other value belongs to someone
 *           else and is left alone. The first error stops it (the caller undoes).
 * swap_out  empty `applied` from its end: put back `original` (or delete the class's
 *           own attribute when it had none) wherever the wrapper is still in place;
 *           restore every row, then raise the first error, if any.
 *
 * They run at every test just after the test's own code has pushed everything out of
 * the CPU caches: what costs is touching memory, and these touch less of it than the
 * Python loops (about a third less time per test, benchmarks/README.md, session 9).
 */

/* ns[attr], or `missing` when it is not there: a borrowed reference (only compared by
 * identity), or NULL with an exception set. A class is read through its own dict. */
static PyObject *
swap_lookup(PyObject *ns, PyObject *cls, PyObject *attr, PyObject *missing)
{
    PyObject *dict = ns;
    if (cls != Py_None && PyType_Check(cls)) {
        PyObject *own = ((PyTypeObject *)cls)->tp_dict;
        if (own != NULL && PyDict_CheckExact(own)) {
            dict = own;
        }
    }
    if (PyDict_Check(dict)) {
        PyObject *value = PyDict_GetItemWithError(dict, attr);
        if (value == NULL && !PyErr_Occurred()) {
            return missing;
        }
        return value;
    }
    PyObject *value = PyObject_GetItem(dict, attr); /* a mapping we cannot see through */
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear();
            return missing;
        }
        return NULL;
    }
    Py_DECREF(value); /* still held by the mapping; compared by identity only */
    return value;
}

static int
swap_row(PyObject *row)
{
    if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) != 8) {
        PyErr_SetString(PyExc_TypeError, "a patch row is a tuple of 8");
        return -1;
    }
    return 0;
}

static int
swap_set(PyObject *ns, PyObject *cls, PyObject *attr, PyObject *value)
{
    if (cls != Py_None) {
        return value == NULL ? PyObject_DelAttr(cls, attr) : PyObject_SetAttr(cls, attr, value);
    }
    if (PyDict_CheckExact(ns)) {
        return PyDict_SetItem(ns, attr, value);
    }
    return PyObject_SetItem(ns, attr, value);
}

static PyObject *
speedups_swap_in(PyObject *module, PyObject *args)
{
    PyObject *rows, *applied, *missing;
    if (!PyArg_ParseTuple(args, "O!O!O:swap_in", &PyList_Type, &rows, &PyList_Type, &applied, &missing)) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rows); i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (swap_row(row) < 0) {
            return NULL;
        }
        Py_INCREF(row); /* a setattr may run Python code */
        PyObject *ns = PyTuple_GET_ITEM(row, 0), *attr = PyTuple_GET_ITEM(row, 1);
        PyObject *expected = PyTuple_GET_ITEM(row, 2), *wrapper = PyTuple_GET_ITEM(row, 3);
        PyObject *cls = PyTuple_GET_ITEM(row, 4);
        PyObject *current = swap_lookup(ns, cls, attr, missing);
        int failed = current == NULL;
        if (!failed && current == expected) {
            failed = swap_set(ns, cls, attr, wrapper) < 0 || PyList_Append(applied, row) < 0;
        }
        else if (!failed && current == wrapper) { /* left in place earlier: ours to undo */
            failed = PyList_Append(applied, row) < 0;
        }
        Py_DECREF(row);
        if (failed) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
speedups_swap_out(PyObject *module, PyObject *args)
{
    PyObject *applied, *missing;
    if (!PyArg_ParseTuple(args, "O!O:swap_out", &PyList_Type, &applied, &missing)) {
        return NULL;
    }
    PyObject *rows = PyList_GetSlice(applied, 0, PyList_GET_SIZE(applied));
    if (rows == NULL || PyList_SetSlice(applied, 0, PyList_GET_SIZE(applied), NULL) < 0) {
        Py_XDECREF(rows);
        return NULL;
    }
    PyObject *type = NULL, *value = NULL, *tb = NULL; /* the first error */
    for (Py_ssize_t i = PyList_GET_SIZE(rows) - 1; i >= 0; i--) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (swap_row(row) < 0) {
            goto error;
        }
        PyObject *ns = PyTuple_GET_ITEM(row, 0), *attr = PyTuple_GET_ITEM(row, 1);
        PyObject *wrapper = PyTuple_GET_ITEM(row, 3), *cls = PyTuple_GET_ITEM(row, 4);
        PyObject *original = PyTuple_GET_ITEM(row, 5);
        PyObject *current = swap_lookup(ns, cls, attr, missing);
        if (current == NULL) {
            goto error;
        }
        if (current != wrapper) {
            continue; /* replaced by someone else after we patched: theirs now */
        }
        int had_own = cls == Py_None || PyObject_IsTrue(PyTuple_GET_ITEM(row, 6));
        if (had_own < 0 || swap_set(ns, cls, attr, had_own ? original : NULL) < 0) {
            goto error;
        }
        continue;
    error:
        if (type == NULL) {
            PyErr_Fetch(&type, &value, &tb);
        }
        else {
            PyErr_Clear();
        }
    }
    Py_DECREF(rows);
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef speedups_methods[] = {
    {"clock", speedups_clock, METH_NOARGS, "The clock SelectTimer reads, in seconds."},
    {"unshare_files", speedups_unshare_files, METH_NOARGS,
     "Give the calling thread a file-descriptor table of its own (unshare(CLONE_FILES))."},
    {"swap_in", speedups_swap_in, METH_VARARGS, "Put no_blocking's wrappers in place (patches._apply_rows)."},
    {"swap_out", speedups_swap_out, METH_VARARGS, "Put the originals back (patches._restore_rows)."},
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
    if (PyType_Ready(&SelectTimerType) < 0 || PyType_Ready(&SocketGuardType) < 0
        || PyType_Ready(&CallGuardType) < 0) {
        return NULL;
    }
    str_state = PyUnicode_InternFromString("_state");
    str_blocking = PyUnicode_InternFromString("blocking");
    str_timeout = PyUnicode_InternFromString("timeout");
    if (str_state == NULL || str_blocking == NULL || str_timeout == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "SelectTimer", (PyObject *)&SelectTimerType) < 0
        || PyModule_AddObjectRef(m, "SocketGuard", (PyObject *)&SocketGuardType) < 0
        || PyModule_AddObjectRef(m, "CallGuard", (PyObject *)&CallGuardType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
