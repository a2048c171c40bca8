/* SIGBUS guard for shared-memory mappings the server copies through.
 *
 * A file mapping whose file is truncated under it raises SIGBUS on the next access past the new
 * end (a same-uid client can truncate the L1 pool segment or its own KV segment at any time).
 * The handler looks the faulting address up among registered ranges; inside one, it maps
 * anonymous zero pages from the faulting page to the end of the range, counts the fault and
 * returns, so the interrupted copy finishes (on zeros) instead of killing the process. The
 * caller compares fault counters around each copy and fails the request; the owner then
 * recovers the mapping (remap) or drops it. Faults outside every range go to the previous
 * handler (or the default action, which ends the process as before).
 *
 * The handler only reads atomics and calls mmap(2) and sigaction(2) (both plain system calls
 * on Linux). Ranges are a fixed table: registering scans it under the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_RANGES 8192

typedef struct {
    _Atomic uintptr_t start;
    _Atomic uintptr_t end; /* 0: free slot */
    _Atomic unsigned long generation;
    _Atomic unsigned long faults;
    _Atomic uintptr_t lowest; /* lowest faulting page since it was last taken; UINTPTR_MAX: none */
} guarded_range;

static guarded_range ranges[MAX_RANGES];
static struct sigaction previous_action;
static int installed = 0;
static uintptr_t page_mask = 0;
static _Atomic unsigned long total_faults = 0;
static _Atomic unsigned long next_generation = 1;

static void forward(int sig, siginfo_t *info, void *context) {
    if (previous_action.sa_flags & SA_SIGINFO) {
        if (previous_action.sa_sigaction != NULL) {
            previous_action.sa_sigaction(sig, info, context);
            return;
        }
    } else if (previous_action.sa_handler != SIG_DFL && previous_action.sa_handler != SIG_IGN) {
        previous_action.sa_handler(sig);
        return;
    }
    /* Default action: restore it and return; the faulting instruction runs again and the
       kernel delivers SIGBUS with its default effect (the process ends, as without us). */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    uintptr_t addr = (uintptr_t)info->si_addr;
    for (int i = 0; i < MAX_RANGES; i++) {
        uintptr_t end = atomic_load_explicit(&ranges[i].end, memory_order_acquire);
        if (end == 0) {
            continue;
        }
        uintptr_t start = atomic_load_explicit(&ranges[i].start, memory_order_relaxed);
        if (addr < start || addr >= end) {
            continue;
        }
        uintptr_t page = addr & page_mask;
        void *patched = mmap((void *)page, end - page, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (patched == MAP_FAILED) {
            break;
        }
        uintptr_t seen = atomic_load(&ranges[i].lowest);
        while (page < seen && !atomic_compare_exchange_weak(&ranges[i].lowest, &seen, page)) {
        }
        atomic_fetch_add(&ranges[i].faults, 1);
        atomic_fetch_add(&total_faults, 1);
        return;
    }
    forward(sig, info, context);
}

static PyObject *guard_install(PyObject *self, PyObject *args) {
    if (installed) {
        Py_RETURN_NONE;
    }
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) {
        page = 4096;
    }
    page_mask = ~((uintptr_t)page - 1);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous_action) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    installed = 1;
    Py_RETURN_NONE;
}

static PyObject *guard_register(PyObject *self, PyObject *args) {
    unsigned long long start, length;
    if (!PyArg_ParseTuple(args, "KK", &start, &length)) {
        return NULL;
    }
    if (length == 0 || start + length < start) {
        PyErr_SetString(PyExc_ValueError, "bad range");
        return NULL;
    }
    uintptr_t end = (uintptr_t)(start + length);
    int free_slot = -1;
    for (int i = 0; i < MAX_RANGES; i++) {
        uintptr_t e = atomic_load(&ranges[i].end);
        if (e == 0) {
            if (free_slot < 0) {
                free_slot = i;
            }
            continue;
        }
        uintptr_t s = atomic_load(&ranges[i].start);
        /* An overlapping range is stale: the kernel handed these addresses out again, so its
           mapping is gone. */
        if (s < end && (uintptr_t)start < e) {
            atomic_store(&ranges[i].end, 0);
            if (free_slot < 0) {
                free_slot = i;
            }
        }
    }
    if (free_slot < 0) {
        PyErr_SetString(PyExc_RuntimeError, "too many guarded ranges");
        return NULL;
    }
    unsigned long generation = atomic_fetch_add(&next_generation, 1);
    atomic_store(&ranges[free_slot].faults, 0);
    atomic_store(&ranges[free_slot].lowest, UINTPTR_MAX);
    atomic_store(&ranges[free_slot].generation, generation);
    atomic_store(&ranges[free_slot].start, (uintptr_t)start);
    atomic_store_explicit(&ranges[free_slot].end, end, memory_order_release);
    return Py_BuildValue("(ik)", free_slot, generation);
}

/* The range named by (slot, generation): 1 when it is still that registration, 0 when the
   slot was reused or freed since (stale), -1 with an exception set for bad arguments. */
static int current_range(PyObject *args, int *slot) {
    unsigned long generation;
    if (!PyArg_ParseTuple(args, "ik", slot, &generation)) {
        return -1;
    }
    if (*slot < 0 || *slot >= MAX_RANGES) {
        PyErr_SetString(PyExc_ValueError, "bad slot");
        return -1;
    }
    return atomic_load(&ranges[*slot].generation) == generation;
}

static PyObject *guard_unregister(PyObject *self, PyObject *args) {
    int slot;
    int current = current_range(args, &slot);
    if (current < 0) {
        return NULL;
    }
    if (current) {
        atomic_store(&ranges[slot].end, 0);
    }
    Py_RETURN_NONE;
}

static PyObject *guard_faults(PyObject *self, PyObject *args) {
    int slot;
    int current = current_range(args, &slot);
    if (current <= 0) {
        return current < 0 ? NULL : PyLong_FromLong(-1);
    }
    return PyLong_FromUnsignedLong(atomic_load(&ranges[slot].faults));
}

static PyObject *guard_take_lowest(PyObject *self, PyObject *args) {
    int slot;
    int current = current_range(args, &slot);
    if (current <= 0) {
        return current < 0 ? NULL : PyLong_FromLong(-1);
    }
    uintptr_t lowest = atomic_exchange(&ranges[slot].lowest, UINTPTR_MAX);
    if (lowest == UINTPTR_MAX) {
        return PyLong_FromLong(-1);
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(lowest - atomic_load(&ranges[slot].start)));
}

static PyObject *guard_total_faults(PyObject *self, PyObject *args) {
    return PyLong_FromUnsignedLong(atomic_load(&total_faults));
}

static PyObject *guard_remap(PyObject *self, PyObject *args) {
    unsigned long long address, length, offset;
    int fd;
    if (!PyArg_ParseTuple(args, "KKiK", &address, &length, &fd, &offset)) {
        return NULL;
    }
    void *mapped = mmap((void *)(uintptr_t)address, (size_t)length, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_FIXED, fd, (off_t)offset);
    if (mapped == MAP_FAILED) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"install", guard_install, METH_NOARGS, "Install the SIGBUS handler (idempotent)."},
    {"register", guard_register, METH_VARARGS, "register(start, length) -> (slot, generation)."},
    {"unregister", guard_unregister, METH_VARARGS, "unregister(slot, generation)."},
    {"faults", guard_faults, METH_VARARGS, "faults(slot, generation) -> faults so far, -1 if stale."},
    {"take_lowest", guard_take_lowest, METH_VARARGS,
     "take_lowest(slot, generation) -> offset of the lowest patched page since the last call, or -1."},
    {"total_faults", guard_total_faults, METH_NOARGS, "Faults caught in every range so far."},
    {"remap", guard_remap, METH_VARARGS, "remap(address, length, fd, offset): map the file there again."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_faultguard", "SIGBUS guard for shared-memory mappings.", -1, methods,
};

PyMODINIT_FUNC PyInit__faultguard(void) { return PyModule_Create(&module); }
