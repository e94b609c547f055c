/* titus-runc-create: `create` of the titus OCI runtime (scripts/titus-runc execs it for every
 * `create`; docs/launch-netns.md). C for the launch's CPU budget: the Python version it replaces
 * (kept as the tests' oracle, tests/support/titus_runc_create_oracle.py) cost ~12 ms of CPU per
 * create in interpreter start and json.
 *
 * When the bundle's process environment carries TITUS_NETNS=<path> (the agent sets it last, after
 * the user's environment), it points every "network" namespace of the spec at that path — a
 * namespace the agent prepared and wired — and every "user" one at <path>.user, removes the
 * variable from the environment, writes config.json back (config.json.titus, then rename) and execs
 * the real runc (TITUS_RUNC_REAL, exported by the front). The path must be a mount under
 * NETNS_ROOT; anything else fails the create (never a fresh, unwired namespace instead).
 *
 * The spec is tokenized by a full JSON parser that records byte offsets; edits splice the original
 * bytes, so everything not edited stays byte-identical. Malformed JSON fails before any write. */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char NETNS_ROOT[] = "/run/titus/netns/";
static const char ENV_KEY[] = "TITUS_NETNS=";
#define MAX_DEPTH 512

static int g_argc;
static char **g_argv; /* runc's arguments (ours minus the program name) */

/* ------------------------------------------------------------------ buffers and failing ----- */

struct buf {
    char *p;
    size_t n, cap;
};

static void fail(const char *fmt, ...);

static void buf_put(struct buf *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            fputs("titus-runc: out of memory\n", stderr);
            exit(1);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void buf_putc(struct buf *b, char c) { buf_put(b, &c, 1); }
static void buf_puts(struct buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    buf_put(b, "", 0);
    char *tmp = malloc((size_t)n + 1);
    if (!tmp) {
        fputs("titus-runc: out of memory\n", stderr);
        exit(1);
    }
    vsnprintf(tmp, (size_t)n + 1, fmt, ap);
    buf_put(b, tmp, (size_t)n);
    free(tmp);
}

/* Decodes one UTF-8 sequence at s (n bytes left). Accepts the surrogate range (ED A0..BF) only
 * when `surrogates` is set: the decoder below writes a lone \uD800-style escape that way. Returns
 * the sequence's length and its code point in *cp, or 0 when invalid. */
static size_t utf8_decode(const unsigned char *s, size_t n, int surrogates, unsigned *cp)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        *cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        *cp = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED && !surrogates)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        *cp = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        unsigned d = s[k];
        if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF))
            return 0;
        *cp = (*cp << 6) | (d & 0x3F);
    }
    return len;
}

/* As Python's json.dumps (ensure_ascii): what goes into runc's --log file is ASCII JSON. */
static void json_escape_ascii(struct buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    char esc[16];
    for (size_t i = 0; i < n;) {
        unsigned c = p[i], cp;
        size_t len;
        if (c == '"' || c == '\\') {
            buf_putc(b, '\\');
            buf_putc(b, (char)c);
            i++;
        } else if (c == '\n') {
            buf_puts(b, "\\n"), i++;
        } else if (c == '\r') {
            buf_puts(b, "\\r"), i++;
        } else if (c == '\t') {
            buf_puts(b, "\\t"), i++;
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            buf_puts(b, esc), i++;
        } else if (c < 0x80) {
            buf_putc(b, (char)c), i++;
        } else if ((len = utf8_decode(p + i, n - i, 1, &cp)) == 0) {
            buf_puts(b, "\\ufffd"), i++;
        } else {
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                snprintf(esc, sizeof esc, "\\u%04x", cp);
            }
            buf_puts(b, esc);
            i += len;
        }
    }
}

/* Fails the runtime call: on stderr and, as the shim reports the last error of runc's --log
 * file, there too. Never returns. */
static void fail(const char *fmt, ...)
{
    struct buf msg = {0};
    va_list ap;
    buf_puts(&msg, "titus-runc: ");
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", msg.p);
    for (int i = 0; i < g_argc; i++) {
        if (strcmp(g_argv[i], "--log") != 0)
            continue;
        if (i + 1 < g_argc) {
            struct buf line = {0};
            buf_puts(&line, "{\"level\": \"error\", \"msg\": \"");
            json_escape_ascii(&line, msg.p);
            buf_puts(&line, "\"}\n");
            int fd = open(g_argv[i + 1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
            if (fd >= 0) {
                ssize_t w = write(fd, line.p, line.n);
                (void)w;
                close(fd);
            }
        }
        break; /* the first --log, as list.index */
    }
    exit(1);
}

/* An OSError as Python words it: "[Errno 2] No such file or directory: '<path>'". */
static void fail_os(const char *path)
{
    int e = errno;
    fail("cannot prepare the bundle: [Errno %d] %s: '%s'", e, strerror(e), path);
}

/* ------------------------------------------------------------------------ JSON tokenizer ----- */

enum jtype { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

struct node {
    enum jtype type;
    size_t start, end;         /* the value's bytes: [start, end) */
    size_t key_start, key_end; /* an object member's key token, quotes included */
    int first, last, next;     /* children (members or elements), in order; -1 when none */
    int count;
};

struct parser {
    const unsigned char *s;
    size_t n, i;
    struct node *nodes;
    int count, cap;
    const char *err;
};

static int new_node(struct parser *p, enum jtype t, size_t start)
{
    if (p->count == p->cap) {
        int cap = p->cap ? p->cap * 2 : 256;
        struct node *nodes = realloc(p->nodes, (size_t)cap * sizeof *nodes);
        if (!nodes) {
            fputs("titus-runc: out of memory\n", stderr);
            exit(1);
        }
        p->nodes = nodes;
        p->cap = cap;
    }
    struct node *nd = &p->nodes[p->count];
    memset(nd, 0, sizeof *nd);
    nd->type = t;
    nd->start = start;
    nd->first = nd->last = nd->next = -1;
    return p->count++;
}

static void add_child(struct parser *p, int parent, int child)
{
    struct node *pn = &p->nodes[parent];
    if (pn->last < 0)
        pn->first = child;
    else
        p->nodes[pn->last].next = child;
    pn->last = child;
    pn->count++;
}

static void skip_ws(struct parser *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static int hex4(const unsigned char *s, unsigned *v)
{
    *v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned c = s[k], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return 0;
        *v = (*v << 4) | d;
    }
    return 1;
}

/* Checks a string token starting at p->i (the opening quote); leaves p->i after the closing one.
 * Strict as Python's json: no raw control characters, known escapes only, valid UTF-8. */
static int scan_string(struct parser *p)
{
    p->i++;
    while (p->i < p->n) {
        unsigned c = p->s[p->i], cp, v;
        if (c == '"') {
            p->i++;
            return 1;
        } else if (c < 0x20) {
            p->err = "a control character in a string";
            return 0;
        } else if (c == '\\') {
            if (p->i + 1 >= p->n)
                break;
            c = p->s[p->i + 1];
            if (c == 'u') {
                if (p->i + 6 > p->n || !hex4(p->s + p->i + 2, &v)) {
                    p->err = "an invalid \\u escape";
                    return 0;
                }
                p->i += 6;
            } else if (strchr("\"\\/bfnrt", (int)c) && c) {
                p->i += 2;
            } else {
                p->err = "an invalid escape in a string";
                return 0;
            }
        } else if (c < 0x80) {
            p->i++;
        } else {
            size_t len = utf8_decode(p->s + p->i, p->n - p->i, 0, &cp);
            if (!len) {
                p->err = "invalid UTF-8";
                return 0;
            }
            p->i += len;
        }
    }
    p->err = "an unterminated string";
    return 0;
}

static void put_utf8(struct buf *b, unsigned cp)
{
    char u[4];
    if (cp < 0x80) {
        buf_putc(b, (char)cp);
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F));
        buf_put(b, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        buf_put(b, u, 3);
    } else {
        u[0] = (char)(0xF0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F));
        buf_put(b, u, 4);
    }
}

/* Decodes a string token [start, end) (already checked by scan_string) into out, UTF-8. A lone
 * surrogate escape (which Python's json accepts) is written as its 3-byte form and counted in
 * *lone, so callers can refuse it where a path is needed. */
static void decode_string(const unsigned char *s, size_t start, size_t end, struct buf *out, int *lone)
{
    out->n = 0;
    buf_put(out, "", 0);
    *lone = 0;
    for (size_t i = start + 1; i < end - 1;) {
        unsigned c = s[i], v, w;
        if (c != '\\') {
            buf_putc(out, (char)c);
            i++;
            continue;
        }
        c = s[i + 1];
        i += 2;
        switch (c) {
        case 'b': buf_putc(out, '\b'); break;
        case 'f': buf_putc(out, '\f'); break;
        case 'n': buf_putc(out, '\n'); break;
        case 'r': buf_putc(out, '\r'); break;
        case 't': buf_putc(out, '\t'); break;
        case 'u':
            hex4(s + i, &v);
            i += 4;
            if (v >= 0xD800 && v <= 0xDBFF && i + 6 <= end - 1 && s[i] == '\\' && s[i + 1] == 'u' &&
                hex4(s + i + 2, &w) && w >= 0xDC00 && w <= 0xDFFF) {
                v = 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00);
                i += 6;
            } else if (v >= 0xD800 && v <= 0xDFFF) {
                (*lone)++;
            }
            put_utf8(out, v);
            break;
        default: buf_putc(out, (char)c); break; /* " \ / */
        }
    }
}

static int parse_value(struct parser *p, int depth);

static int parse_literal(struct parser *p, const char *word, enum jtype t)
{
    size_t len = strlen(word);
    if (p->n - p->i < len || memcmp(p->s + p->i, word, len) != 0) {
        p->err = "an unexpected character";
        return -1;
    }
    int nd = new_node(p, t, p->i);
    p->i += len;
    p->nodes[nd].end = p->i;
    return nd;
}

static int digits(struct parser *p)
{
    size_t from = p->i;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
        p->i++;
    return p->i > from;
}

static int parse_number(struct parser *p)
{
    int nd = new_node(p, J_NUM, p->i);
    if (p->i < p->n && p->s[p->i] == '-')
        p->i++;
    if (p->i < p->n && p->s[p->i] == '0')
        p->i++;
    else if (!digits(p))
        goto bad;
    if (p->i < p->n && p->s[p->i] == '.') {
        p->i++;
        if (!digits(p))
            goto bad;
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-'))
            p->i++;
        if (!digits(p))
            goto bad;
    }
    p->nodes[nd].end = p->i;
    return nd;
bad:
    p->err = "an invalid number";
    return -1;
}

static int parse_container(struct parser *p, int depth, int object)
{
    int nd = new_node(p, object ? J_OBJ : J_ARR, p->i);
    char close = object ? '}' : ']';
    if (depth > MAX_DEPTH) {
        p->err = "nesting too deep";
        return -1;
    }
    p->i++;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == close) {
        p->i++;
        p->nodes[nd].end = p->i;
        return nd;
    }
    for (;;) {
        size_t key_start = 0, key_end = 0;
        if (object) {
            if (p->i >= p->n || p->s[p->i] != '"') {
                p->err = "a member name expected";
                return -1;
            }
            key_start = p->i;
            if (!scan_string(p))
                return -1;
            key_end = p->i;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') {
                p->err = "':' expected";
                return -1;
            }
            p->i++;
            skip_ws(p);
        }
        int child = parse_value(p, depth + 1);
        if (child < 0)
            return -1;
        p->nodes[child].key_start = key_start;
        p->nodes[child].key_end = key_end;
        add_child(p, nd, child);
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
            skip_ws(p);
            continue;
        }
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            p->nodes[nd].end = p->i;
            return nd;
        }
        p->err = object ? "',' or '}' expected" : "',' or ']' expected";
        return -1;
    }
}

static int parse_value(struct parser *p, int depth)
{
    if (p->i >= p->n) {
        p->err = "a value expected";
        return -1;
    }
    switch (p->s[p->i]) {
    case '{': return parse_container(p, depth, 1);
    case '[': return parse_container(p, depth, 0);
    case 't': return parse_literal(p, "true", J_TRUE);
    case 'f': return parse_literal(p, "false", J_FALSE);
    case 'n': return parse_literal(p, "null", J_NULL);
    case '"': {
        int nd = new_node(p, J_STR, p->i);
        if (!scan_string(p))
            return -1;
        p->nodes[nd].end = p->i;
        return nd;
    }
    default:
        if (p->s[p->i] == '-' || (p->s[p->i] >= '0' && p->s[p->i] <= '9'))
            return parse_number(p);
        p->err = "a value expected";
        return -1;
    }
}

/* ------------------------------------------------------------------------- the spec ----- */

static struct parser P;
static struct buf scratch;

static int key_is(int nd, const char *key)
{
    int lone;
    decode_string(P.s, P.nodes[nd].key_start, P.nodes[nd].key_end, &scratch, &lone);
    return scratch.n == strlen(key) && memcmp(scratch.p, key, scratch.n) == 0;
}

/* The member `key` of an object, as a dict built by json.load sees it: the last one. */
static int member(int obj, const char *key)
{
    int found = -1;
    for (int c = P.nodes[obj].first; c >= 0; c = P.nodes[c].next)
        if (key_is(c, key))
            found = c;
    return found;
}

/* Python truthiness, for the script's `x or {}` / `x or []`. */
static int truthy(int nd)
{
    struct node *n = &P.nodes[nd];
    switch (n->type) {
    case J_NULL:
    case J_FALSE: return 0;
    case J_TRUE: return 1;
    case J_STR: return n->end - n->start > 2;
    case J_ARR:
    case J_OBJ: return n->count > 0;
    case J_NUM:
        for (size_t i = n->start; i < n->end; i++) {
            if (P.s[i] == 'e' || P.s[i] == 'E')
                break;
            if (P.s[i] >= '1' && P.s[i] <= '9')
                return 1;
        }
        return 0;
    }
    return 0;
}

/* spec[key] when truthy and of type t; -1 when absent or falsy; fails on another type. */
static int member_of_type(int obj, const char *key, enum jtype t, const char *where)
{
    int nd = obj < 0 ? -1 : member(obj, key);
    if (nd < 0 || !truthy(nd))
        return -1;
    if (P.nodes[nd].type != t)
        fail("cannot prepare the bundle: %s is not %s", where, t == J_OBJ ? "an object" : "an array");
    return nd;
}

static int string_is(int nd, const char *s)
{
    int lone;
    if (nd < 0 || P.nodes[nd].type != J_STR)
        return 0;
    decode_string(P.s, P.nodes[nd].start, P.nodes[nd].end, &scratch, &lone);
    return scratch.n == strlen(s) && memcmp(scratch.p, s, scratch.n) == 0;
}

/* os.path.ismount for a path whose parent is canonical: not a symlink, and another device or
 * the same inode as its directory. */
static int is_mount(const char *path)
{
    struct stat st, parent;
    if (lstat(path, &st) != 0 || S_ISLNK(st.st_mode))
        return 0;
    const char *slash = strrchr(path, '/');
    if (!slash)
        return 0;
    struct buf dir = {0};
    buf_put(&dir, path, slash == path ? 1 : (size_t)(slash - path));
    int ok = lstat(dir.p, &parent) == 0 && (st.st_dev != parent.st_dev || st.st_ino == parent.st_ino);
    free(dir.p);
    return ok;
}

struct edit {
    size_t start, end; /* original bytes replaced */
    struct buf text;
};

static struct edit edits[64];
static int n_edits;

static struct edit *new_edit(size_t start, size_t end)
{
    if (n_edits == (int)(sizeof edits / sizeof edits[0]))
        fail("cannot prepare the bundle: too many namespaces to rewrite");
    struct edit *e = &edits[n_edits++];
    e->start = start;
    e->end = end;
    memset(&e->text, 0, sizeof e->text);
    buf_put(&e->text, "", 0);
    return e;
}

/* A JSON string for a path: quotes, backslashes and control characters escaped, UTF-8 kept. */
static void json_string(struct buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    char esc[8];
    buf_putc(b, '"');
    for (size_t i = 0; i < n;) {
        unsigned c = p[i], cp;
        if (c == '"' || c == '\\') {
            buf_putc(b, '\\'), buf_putc(b, (char)c), i++;
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            buf_puts(b, esc), i++;
        } else {
            size_t len = utf8_decode(p + i, n - i, 0, &cp);
            if (!len)
                fail("cannot prepare the bundle: the namespace path %s is not valid UTF-8", s);
            buf_put(b, p + i, len);
            i += len;
        }
    }
    buf_putc(b, '"');
}

/* The namespace object's "path" becomes `path`: its value replaced (the last "path", the one
 * json.load keeps), else a member appended after the last one. */
static void set_path(int ns, const char *path)
{
    int old = member(ns, "path");
    struct edit *e;
    if (old >= 0) {
        e = new_edit(P.nodes[old].start, P.nodes[old].end);
    } else if (P.nodes[ns].last >= 0) {
        size_t at = P.nodes[P.nodes[ns].last].end;
        e = new_edit(at, at);
        buf_puts(&e->text, ",\"path\":");
    } else {
        size_t at = P.nodes[ns].start + 1;
        e = new_edit(at, at);
        buf_puts(&e->text, "\"path\":");
    }
    json_string(&e->text, path);
}

static int edit_order(const void *a, const void *b)
{
    const struct edit *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static const char *bundle_of(void)
{
    int i = 0;
    while (strcmp(g_argv[i], "create") != 0)
        i++;
    for (i++; i < g_argc; i++) {
        if ((strcmp(g_argv[i], "--bundle") == 0 || strcmp(g_argv[i], "-b") == 0) && i + 1 < g_argc)
            return g_argv[i + 1];
        if (strncmp(g_argv[i], "--bundle=", 9) == 0)
            return g_argv[i] + 9;
    }
    static char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        fail("cannot prepare the bundle: [Errno %d] %s", errno, strerror(errno));
    return cwd;
}

static void read_file(const char *path, struct buf *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        fail_os(path);
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        fail_os(path);
    }
    char chunk[65536];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            fail_os(path);
        if (r == 0)
            break;
        buf_put(out, chunk, (size_t)r);
    }
    close(fd);
    buf_put(out, "", 0);
}

static void write_all(int fd, const char *s, size_t n, const char *path)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            unlink(path);
            errno = e;
            fail_os(path);
        }
        s += w;
        n -= (size_t)w;
    }
}

static void prepare(void)
{
    const char *bundle = bundle_of();
    struct buf path = {0}, text = {0}, value = {0};
    buf_puts(&path, bundle);
    if (path.n > 0 && path.p[path.n - 1] != '/')
        buf_putc(&path, '/');
    buf_puts(&path, "config.json");
    read_file(path.p, &text);

    P.s = (const unsigned char *)text.p;
    P.n = text.n;
    skip_ws(&P);
    int root = parse_value(&P, 0);
    if (root >= 0) {
        skip_ws(&P);
        if (P.i != P.n) {
            P.err = "extra data after the document";
            root = -1;
        }
    }
    if (root < 0)
        fail("cannot prepare the bundle: %s is not valid JSON: %s at byte %zu", path.p, P.err, P.i);
    if (P.nodes[root].type != J_OBJ)
        fail("cannot prepare the bundle: %s is not a JSON object", path.p);

    int process = member_of_type(root, "process", J_OBJ, "process");
    int env = member_of_type(process, "env", J_ARR, "process.env");
    if (env < 0)
        return;
    int wanted = -1, removed = 0, lone = 0;
    for (int e = P.nodes[env].first; e >= 0; e = P.nodes[e].next) {
        if (P.nodes[e].type != J_STR)
            fail("cannot prepare the bundle: process.env holds a value that is not a string");
        decode_string(P.s, P.nodes[e].start, P.nodes[e].end, &scratch, &lone);
        if (scratch.n >= sizeof ENV_KEY - 1 && memcmp(scratch.p, ENV_KEY, sizeof ENV_KEY - 1) == 0) {
            wanted = e;
            P.nodes[e].key_end = 1; /* marks it for removal below (array elements have no key) */
            removed++;
        } else {
            P.nodes[e].key_end = 0;
        }
    }
    if (wanted < 0)
        return; /* not a titus create: config.json untouched */

    decode_string(P.s, P.nodes[wanted].start, P.nodes[wanted].end, &value, &lone);
    const char *want = value.p + sizeof ENV_KEY - 1;
    if (strlen(want) != value.n - (sizeof ENV_KEY - 1))
        fail("cannot prepare the bundle: embedded null byte");
    if (lone)
        fail("cannot prepare the bundle: TITUS_NETNS holds a lone surrogate, not a path");
    char netns[PATH_MAX];
    if (!realpath(want, netns) || strncmp(netns, NETNS_ROOT, sizeof NETNS_ROOT - 1) != 0 || !is_mount(netns))
        fail("the task's prepared network namespace %s does not exist (or is not one titus pins)", want);

    int linux_ = member_of_type(root, "linux", J_OBJ, "linux");
    int namespaces = member_of_type(linux_, "namespaces", J_ARR, "linux.namespaces");
    int nets = 0, users = 0;
    for (int ns = namespaces < 0 ? -1 : P.nodes[namespaces].first; ns >= 0; ns = P.nodes[ns].next) {
        if (P.nodes[ns].type != J_OBJ)
            fail("cannot prepare the bundle: linux.namespaces holds a value that is not an object");
        int type = member(ns, "type");
        if (string_is(type, "network"))
            set_path(ns, netns), nets++;
    }
    if (!nets)
        fail("the container has no network namespace of its own to replace");
    /* The namespace is owned by a user namespace the agent created with the engine's remapping
     * (netns path + ".user"): the container joins it too, as a container joining a sandbox does. */
    char userns[PATH_MAX + 8];
    snprintf(userns, sizeof userns, "%s.user", netns);
    for (int ns = P.nodes[namespaces].first; ns >= 0; ns = P.nodes[ns].next)
        if (string_is(member(ns, "type"), "user"))
            users++;
    if (users) {
        if (!is_mount(userns))
            fail("the task's prepared user namespace %s does not exist", userns);
        for (int ns = P.nodes[namespaces].first; ns >= 0; ns = P.nodes[ns].next)
            if (string_is(member(ns, "type"), "user"))
                set_path(ns, userns);
    }

    /* process.env without TITUS_NETNS: the kept elements with the separators that followed them,
     * so the array keeps its layout. */
    struct node *arr = &P.nodes[env];
    struct edit *e = new_edit(arr->start + 1, arr->end - 1);
    int first = arr->first, prev_kept = -1;
    if (removed < arr->count) {
        buf_put(&e->text, P.s + arr->start + 1, P.nodes[first].start - (arr->start + 1));
        for (int el = first; el >= 0; el = P.nodes[el].next) {
            if (P.nodes[el].key_end)
                continue;
            if (prev_kept >= 0) {
                size_t sep = P.nodes[prev_kept].end;
                int after = P.nodes[prev_kept].next;
                buf_put(&e->text, P.s + sep, P.nodes[after].start - sep);
            }
            buf_put(&e->text, P.s + P.nodes[el].start, P.nodes[el].end - P.nodes[el].start);
            prev_kept = el;
        }
        size_t tail = P.nodes[arr->last].end;
        buf_put(&e->text, P.s + tail, arr->end - 1 - tail);
    }

    qsort(edits, (size_t)n_edits, sizeof edits[0], edit_order);
    struct buf tmp = {0};
    buf_puts(&tmp, path.p);
    buf_puts(&tmp, ".titus");
    int fd = open(tmp.p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        fail_os(tmp.p);
    size_t at = 0;
    for (int k = 0; k < n_edits; k++) {
        write_all(fd, text.p + at, edits[k].start - at, tmp.p);
        write_all(fd, edits[k].text.p, edits[k].text.n, tmp.p);
        at = edits[k].end;
    }
    write_all(fd, text.p + at, text.n - at, tmp.p);
    if (close(fd) != 0) {
        int err = errno;
        unlink(tmp.p);
        errno = err;
        fail_os(tmp.p);
    }
    if (rename(tmp.p, path.p) != 0) {
        int err = errno;
        fail("cannot prepare the bundle: [Errno %d] %s: '%s' -> '%s'", err, strerror(err), tmp.p, path.p);
    }
}

int main(int argc, char **argv)
{
    g_argc = argc - 1;
    g_argv = argv + 1;
    /* Resolved and exported by the titus-runc front (TITUS_RUNC_REAL, else its search list). */
    const char *runc = getenv("TITUS_RUNC_REAL");
    if (!runc || !*runc)
        fail("TITUS_RUNC_REAL is unset: run titus-runc-create through titus-runc, which finds runc");
    for (int i = 0; i < g_argc; i++) {
        if (strcmp(g_argv[i], "create") == 0) {
            prepare();
            break;
        }
    }
    argv[0] = (char *)runc;
    execv(runc, argv);
    fail("cannot exec %s: %s", runc, strerror(errno));
    return 1;
}
