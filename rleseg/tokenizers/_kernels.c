/* Compiled kernels of the flat-start run tokenizers (binary, mc, lac): one pass over the pixels each way.
 *
 * The numpy paths in runs.py/image.py are complete and exact; these kernels do the same work without
 * numpy's fixed cost per call (1-3 us, about ten calls per mask each way), which dominates small masks.
 * They only ever answer for input they fully vouch for: anything else (a label out of range, a dtype
 * they do not read, malformed tokens) returns None / False and the caller takes the numpy path, which
 * also writes the error message. Built as an optional extension: without a compiler rleseg still works.
 *
 * encode(mask, kind, num_classes, max_run, off_start, off_length, off_class) -> bytearray | None
 *     mask: any 1-D or 2-D integer/bool array (strided views welcome: subsampling and column order are
 *     views), read in logical C order. kind 0 = binary, 1 = mc, 2 = lac. Returns the int64 tokens as a
 *     bytearray (np.frombuffer makes it a writable array without a copy), or None if a label is negative
 *     or >= num_classes, or the dtype is not an integer one.
 *
 * decode(tokens, out, kind, max_run, col_height, lo0, n0, v0, lo1, n1, v1, lo2, n2, v2) -> bool
 *     tokens: contiguous int64 content tokens; out: a writable contiguous uint8 buffer of the mask (row
 *     major). Field f of a run holds token lo_f + i (0 <= i < n_f) for value v_f + i. With col_height > 0
 *     the flat positions are column-major over a mask of that height. True when the tokens form sorted,
 *     disjoint, in-range runs (then `out` holds the mask); False otherwise (the contents of `out` are
 *     then unspecified).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { BINARY = 0, MC = 1, LAC = 2 };

/* read element i (in bytes offset) of a buffer of the given format as int64; 0 on success */
static int item_reader(const char *fmt, Py_ssize_t itemsize, int *is_signed) {
    char c = fmt ? fmt[0] : 'B';
    if (c == '@' || c == '=' || c == '<' || c == '>' || c == '!') c = fmt[1];
    switch (c) {
    case '?': case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N':
        *is_signed = 0;
        break;
    case 'b': case 'h': case 'i': case 'l': case 'q': case 'n':
        *is_signed = 1;
        break;
    default:
        return -1;
    }
    if (fmt && fmt[0] == '>') return -1; /* big-endian: leave it to numpy */
    return (itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8) ? 0 : -1;
}

static inline int64_t read_item(const char *p, Py_ssize_t itemsize, int is_signed) {
    switch (itemsize) {
    case 1: return is_signed ? (int64_t)*(const int8_t *)p : (int64_t)*(const uint8_t *)p;
    case 2: return is_signed ? (int64_t)*(const int16_t *)p : (int64_t)*(const uint16_t *)p;
    case 4: return is_signed ? (int64_t)*(const int32_t *)p : (int64_t)*(const uint32_t *)p;
    default: {
        int64_t v = *(const int64_t *)p;
        /* an unsigned 64-bit label above INT64_MAX reads as negative and is rejected as out of range */
        return v;
    }
    }
}

typedef struct {
    int64_t *data;
    Py_ssize_t size, cap;
} TokenBuf;

static int push(TokenBuf *b, int64_t v) {
    if (b->size == b->cap) {
        Py_ssize_t cap = b->cap ? 2 * b->cap : 256;
        int64_t *d = PyMem_Realloc(b->data, (size_t)cap * sizeof(int64_t));
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    b->data[b->size++] = v;
    return 0;
}

/* emit one run (split into pieces of at most max_run) */
static int emit(TokenBuf *b, int kind, int64_t start, int64_t length, int64_t cls, int64_t max_run,
                const int64_t off[3]) {
    while (length > 0) {
        int64_t piece = length < max_run ? length : max_run;
        if (push(b, start + off[0])) return -1;
        if (kind == LAC) {
            if (push(b, max_run * (cls - 1) + piece + off[1])) return -1;
        } else {
            if (push(b, piece + off[1])) return -1;
            if (kind == MC && push(b, cls + off[2])) return -1;
        }
        start += piece;
        length -= piece;
    }
    return 0;
}

static PyObject *encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "encode takes 7 arguments");
        return NULL;
    }
    long kind = PyLong_AsLong(args[1]);
    long long num_classes = PyLong_AsLongLong(args[2]);
    long long max_run = PyLong_AsLongLong(args[3]);
    int64_t off[3];
    for (int j = 0; j < 3; j++) off[j] = PyLong_AsLongLong(args[4 + j]);
    if (PyErr_Occurred()) return NULL;
    if (kind < BINARY || kind > LAC || max_run < 1) {
        PyErr_SetString(PyExc_ValueError, "encode: bad kind or max_run");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int is_signed = 0;
    if (view.ndim < 1 || view.ndim > 2 || item_reader(view.format, view.itemsize, &is_signed) < 0) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    Py_ssize_t rows = view.ndim == 2 ? view.shape[0] : 1;
    Py_ssize_t cols = view.ndim == 2 ? view.shape[1] : view.shape[0];
    Py_ssize_t s0 = view.ndim == 2 ? view.strides[0] : 0;
    Py_ssize_t s1 = view.ndim == 2 ? view.strides[1] : view.strides[0];
    Py_ssize_t isz = view.itemsize;
    const char *base = (const char *)view.buf;

    TokenBuf b = {NULL, 0, 0};
    int64_t cur = 0, run_start = 0, pos = 0;
    int bad = 0, oom = 0;
    /* contiguous bytes (uint8/bool/int8 rows): skip 8 pixels at a time while they all equal the current
     * label, which is already known to be valid; binary masks of 0/1 bytes qualify for both labels */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    int words = isz == 1 && s1 == 1 && (kind != BINARY || num_classes == 2);
#else
    int words = 0;
#endif
    for (Py_ssize_t r = 0; r < rows && !bad && !oom; r++) {
        const char *p = base + r * s0;
        for (Py_ssize_t c = 0; c < cols; c++, p += s1, pos++) {
            if (words) {
                uint64_t same = (uint64_t)(uint8_t)cur * 0x0101010101010101ULL, w, x;
                while (c + 8 <= cols) {
                    memcpy(&w, p, 8);
                    x = w ^ same;
                    if (x) { /* jump to the first byte that differs (little-endian: the lowest set bit) */
                        int skip = __builtin_ctzll(x) >> 3;
                        c += skip;
                        p += skip;
                        pos += skip;
                        break;
                    }
                    c += 8;
                    p += 8;
                    pos += 8;
                }
                if (c == cols) break;
            }
            int64_t v = read_item(p, isz, is_signed);
            if (v < 0 || v >= num_classes) {
                bad = 1;
                break;
            }
            if (kind == BINARY && v) v = 1;
            if (v != cur) {
                if (cur && emit(&b, (int)kind, run_start, pos - run_start, cur, max_run, off)) {
                    oom = 1;
                    break;
                }
                cur = v;
                run_start = pos;
            }
        }
    }
    if (!bad && !oom && cur && emit(&b, (int)kind, run_start, pos - run_start, cur, max_run, off)) oom = 1;
    PyBuffer_Release(&view);
    if (oom) {
        PyMem_Free(b.data);
        return PyErr_NoMemory();
    }
    if (bad) {
        PyMem_Free(b.data);
        Py_RETURN_NONE;
    }
    PyObject *out = PyByteArray_FromStringAndSize((const char *)b.data, b.size * (Py_ssize_t)sizeof(int64_t));
    PyMem_Free(b.data);
    return out;
}

static PyObject *decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "decode takes 14 arguments");
        return NULL;
    }
    long kind = PyLong_AsLong(args[2]);
    long long max_run = PyLong_AsLongLong(args[3]);
    long long height = PyLong_AsLongLong(args[4]);
    int64_t lo[3], n[3], v0[3];
    for (int j = 0; j < 3; j++) {
        lo[j] = PyLong_AsLongLong(args[5 + 3 * j]);
        n[j] = PyLong_AsLongLong(args[6 + 3 * j]);
        v0[j] = PyLong_AsLongLong(args[7 + 3 * j]);
    }
    if (PyErr_Occurred()) return NULL;
    if (kind < BINARY || kind > LAC || max_run < 1 || height < 0) {
        PyErr_SetString(PyExc_ValueError, "decode: bad kind, max_run or height");
        return NULL;
    }
    Py_buffer tok, out;
    if (PyObject_GetBuffer(args[0], &tok, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    if (tok.itemsize != 8 || !tok.format || (strcmp(tok.format, "q") && strcmp(tok.format, "l") &&
                                              strcmp(tok.format, "<q") && strcmp(tok.format, "<l"))) {
        PyBuffer_Release(&tok);
        Py_RETURN_FALSE;
    }
    if (PyObject_GetBuffer(args[1], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&tok);
        return NULL;
    }
    const int64_t *t = (const int64_t *)tok.buf;
    Py_ssize_t nt = tok.len / 8;
    uint8_t *m = (uint8_t *)out.buf;
    int64_t size = out.len;
    int k = kind == MC ? 3 : 2;
    int ok = nt % k == 0 && (height == 0 || size % height == 0);
    int64_t width = height ? size / height : 0;
    memset(m, 0, (size_t)size);
    int64_t end = 0; /* end of the previous run */
    for (Py_ssize_t i = 0; ok && i < nt; i += k) {
        int64_t f[3] = {0, 0, 1};
        for (int j = 0; j < k; j++) {
            int64_t idx = t[i + j] - lo[j];
            if (idx < 0 || idx >= n[j]) {
                ok = 0;
                break;
            }
            f[j] = idx + v0[j];
        }
        if (!ok) break;
        int64_t start = f[0], length = f[1], cls = kind == MC ? f[2] : 1;
        if (kind == LAC) {
            cls = (f[1] - 1) / max_run + 1;
            length = (f[1] - 1) % max_run + 1;
        }
        if (length < 1 || cls < 1 || cls > 255 || start < end || start + length > size) {
            ok = 0;
            break;
        }
        if (height == 0) {
            memset(m + start, (int)cls, (size_t)length);
        } else {
            for (int64_t q = start; q < start + length; q++) m[(q % height) * width + q / height] = (uint8_t)cls;
        }
        end = start + length;
    }
    PyBuffer_Release(&tok);
    PyBuffer_Release(&out);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL, "Tokens of a label mask (see module doc)."},
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL, "Strict decode into a buffer (see module doc)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Compiled run kernels of the flat-start tokenizers.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
