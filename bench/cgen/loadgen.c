/* Scratch-cloud load generator in C: the same CLI, phases, messages and JSON as bench/loadgen.py.
 *
 * One thread, epoll (edge-triggered), non-blocking sockets, no per-frame malloc. Linux only, libc
 * only. Build (bench/setup.sh does it):
 *
 *     gcc -O2 -Wall -Wextra -std=c11 -o bench/.bin/loadgen bench/cgen/loadgen.c
 *
 * Run ONE measurement against an already running server; prints one JSON object (last line of
 * stdout) with the keys bench/loadgen.py prints:
 *
 *     bench/.bin/loadgen --url ws://127.0.0.1:9080/ --scenario classroom --server-pid PID
 *
 * Phases (as loadgen.py): connect + upgrade + handshake every client (bounded concurrency) ->
 * per-room barrier (member 0 sets "☁ sync"; wait until every other member has it) -> warmup ->
 * measurement window -> stop sending -> drain (until every receiver holds the last value of every
 * variable, or --drain-timeout) -> completeness check -> close.
 *
 * Receive times. Every socket has SO_TIMESTAMPNS: a frame's receive time is when its bytes
 * reached the client socket (the kernel's stamp of the last segment a read returns), not when the
 * generator got around to parsing it. That keeps the generator's own delay out of freshness, and
 * lets the send loop sleep from tick to tick and then read every ready socket at once (one
 * wake-up per tick instead of one per few frames: about half the CPU per frame). Without kernel
 * stamps it wakes up for every event and uses the read time; LOADGEN_WAKE=event does that too
 * (loadgen.py's way, for comparisons).
 *
 * Differences from loadgen.py: the receive time above (loadgen.py: perf() when on_data runs);
 * one time for all frames a single read returns; a line whose sequence number was never sent is
 * counted in errors["seq never sent"] (loadgen.py would crash); the JSON has three extra keys:
 * gen_cpu_us_per_join (generator CPU from the first connect to the end of the barrier, per
 * connection), gen_cpu_us_per_frame (window), receive_time ("kernel" or "read").
 * LOADGEN_DEBUG=1 prints internal counters to stderr.
 *
 * Several nodes (as loadgen.py): `--url` given N times spreads every room over N servers (member
 * m connects to the (m mod N)-th URL); freshness of the pairs whose writer and receiver are on
 * different nodes is also reported on its own (cross_node_p50_ms, ...). `--server-pid` takes a
 * comma list (CPU and RSS are summed over them and their children); `--redis-pid` is measured
 * apart (redis_cpu_pct, redis_cpu_us_per_line) and left out of other_cpu_pct.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#define RES 20000            /* freshness histogram buckets per second (50 us) */
#define HMAX (20 * RES)      /* 20 s; later samples land in the last bucket */
#define MAXEV 1024
#define MAXFRAME (64u << 20) /* larger server frames are a protocol error here */
#define MAXHTTP 16384
#define ATTEMPTS 3
#define CONNECT_TIMEOUT 30.0
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define MAXNODES 16          /* --url and --server-pid values */

/* ------------------------------------------------------------------ small helpers */
static double perf(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static void *xcalloc(size_t n, size_t m) {
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p) die("out of memory");
    return p;
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

typedef struct {
    char *s;
    size_t n, cap;
} SB;

static void sb_grow(SB *b, size_t add) {
    if (b->n + add + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + add + 1) c *= 2;
        b->s = xrealloc(b->s, c);
        b->cap = c;
    }
}

static void sb_putn(SB *b, const char *s, size_t n) {
    sb_grow(b, n);
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_puts(SB *b, const char *s) { sb_putn(b, s, strlen(s)); }

static void sb_printf(SB *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    sb_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

/* JSON string, as Python's json.dumps(s, ensure_ascii=False) (ASCII input in practice) */
static void sb_jstr(SB *b, const char *s) {
    sb_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default:
            if (*p < 0x20) sb_printf(b, "\\u%04x", *p);
            else sb_putn(b, (const char *)p, 1);
        }
    }
    sb_putn(b, "\"", 1);
}

/* Python's repr(float): shortest round-trip digits, fixed unless decpt <= -4 or > 16 */
static void sb_pyfloat(SB *b, double x) {
    if (x != x) { sb_puts(b, "NaN"); return; }
    if (x > 1.7976931348623157e308) { sb_puts(b, "Infinity"); return; }
    if (x < -1.7976931348623157e308) { sb_puts(b, "-Infinity"); return; }
    char buf[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, x);
        if (strtod(buf, NULL) == x) break;
    }
    const char *q = buf;
    bool neg = false;
    if (*q == '-') { neg = true; q++; }
    char dig[32];
    int nd = 0;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') dig[nd++] = *q;
    int e = *q == 'e' ? atoi(q + 1) : 0;
    while (nd > 1 && dig[nd - 1] == '0') nd--;
    dig[nd] = 0;
    int decpt = e + 1;
    if (neg) sb_putn(b, "-", 1);
    if (decpt <= -4 || decpt > 16) {
        sb_putn(b, dig, 1);
        if (nd > 1) { sb_putn(b, ".", 1); sb_putn(b, dig + 1, (size_t)nd - 1); }
        sb_printf(b, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    } else if (decpt <= 0) {
        sb_puts(b, "0.");
        for (int i = 0; i < -decpt; i++) sb_putn(b, "0", 1);
        sb_putn(b, dig, (size_t)nd);
    } else if (decpt >= nd) {
        sb_putn(b, dig, (size_t)nd);
        for (int i = nd; i < decpt; i++) sb_putn(b, "0", 1);
        sb_puts(b, ".0");
    } else {
        sb_putn(b, dig, (size_t)decpt);
        sb_putn(b, ".", 1);
        sb_putn(b, dig + decpt, (size_t)(nd - decpt));
    }
}

/* Python's round(x, n) for n >= 0: correctly rounded decimal, as glibc's printf does */
static double pyround(double x, int n) {
    char buf[400];
    snprintf(buf, sizeof buf, "%.*f", n, x);
    return strtod(buf, NULL);
}

/* ------------------------------------------------------------------ SHA-1, base64 */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t buf[256];
    if (total > sizeof buf) return; /* only used for 60-byte inputs */
    memset(buf, 0, total);
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)buf[off + 4 * i] << 24 | (uint32_t)buf[off + 4 * i + 1] << 16 |
                   (uint32_t)buf[off + 4 * i + 2] << 8 | buf[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999u; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1u; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDCu; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6u; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

static void b64(const uint8_t *in, size_t n, char *out) {
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = T[(v >> 18) & 63];
        out[o++] = T[(v >> 12) & 63];
        out[o++] = i + 1 < n ? T[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? T[v & 63] : '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------ Python's random (MT19937) */
static uint32_t mt[624];
static int mti = 625;

static void mt_init(uint32_t s) {
    mt[0] = s;
    for (mti = 1; mti < 624; mti++) mt[mti] = 1812433253u * (mt[mti - 1] ^ (mt[mti - 1] >> 30)) + (uint32_t)mti;
}

static void mt_init_array(const uint32_t *key, size_t klen) {
    mt_init(19650218u);
    size_t i = 1, j = 0, k = 624 > klen ? 624 : klen;
    for (; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
        i++; j++;
        if (i >= 624) { mt[0] = mt[623]; i = 1; }
        if (j >= klen) j = 0;
    }
    for (k = 623; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= 624) { mt[0] = mt[623]; i = 1; }
    }
    mt[0] = 0x80000000u;
}

static uint32_t mt_next(void) {
    static const uint32_t mag01[2] = {0, 0x9908b0dfu};
    uint32_t y;
    if (mti >= 624) {
        int kk;
        for (kk = 0; kk < 624 - 397; kk++) {
            y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            mt[kk] = mt[kk + 397] ^ (y >> 1) ^ mag01[y & 1];
        }
        for (; kk < 623; kk++) {
            y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            mt[kk] = mt[kk + (397 - 624)] ^ (y >> 1) ^ mag01[y & 1];
        }
        y = (mt[623] & 0x80000000u) | (mt[0] & 0x7fffffffu);
        mt[623] = mt[396] ^ (y >> 1) ^ mag01[y & 1];
        mti = 0;
    }
    y = mt[mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* random.Random(seed) for an int seed */
static void py_seed(long long seed) {
    unsigned long long n = seed < 0 ? (unsigned long long)(-(seed + 1)) + 1 : (unsigned long long)seed;
    uint32_t key[2] = {(uint32_t)n, (uint32_t)(n >> 32)};
    mt_init_array(key, key[1] ? 2 : 1);
}

static double py_random(void) {
    uint32_t a = mt_next() >> 5, b = mt_next() >> 6;
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

/* ------------------------------------------------------------------ arguments */
typedef struct {
    const char *name;
    int rooms, clients, senders, burst;
    double rate;
} Preset;

static const Preset PRESETS[] = {
    {"bigroom", 1, 500, 10, 1, 10.0},  {"burst", 20, 5, 5, 20, 1.0},
    {"burst50", 4, 50, 5, 20, 1.0},    {"classroom", 50, 10, 10, 1, 5.0},
    {"idle", 500, 10, 0, 1, 0.0},      {"idle10k", 1000, 10, 0, 1, 0.0},
};

static struct {
    const char *urls[MAXNODES], *scenario, *client, *phases;
    int nurls, nspids;
    int server_pids[MAXNODES];
    char run_id[128];
    int server_pid, redis_pid, rooms, clients, senders, burst, concurrency;
    long long seed;
    double rate, warmup, duration, settle, drain_timeout, barrier_timeout, tick;
    bool has_rooms, has_clients, has_senders, has_burst, has_rate;
} A;

static const char *OPTS[] = {"url", "scenario", "server-pid", "redis-pid", "client", "rooms", "clients",
                             "senders", "burst", "rate", "warmup", "duration", "settle",
                             "drain-timeout", "barrier-timeout", "tick", "phases", "seed",
                             "concurrency", "run-id", "help", NULL};

static void usage(FILE *f) {
    fputs("usage: loadgen --url URL [--scenario {bigroom,burst,burst50,classroom,idle,idle10k}]\n"
          "               [--server-pid PID[,PID...]] [--redis-pid PID] [--client NAME]\n"
          "               [--rooms N] [--clients N]\n"
          "               [--senders N] [--burst N] [--rate HZ] [--warmup S] [--duration S]\n"
          "               [--settle S] [--drain-timeout S] [--barrier-timeout S] [--tick S]\n"
          "               [--phases {random,even}] [--seed N] [--concurrency N] [--run-id ID]\n"
          "--url may be given several times: member m of every room connects to URL m mod N.\n"
          "Same flags, presets, phases and JSON output as bench/loadgen.py.\n", f);
}

static long long arg_int(const char *opt, const char *v) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end) die("argument --%s: invalid int value: '%s'", opt, v);
    return x;
}

static double arg_float(const char *opt, const char *v) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end) die("argument --%s: invalid float value: '%s'", opt, v);
    return x;
}

static void parse_args(int argc, char **argv) {
    A.scenario = "classroom";
    A.client = "c";
    A.phases = "random";
    A.warmup = 3.0;
    A.duration = 10.0;
    A.settle = 2.0;
    A.drain_timeout = 5.0;
    A.barrier_timeout = 30.0;
    A.tick = 0.002;
    A.seed = 1;
    A.concurrency = 64;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strncmp(s, "--", 2) != 0) die("unrecognized argument: %s", s);
        s += 2;
        const char *eq = strchr(s, '=');
        size_t klen = eq ? (size_t)(eq - s) : strlen(s);
        const char *opt = NULL;
        int hits = 0;
        for (const char **o = OPTS; *o; o++) {
            if (strlen(*o) == klen && strncmp(*o, s, klen) == 0) { opt = *o; hits = 1; break; }
            if (strlen(*o) > klen && strncmp(*o, s, klen) == 0) { opt = *o; hits++; }
        }
        if (hits != 1) die("%s option: --%.*s", hits ? "ambiguous" : "unrecognized", (int)klen, s);
        if (!strcmp(opt, "help")) { usage(stdout); exit(0); }
        const char *v;
        if (eq) v = eq + 1;
        else if (i + 1 < argc) v = argv[++i];
        else die("argument --%s: expected one argument", opt);
        if (!strcmp(opt, "url")) {
            if (A.nurls == MAXNODES) die("at most %d --url", MAXNODES);
            A.urls[A.nurls++] = v;
        } else if (!strcmp(opt, "scenario")) A.scenario = v;
        else if (!strcmp(opt, "server-pid")) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", v);
            A.nspids = 0;
            for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                if (A.nspids == MAXNODES) die("at most %d server pids", MAXNODES);
                A.server_pids[A.nspids++] = (int)arg_int(opt, tok);
            }
            A.server_pid = A.nspids ? A.server_pids[0] : 0;
        } else if (!strcmp(opt, "redis-pid")) A.redis_pid = (int)arg_int(opt, v);
        else if (!strcmp(opt, "client")) A.client = v;
        else if (!strcmp(opt, "rooms")) { A.rooms = (int)arg_int(opt, v); A.has_rooms = true; }
        else if (!strcmp(opt, "clients")) { A.clients = (int)arg_int(opt, v); A.has_clients = true; }
        else if (!strcmp(opt, "senders")) { A.senders = (int)arg_int(opt, v); A.has_senders = true; }
        else if (!strcmp(opt, "burst")) { A.burst = (int)arg_int(opt, v); A.has_burst = true; }
        else if (!strcmp(opt, "rate")) { A.rate = arg_float(opt, v); A.has_rate = true; }
        else if (!strcmp(opt, "warmup")) A.warmup = arg_float(opt, v);
        else if (!strcmp(opt, "duration")) A.duration = arg_float(opt, v);
        else if (!strcmp(opt, "settle")) A.settle = arg_float(opt, v);
        else if (!strcmp(opt, "drain-timeout")) A.drain_timeout = arg_float(opt, v);
        else if (!strcmp(opt, "barrier-timeout")) A.barrier_timeout = arg_float(opt, v);
        else if (!strcmp(opt, "tick")) A.tick = arg_float(opt, v);
        else if (!strcmp(opt, "phases")) {
            if (strcmp(v, "random") && strcmp(v, "even"))
                die("argument --phases: invalid choice: '%s' (choose from 'random', 'even')", v);
            A.phases = v;
        } else if (!strcmp(opt, "seed")) A.seed = arg_int(opt, v);
        else if (!strcmp(opt, "concurrency")) A.concurrency = (int)arg_int(opt, v);
        else if (!strcmp(opt, "run-id")) snprintf(A.run_id, sizeof A.run_id, "%s", v);
    }
    if (!A.nurls) { usage(stderr); die("the following arguments are required: --url"); }
    const Preset *p = NULL;
    for (size_t i = 0; i < sizeof PRESETS / sizeof *PRESETS; i++)
        if (!strcmp(PRESETS[i].name, A.scenario)) p = &PRESETS[i];
    if (!p) die("argument --scenario: invalid choice: '%s'", A.scenario);
    if (!A.has_rooms) A.rooms = p->rooms;
    if (!A.has_clients) A.clients = p->clients;
    if (!A.has_senders) A.senders = p->senders;
    if (!A.has_burst) A.burst = p->burst;
    if (!A.has_rate) A.rate = p->rate;
    if (A.senders > A.clients) A.senders = A.clients;
    if (A.senders < 0) A.senders = 0;
    if (A.rooms < 0 || A.clients < 0 || A.burst < 1 || A.concurrency < 1)
        die("rooms/clients must be >= 0, burst and concurrency >= 1");
    if (!A.run_id[0]) snprintf(A.run_id, sizeof A.run_id, "%d-%lld", (int)getpid(), (long long)time(NULL));
    if (A.duration > 300.0) A.duration = 300.0;
    if (A.warmup > 60.0) A.warmup = 60.0;
}

/* ------------------------------------------------------------------ /proc */
static long CLK_TCK, PAGE;

static void add_children(int pid, int **v, int *n, int *cap, int depth) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char cp[320];
        snprintf(cp, sizeof cp, "/proc/%d/task/%s/children", pid, e->d_name);
        FILE *f = fopen(cp, "r");
        if (!f) continue;
        int c;
        while (fscanf(f, "%d", &c) == 1) {
            if (*n == *cap) { *cap = *cap ? *cap * 2 : 8; *v = xrealloc(*v, (size_t)*cap * sizeof **v); }
            (*v)[(*n)++] = c;
            if (depth < 16) add_children(c, v, n, cap, depth + 1);
        }
        fclose(f);
    }
    closedir(d);
}

static int proc_list(int pid, int **v) {
    int n = 0, cap = 8;
    *v = xmalloc((size_t)cap * sizeof **v);
    (*v)[n++] = pid;
    add_children(pid, v, &n, &cap, 0);
    return n;
}

static int read_file(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (int)n;
}

/* utime+stime (s) of pid and its live children */
static double proc_cpu(int pid) {
    int *v, n = proc_list(pid, &v);
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        char path[64], buf[2048];
        snprintf(path, sizeof path, "/proc/%d/stat", v[i]);
        if (read_file(path, buf, sizeof buf) <= 0) continue;
        char *p = strrchr(buf, ')');
        if (!p) continue;
        p++;
        /* fields after ")": state(0) ppid(1) ... utime(11) stime(12) */
        unsigned long long ut = 0, st = 0;
        int field = 0;
        char *tok = strtok(p, " ");
        while (tok) {
            if (field == 11) ut = strtoull(tok, NULL, 10);
            if (field == 12) { st = strtoull(tok, NULL, 10); break; }
            field++;
            tok = strtok(NULL, " ");
        }
        total += (double)(ut + st) / (double)CLK_TCK;
    }
    free(v);
    return total;
}

static long long proc_rss(int pid) {
    int *v, n = proc_list(pid, &v);
    long long total = 0;
    for (int i = 0; i < n; i++) {
        char path[64], buf[256];
        snprintf(path, sizeof path, "/proc/%d/statm", v[i]);
        if (read_file(path, buf, sizeof buf) <= 0) continue;
        long long size, res;
        if (sscanf(buf, "%lld %lld", &size, &res) == 2) total += res * PAGE;
    }
    free(v);
    return total;
}

/* utime+stime (s) of every --server-pid and their children */
static double server_cpu(void) {
    double total = 0.0;
    for (int i = 0; i < A.nspids; i++) total += proc_cpu(A.server_pids[i]);
    return total;
}

static long long server_rss(void) {
    long long total = 0;
    for (int i = 0; i < A.nspids; i++) total += proc_rss(A.server_pids[i]);
    return total;
}

static double redis_cpu(void) { return A.redis_pid ? proc_cpu(A.redis_pid) : 0.0; }

/* (user+nice+system+steal, irq+softirq) core-seconds of the whole machine so far */
static void machine_cpu(double *busy, double *irq) {
    char buf[512];
    unsigned long long v[10] = {0};
    if (read_file("/proc/stat", buf, sizeof buf) > 0)
        sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
               &v[4], &v[5], &v[6], &v[7]);
    *busy = (double)(v[0] + v[1] + v[2] + v[7]) / (double)CLK_TCK;
    if (irq) *irq = (double)(v[5] + v[6]) / (double)CLK_TCK;
}

static double machine_busy(void) {
    double b;
    machine_cpu(&b, NULL);
    return b;
}

static double self_cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + (double)r.ru_utime.tv_usec * 1e-6 + (double)r.ru_stime.tv_sec +
           (double)r.ru_stime.tv_usec * 1e-6;
}

static double self_stime(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_stime.tv_sec + (double)r.ru_stime.tv_usec * 1e-6;
}

/* ------------------------------------------------------------------ counters */
typedef struct {
    char k[128];
    long long v;
} KV;

static KV ERRS[64], CLOSES[64];
static int nerrs, ncloses;

static KV *kv_get(KV *t, int *n, const char *k) {
    for (int i = 0; i < *n; i++)
        if (!strcmp(t[i].k, k)) return &t[i];
    if (*n == 64) return &t[63]; /* table full: lump into the last key */
    KV *e = &t[(*n)++];
    snprintf(e->k, sizeof e->k, "%s", k);
    e->v = 0;
    return e;
}

static void err_add(const char *k, long long inc) { kv_get(ERRS, &nerrs, k)->v += inc; }

static uint64_t *HIST, *LAG;
static uint64_t *HIST_CROSS; /* freshness of pairs whose writer is on another node (--url x N) */
static double W0 = 1e300; /* sends at or after W0 give freshness samples */
static long long LINES, ECHO, STALE, UNKNOWN, FRAMES, SENDS, SLOW_LINES, NWAIT, NEVT;
static long long KTS_HIT, KTS_MISS; /* reads with / without a kernel receive timestamp */
static int64_t RT_OFF_NS;            /* CLOCK_REALTIME - CLOCK_MONOTONIC */
static bool USE_KTS = true;          /* LOADGEN_WAKE=event: read times, as loadgen.py */

/* ------------------------------------------------------------------ rooms and clients */
typedef struct {
    double *t;
    int n, cap;
} SendT;

typedef struct {
    char rid[160];
    int c0;      /* first client index */
    SendT *st;   /* per var: send time of each seq */
} Room;

enum { ST_NONE, ST_TCP, ST_UPG, ST_RETRY, ST_OPEN, ST_DEAD, ST_FAILED };

typedef struct {
    int fd;
    uint8_t state;
    bool tx;       /* upgraded (loadgen.py: c.tx is not None) */
    bool fragging; /* inside a fragmented text message */
    uint8_t attempts;
    int closed_code; /* -1: none */
    int room, member;
    int olo, on;   /* own vars [olo, olo+on), plus var 0 for member 0 */
    double deadline;
    int32_t *last;
    char *pfx;     /* '{"method":"set","user":"U","project_id":P,"name":' */
    uint16_t pfxlen;
    char key[28];
    uint8_t *pend; /* bytes of an incomplete frame / HTTP response */
    uint32_t pendlen, pendcap;
    uint8_t *frag;
    size_t fraglen, fragcap;
    uint8_t *out; /* unsent output */
    size_t outoff, outlen, outcap;
} Conn;

static Room *ROOMS;
static Conn *C;
static int NROOMS, NCLIENTS, NV;
static char **VNAME;   /* per var: '"☁ v0_0","value":"' (JSON name + value opener) */
static uint16_t *VNAMELEN;

static int ep;
typedef struct {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int fam;
    char hosthdr[300], path[1024];
} Endpoint;

static Endpoint NODES[MAXNODES]; /* one per --url; member m of a room uses NODES[m % nurls] */

static uint8_t *RBUF;
static size_t RCAP = 256 * 1024;
static uint8_t SCRATCH[4096];

static bool owns(const Conn *c, int vi) {
    return (unsigned)(vi - c->olo) < (unsigned)c->on || (vi == 0 && c->member == 0);
}

static void st_push(SendT *s, double t) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->t = xrealloc(s->t, (size_t)s->cap * sizeof *s->t);
    }
    s->t[s->n++] = t;
}

static void setup(void) {
    NROOMS = A.rooms;
    NCLIENTS = A.rooms * A.clients;
    NV = 1 + A.senders * A.burst;
    VNAME = xcalloc((size_t)NV, sizeof *VNAME);
    VNAMELEN = xcalloc((size_t)NV, sizeof *VNAMELEN);
    for (int vi = 0; vi < NV; vi++) {
        char b[128];
        int n = vi == 0 ? snprintf(b, sizeof b, "\"\xe2\x98\x81 sync\",\"value\":\"")
                        : snprintf(b, sizeof b, "\"\xe2\x98\x81 v%d_%d\",\"value\":\"",
                                   (vi - 1) / A.burst, (vi - 1) % A.burst);
        VNAME[vi] = strdup(b);
        VNAMELEN[vi] = (uint16_t)n;
    }
    ROOMS = xcalloc((size_t)NROOMS, sizeof *ROOMS);
    C = xcalloc((size_t)NCLIENTS, sizeof *C);
    int32_t *last = xmalloc((size_t)NCLIENTS * (size_t)NV * sizeof *last);
    for (size_t i = 0; i < (size_t)NCLIENTS * (size_t)NV; i++) last[i] = -1;
    for (int r = 0; r < NROOMS; r++) {
        Room *room = &ROOMS[r];
        snprintf(room->rid, sizeof room->rid, "bench-%s-%d", A.run_id, r);
        room->c0 = r * A.clients;
        room->st = xcalloc((size_t)NV, sizeof *room->st);
        SB pid = {0};
        sb_jstr(&pid, room->rid);
        for (int m = 0; m < A.clients; m++) {
            Conn *c = &C[r * A.clients + m];
            c->fd = -1;
            c->closed_code = -1;
            c->room = r;
            c->member = m;
            c->last = last + (size_t)(r * A.clients + m) * (size_t)NV;
            if (m < A.senders) { c->olo = 1 + m * A.burst; c->on = A.burst; }
            else { c->olo = 0; c->on = 0; }
            if (m < A.senders || m == 0) {
                SB p = {0};
                sb_printf(&p, "{\"method\":\"set\",\"user\":\"player%d\",\"project_id\":%s,\"name\":",
                          r * 1000 + m, pid.s);
                c->pfx = p.s;
                c->pfxlen = (uint16_t)p.n;
            }
        }
        free(pid.s);
    }
}

/* ------------------------------------------------------------------ output path */
static uint32_t MASKSTATE = 0x9e3779b9u;

/* one final masked frame: header + mask + masked payload; returns its size */
static size_t ws_frame(uint8_t *out, int opcode, const uint8_t *p, size_t len) {
    size_t h = 0;
    out[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) out[h++] = (uint8_t)(0x80 | len);
    else if (len < 65536) { out[h++] = 0x80 | 126; out[h++] = (uint8_t)(len >> 8); out[h++] = (uint8_t)len; }
    else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) out[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t x = MASKSTATE; /* xorshift32: a cheap, changing mask */
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    MASKSTATE = x;
    uint8_t m[4];
    memcpy(m, &x, 4);
    memcpy(out + h, m, 4);
    h += 4;
    for (size_t i = 0; i < len; i++) out[h + i] = p[i] ^ m[i & 3];
    return h + len;
}

static void conn_lost(Conn *c, const char *why);

/* grow *buf (capacity *cap) to hold at least `need` bytes, doubling from 4 KiB */
static void reserve(uint8_t **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    *buf = xrealloc(*buf, n);
    *cap = n;
}

static void out_append(Conn *c, const uint8_t *b, size_t n) {
    if (c->outoff && c->outoff == c->outlen) c->outoff = c->outlen = 0;
    if (c->outlen + n > c->outcap) {
        if (c->outoff) {
            memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
            c->outlen -= c->outoff;
            c->outoff = 0;
        }
        reserve(&c->out, &c->outcap, c->outlen + n);
    }
    memcpy(c->out + c->outlen, b, n);
    c->outlen += n;
}

/* write now, or queue the rest until EPOLLOUT */
static void conn_write(Conn *c, const uint8_t *b, size_t n) {
    if (c->fd < 0) return;
    if (c->outlen > c->outoff) { out_append(c, b, n); return; }
    ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w == (ssize_t)n) return;
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { conn_lost(c, strerror(errno)); return; }
        w = 0;
    }
    out_append(c, b + w, n - (size_t)w);
}

static void conn_flush(Conn *c) {
    while (c->fd >= 0 && c->outlen > c->outoff) {
        ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) conn_lost(c, strerror(errno));
            return;
        }
        c->outoff += (size_t)w;
    }
    if (c->outoff == c->outlen) c->outoff = c->outlen = 0;
}

static void send_text(Conn *c, const uint8_t *p, size_t len) {
    uint8_t *buf = SCRATCH;
    if (len + 14 > sizeof SCRATCH) buf = xmalloc(len + 14);
    size_t n = ws_frame(buf, 1, p, len);
    conn_write(c, buf, n);
    if (buf != SCRATCH) free(buf);
}

/* loadgen.py Gen.send: record the send time of (room, var, seq) and send the set */
static void gsend(Conn *c, int vi) {
    SendT *st = &ROOMS[c->room].st[vi];
    int seq = st->n;
    st_push(st, perf());
    uint8_t p[1024];
    size_t n = 0;
    memcpy(p, c->pfx, c->pfxlen);
    n += c->pfxlen;
    memcpy(p + n, VNAME[vi], VNAMELEN[vi]);
    n += VNAMELEN[vi];
    n += (size_t)snprintf((char *)p + n, 16, "%d", seq);
    memcpy(p + n, "\"}\n", 3);
    n += 3;
    send_text(c, p, n);
    SENDS++;
}

/* ------------------------------------------------------------------ connections */
static void on_close(Conn *c, int code) {
    if (c->closed_code < 0) {
        c->closed_code = code;
        char k[16];
        snprintf(k, sizeof k, "%d", code);
        kv_get(CLOSES, &ncloses, k)->v++;
    }
}

static void disconnect(Conn *c, int code) {
    on_close(c, code);
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
    c->state = ST_DEAD;
    c->pendlen = 0;
}

static void fail_attempt(Conn *c, const char *why) {
    char k[160];
    snprintf(k, sizeof k, "connect: %s", why);
    k[120] = 0;
    err_add(k, 1);
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
    c->pendlen = 0;
    c->outoff = c->outlen = 0;
    if (c->attempts >= ATTEMPTS) c->state = ST_FAILED;
    else { c->state = ST_RETRY; c->deadline = perf() + 0.2; }
}

static void conn_lost(Conn *c, const char *why) {
    if (c->state == ST_TCP || c->state == ST_UPG) fail_attempt(c, why);
    else disconnect(c, 1006);
}

static const char *errname(int e) {
    switch (e) {
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EPIPE: return "EPIPE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENETUNREACH: return "ENETUNREACH";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    default: return "OSError";
    }
}

static void fail_errno(Conn *c, int e) {
    char why[128];
    snprintf(why, sizeof why, "%s: %s", errname(e), strerror(e));
    fail_attempt(c, why);
}

static void try_request(Conn *c) {
    char req[1600];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n"
                     "User-Agent: stratus-bench/1.0\r\n\r\n", /* picows's request */
                     NODES[c->member % A.nurls].path, NODES[c->member % A.nurls].hosthdr, c->key);
    ssize_t w = send(c->fd, req, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w == n) { c->state = ST_UPG; return; }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return; /* not connected yet */
    if (w < 0) { fail_errno(c, errno); return; }
    /* partial write of ~200 bytes into an empty buffer: queue the rest */
    c->state = ST_UPG;
    out_append(c, (const uint8_t *)req + w, (size_t)(n - w));
}

static void start_attempt(Conn *c) {
    c->attempts++;
    c->pendlen = 0;
    c->fragging = false;
    const Endpoint *node = &NODES[c->member % A.nurls];
    int fd = socket(node->fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { fail_errno(c, errno); return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one); /* kernel receive times */
    if (connect(fd, (const struct sockaddr *)&node->addr, node->addrlen) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        fail_errno(c, e);
        return;
    }
    c->fd = fd;
    c->state = ST_TCP;
    c->deadline = perf() + CONNECT_TIMEOUT;
    uint8_t raw[16];
    uint32_t x = MASKSTATE ^ (uint32_t)(c - C) * 2654435761u;
    for (int i = 0; i < 16; i += 4) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        memcpy(raw + i, &x, 4);
    }
    MASKSTATE ^= x;
    b64(raw, 16, c->key);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u32 = (uint32_t)(c - C)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { fail_errno(c, errno); return; }
    try_request(c); /* on loopback the TCP handshake is usually done already */
}

static void send_handshake(Conn *c) {
    char b[512];
    SB pid = {0};
    sb_jstr(&pid, ROOMS[c->room].rid);
    int n = snprintf(b, sizeof b, "{\"method\":\"handshake\",\"user\":\"player%d\",\"project_id\":%s}\n",
                     c->room * 1000 + c->member, pid.s);
    free(pid.s);
    send_text(c, (const uint8_t *)b, (size_t)n);
}

/* ------------------------------------------------------------------ receive path */
static int lookup(const char *s, size_t n) {
    if (n >= 4 && !memcmp(s, "\xe2\x98\x81 ", 4)) { s += 4; n -= 4; }
    else if (n >= 7 && !memcmp(s, "\\u2601 ", 7)) { s += 7; n -= 7; }
    else return -1;
    if (n == 4 && !memcmp(s, "sync", 4)) return 0;
    if (n < 4 || s[0] != 'v') return -1;
    size_t i = 1;
    long m = 0, k = 0;
    size_t d0 = i;
    while (i < n && s[i] >= '0' && s[i] <= '9' && i - d0 < 9) m = m * 10 + (s[i++] - '0');
    if (i == d0 || (s[d0] == '0' && i - d0 > 1) || i >= n || s[i] != '_') return -1;
    d0 = ++i;
    while (i < n && s[i] >= '0' && s[i] <= '9' && i - d0 < 9) k = k * 10 + (s[i++] - '0');
    if (i == d0 || (s[d0] == '0' && i - d0 > 1) || i != n) return -1;
    if (m >= A.senders || k >= A.burst) return -1;
    return 1 + (int)m * A.burst + (int)k;
}

/* one (name, value) pair: exactly loadgen.py's on_data loop body; returns 1 if delivered */
static int on_pair(Conn *c, const char *name, size_t nlen, long long seq, double now) {
    int vi = lookup(name, nlen);
    if (vi < 0) { UNKNOWN++; return 0; }
    if (owns(c, vi)) { ECHO++; return 0; }
    int32_t prev = c->last[vi];
    if (seq <= prev) { STALE++; return 1; }
    SendT *st = &ROOMS[c->room].st[vi];
    if (seq >= st->n) { err_add("seq never sent", 1); return 1; }
    c->last[vi] = (int32_t)seq;
    const double *t = st->t, w0 = W0;
    int writer = vi == 0 ? 0 : (vi - 1) / A.burst;
    bool cross = A.nurls > 1 && writer % A.nurls != c->member % A.nurls;
    for (long long s = prev + 1; s <= seq; s++) {
        if (t[s] >= w0) {
            double dd = (now - t[s]) * RES;
            long long d = dd > 0 ? (long long)dd : 0;
            HIST[d < HMAX ? d : HMAX]++;
            if (cross) HIST_CROSS[d < HMAX ? d : HMAX]++;
        }
    }
    return 1;
}

/* ---- slow path: a small JSON parser for lines the fast scan does not recognise */
typedef struct {
    const char *p, *e;
} JP;

static void jws(JP *j) {
    while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hexv(int ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int jhex4(JP *j, unsigned *u) {
    if (j->e - j->p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexv((unsigned char)j->p[i]);
        if (h < 0) return -1;
        v = v * 16 + (unsigned)h;
    }
    j->p += 4;
    *u = v;
    return 0;
}

/* a JSON string, decoded to UTF-8 into out (truncated at cap); *ascii = all chars < 0x80 */
static int jstring(JP *j, char *out, size_t cap, size_t *olen, bool *ascii) {
    size_t o = 0;
    bool asc = true;
    if (j->p >= j->e || *j->p != '"') return -1;
    j->p++;
    while (j->p < j->e) {
        unsigned char ch = (unsigned char)*j->p++;
        unsigned u;
        if (ch == '"') { *olen = o; if (ascii) *ascii = asc; return 0; }
        if (ch < 0x20) return -1;
        if (ch != '\\') {
            if (ch >= 0x80) asc = false;
            if (o < cap) out[o++] = (char)ch;
            continue;
        }
        if (j->p >= j->e) return -1;
        ch = (unsigned char)*j->p++;
        switch (ch) {
        case '"': case '\\': case '/': u = ch; break;
        case 'b': u = '\b'; break;
        case 'f': u = '\f'; break;
        case 'n': u = '\n'; break;
        case 'r': u = '\r'; break;
        case 't': u = '\t'; break;
        case 'u':
            if (jhex4(j, &u)) return -1;
            if (u >= 0xD800 && u < 0xDC00 && j->e - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u') {
                JP s = {j->p + 2, j->e};
                unsigned lo;
                if (!jhex4(&s, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                    j->p = s.p;
                }
            }
            break;
        default: return -1;
        }
        if (u >= 0x80) asc = false;
        char b[4];
        int bn;
        if (u < 0x80) { b[0] = (char)u; bn = 1; }
        else if (u < 0x800) { b[0] = (char)(0xC0 | (u >> 6)); b[1] = (char)(0x80 | (u & 63)); bn = 2; }
        else if (u < 0x10000) {
            b[0] = (char)(0xE0 | (u >> 12)); b[1] = (char)(0x80 | ((u >> 6) & 63));
            b[2] = (char)(0x80 | (u & 63)); bn = 3;
        } else {
            b[0] = (char)(0xF0 | (u >> 18)); b[1] = (char)(0x80 | ((u >> 12) & 63));
            b[2] = (char)(0x80 | ((u >> 6) & 63)); b[3] = (char)(0x80 | (u & 63)); bn = 4;
        }
        for (int i = 0; i < bn; i++)
            if (o < cap) out[o++] = b[i];
    }
    return -1;
}

/* number token; *isint = JSON integer literal; *val its value (if it fits) */
static int jnumber(JP *j, bool *isint, long long *val) {
    const char *s = j->p;
    bool neg = false, in = true;
    long long v = 0;
    if (j->p < j->e && *j->p == '-') { neg = true; j->p++; }
    if (j->e - j->p >= 8 && !memcmp(j->p, "Infinity", 8)) { j->p += 8; *isint = false; return 0; }
    if (j->p >= j->e || *j->p < '0' || *j->p > '9') { j->p = s; return -1; }
    if (*j->p == '0') j->p++;
    else
        while (j->p < j->e && *j->p >= '0' && *j->p <= '9') {
            if (v < 100000000000000000LL) v = v * 10 + (*j->p - '0');
            j->p++;
        }
    if (j->p < j->e && *j->p == '.') {
        in = false;
        j->p++;
        if (j->p >= j->e || *j->p < '0' || *j->p > '9') return -1;
        while (j->p < j->e && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    if (j->p < j->e && (*j->p == 'e' || *j->p == 'E')) {
        in = false;
        j->p++;
        if (j->p < j->e && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->e || *j->p < '0' || *j->p > '9') return -1;
        while (j->p < j->e && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    *isint = in;
    *val = neg ? -v : v;
    return 0;
}

static int jskip(JP *j, int depth) {
    if (depth > 64) return -1;
    jws(j);
    if (j->p >= j->e) return -1;
    char ch = *j->p;
    if (ch == '"') {
        char tmp[1];
        size_t n;
        return jstring(j, tmp, 0, &n, NULL);
    }
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        j->p++;
        jws(j);
        if (j->p < j->e && *j->p == close) { j->p++; return 0; }
        for (;;) {
            if (ch == '{') {
                jws(j);
                char tmp[1];
                size_t n;
                if (jstring(j, tmp, 0, &n, NULL)) return -1;
                jws(j);
                if (j->p >= j->e || *j->p != ':') return -1;
                j->p++;
            }
            if (jskip(j, depth + 1)) return -1;
            jws(j);
            if (j->p >= j->e) return -1;
            if (*j->p == ',') { j->p++; continue; }
            if (*j->p == close) { j->p++; return 0; }
            return -1;
        }
    }
    static const char *lits[] = {"true", "false", "null", "NaN", NULL};
    for (const char **l = lits; *l; l++) {
        size_t n = strlen(*l);
        if ((size_t)(j->e - j->p) >= n && !memcmp(j->p, *l, n)) { j->p += n; return 0; }
    }
    bool isint;
    long long v;
    return jnumber(j, &isint, &v);
}

/* loadgen.py slow_parse for one line, then on_pair; returns delivered count */
static int slow_line(Conn *c, const char *s, size_t n, double now) {
    SLOW_LINES++;
    JP j = {s, s + n};
    jws(&j);
    bool is_obj = j.p < j.e && *j.p == '{';
    if (!is_obj) {
        if (jskip(&j, 0)) goto bad;
        jws(&j);
        if (j.p != j.e) goto bad;
        return 0; /* valid JSON, not an object */
    }
    j.p++;
    bool method_set = false, has_name = false;
    int vstate = 0; /* 0: missing or not str|int (skipped), 1: int, 2: str that int() rejects */
    char name[512], vbuf[64];
    size_t nlen = 0;
    long long val = 0;
    jws(&j);
    if (j.p < j.e && *j.p == '}') { j.p++; goto done; }
    for (;;) {
        char key[16];
        size_t klen;
        jws(&j);
        if (jstring(&j, key, sizeof key, &klen, NULL)) goto bad;
        jws(&j);
        if (j.p >= j.e || *j.p != ':') goto bad;
        j.p++;
        jws(&j);
        if (j.p >= j.e) goto bad;
        bool isstr = *j.p == '"';
        if (klen == 6 && !memcmp(key, "method", 6)) {
            char m[8];
            size_t ml;
            method_set = false;
            if (isstr) {
                if (jstring(&j, m, sizeof m, &ml, NULL)) goto bad;
                method_set = ml == 3 && !memcmp(m, "set", 3);
            } else if (jskip(&j, 1)) goto bad;
        } else if (klen == 4 && !memcmp(key, "name", 4)) {
            has_name = false;
            if (isstr) {
                if (jstring(&j, name, sizeof name, &nlen, NULL)) goto bad;
                has_name = true;
            } else if (jskip(&j, 1)) goto bad;
        } else if (klen == 5 && !memcmp(key, "value", 5)) {
            vstate = 0;
            if (isstr) {
                size_t vl;
                bool asc;
                if (jstring(&j, vbuf, sizeof vbuf - 1, &vl, &asc)) goto bad;
                if (asc) { /* str(val).isascii(); then int(val) */
                    vbuf[vl < sizeof vbuf - 1 ? vl : sizeof vbuf - 1] = 0;
                    char *end;
                    errno = 0;
                    val = strtoll(vbuf, &end, 10);
                    while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r') end++;
                    vstate = end != vbuf && !*end && !errno && vl < sizeof vbuf - 1 ? 1 : 2;
                }
            } else if (*j.p == '-' || (*j.p >= '0' && *j.p <= '9')) {
                bool isint;
                if (jnumber(&j, &isint, &val)) goto bad;
                vstate = isint ? 1 : 0; /* a float is not str|int: skipped */
            } else if (jskip(&j, 1)) goto bad; /* bool/null/object/array: skipped */
        } else if (jskip(&j, 1)) goto bad;
        jws(&j);
        if (j.p >= j.e) goto bad;
        if (*j.p == ',') { j.p++; continue; }
        if (*j.p == '}') { j.p++; break; }
        goto bad;
    }
done:
    jws(&j);
    if (j.p != j.e) goto bad;
    if (!method_set || !has_name || !vstate) return 0;
    if (vstate == 2) { err_add("bad value", 1); return 0; }
    return on_pair(c, name, nlen < sizeof name ? nlen : sizeof name, val, now);
bad:
    err_add("non-json line", 1);
    return 0;
}

/* loadgen.py on_data: one text message (lines separated by "\n") */
static void on_data(Conn *c, const uint8_t *data, size_t len, double now) {
    FRAMES++;
    const char *p = (const char *)data, *end = p + len;
    int n = 0;
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        /* fast path (loadgen.py's FIND regex): "name":"<raw>","value":"?(-?[0-9]+) */
        const char *q = memmem(p, (size_t)(le - p), "\"name\":\"", 8);
        bool ok = false;
        if (q) {
            const char *s = q + 8, *t = s;
            while (t < le && *t != '"') t += *t == '\\' ? 2 : 1;
            if (t < le && le - t >= 10 && !memcmp(t, "\",\"value\":", 10)) {
                const char *v = t + 10;
                if (v < le && *v == '"') v++;
                bool neg = false;
                if (v < le && *v == '-') { neg = true; v++; }
                if (v < le && *v >= '0' && *v <= '9') {
                    long long x = 0;
                    int nd = 0;
                    while (v < le && *v >= '0' && *v <= '9') {
                        if (nd++ < 18) x = x * 10 + (*v - '0');
                        v++;
                    }
                    n += on_pair(c, s, (size_t)(t - s), neg ? -x : x, now);
                    ok = true;
                }
            }
        }
        if (!ok) n += slow_line(c, p, (size_t)(le - p), now);
        if (!nl) break;
        p = nl + 1;
    }
    LINES += n;
}

static void frag_append(Conn *c, const uint8_t *p, size_t n) {
    reserve(&c->frag, &c->fragcap, c->fraglen + n);
    memcpy(c->frag + c->fraglen, p, n);
    c->fraglen += n;
}

/* parse complete frames in b[0..n); returns bytes consumed; *need = size of an incomplete frame */
static size_t parse_frames(Conn *c, uint8_t *b, size_t n, double now, size_t *need) {
    size_t pos = 0;
    *need = 0;
    while (n - pos >= 2) {
        uint8_t b0 = b[pos], b1 = b[pos + 1];
        size_t hl = 2;
        uint64_t len = b1 & 0x7f;
        if (len == 126) {
            if (n - pos < 4) break;
            len = (uint64_t)b[pos + 2] << 8 | b[pos + 3];
            hl = 4;
        } else if (len == 127) {
            if (n - pos < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | b[pos + 2 + i];
            hl = 10;
        }
        if (b1 & 0x80) hl += 4;
        if (len > MAXFRAME) {
            err_add("frame too big", 1);
            uint8_t f[16], pl[2] = {1009 >> 8, 1009 & 255};
            conn_write(c, f, ws_frame(f, 8, pl, 2));
            disconnect(c, 1009);
            return n;
        }
        if (n - pos < hl + len) { *need = hl + (size_t)len; break; }
        uint8_t *p = b + pos + hl;
        if (b1 & 0x80) {
            const uint8_t *m = p - 4;
            for (size_t i = 0; i < len; i++) p[i] ^= m[i & 3];
        }
        pos += hl + (size_t)len;
        int op = b0 & 0x0f;
        bool fin = b0 & 0x80;
        switch (op) {
        case 1: /* text */
            if (fin) { c->fragging = false; on_data(c, p, (size_t)len, now); }
            else { c->fragging = true; c->fraglen = 0; frag_append(c, p, (size_t)len); }
            break;
        case 0: /* continuation */
            if (c->fragging) {
                frag_append(c, p, (size_t)len);
                if (fin) { c->fragging = false; on_data(c, c->frag, c->fraglen, now); }
            }
            break;
        case 8: { /* close: record the code, answer with it, disconnect */
            int code = len >= 2 ? (p[0] << 8 | p[1]) : 1005;
            on_close(c, code);
            uint8_t f[16], pl[2] = {(uint8_t)(code >> 8), (uint8_t)code};
            conn_write(c, f, ws_frame(f, 8, pl, code == 1005 ? 0 : 2));
            disconnect(c, code);
            return n;
        }
        case 9: { /* ping -> pong */
            uint8_t f[160];
            if (len <= 125) conn_write(c, f, ws_frame(f, 10, p, (size_t)len));
            break;
        }
        default: break; /* pong, binary: ignored */
        }
        if (c->fd < 0) return n;
    }
    return pos;
}

static void upgrade_done(Conn *c) {
    c->state = ST_OPEN;
    c->tx = true;
    send_handshake(c);
}

/* the HTTP response to our upgrade; returns header length, 0 if incomplete, -1 if refused */
static int check_upgrade(Conn *c, const uint8_t *b, size_t n) {
    const uint8_t *e = memmem(b, n, "\r\n\r\n", 4);
    if (!e) {
        if (n > MAXHTTP) fail_attempt(c, "upgrade response too long");
        return 0;
    }
    size_t hl = (size_t)(e - b) + 4;
    const char *s = (const char *)b;
    if (hl < 12 || memcmp(s, "HTTP/1.", 7) || memcmp(s + 8, " 101", 4)) {
        const char *eol = memchr(s, '\r', hl);
        char why[160];
        snprintf(why, sizeof why, "InvalidStatus: server rejected WebSocket connection: %.*s",
                 (int)(eol ? eol - s : 40), s);
        fail_attempt(c, why);
        return -1;
    }
    char in[64], acc[40];
    uint8_t dg[20];
    int kn = snprintf(in, sizeof in, "%s%s", c->key, WS_GUID);
    sha1((const uint8_t *)in, (size_t)kn, dg);
    b64(dg, 20, acc);
    bool ok = false;
    const char *p = s, *end = s + hl;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol) break;
        if (eol - p > 21 && !strncasecmp(p, "sec-websocket-accept:", 21)) {
            const char *v = p + 21, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            ok = (size_t)(ve - v) == strlen(acc) && !memcmp(v, acc, strlen(acc));
        }
        p = eol + 2;
    }
    if (!ok) {
        fail_attempt(c, "InvalidHeaderValue: bad Sec-WebSocket-Accept");
        return -1;
    }
    return (int)hl;
}

static void ensure_rcap(size_t want) {
    if (want <= RCAP) return;
    size_t cap = RCAP;
    while (cap < want) cap *= 2;
    RBUF = xrealloc(RBUF, cap);
    RCAP = cap;
}

static void save_pend(Conn *c, const uint8_t *b, size_t n) {
    if (n > c->pendcap) {
        size_t cap = c->pendcap ? c->pendcap : 1024;
        while (cap < n) cap *= 2;
        c->pend = xrealloc(c->pend, cap);
        c->pendcap = (uint32_t)cap;
    }
    memmove(c->pend, b, n);
    c->pendlen = (uint32_t)n;
}

static void do_read(Conn *c) {
    for (;;) {
        size_t off = c->pendlen;
        ensure_rcap(off + 65536);
        if (off) memcpy(RBUF, c->pend, off);
        size_t room = RCAP - off;
        struct iovec iov = {RBUF + off, room};
        union {
            char b[CMSG_SPACE(sizeof(struct timespec))];
            struct cmsghdr align;
        } cm;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b,
                            .msg_controllen = sizeof cm.b};
        ssize_t r = recvmsg(c->fd, &mh, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            conn_lost(c, strerror(errno));
            return;
        }
        if (r == 0) {
            if (c->state == ST_UPG || c->state == ST_TCP) fail_attempt(c, "ConnectionClosed: closed during upgrade");
            else disconnect(c, 1006);
            return;
        }
        double now = perf();
        /* when the bytes reached the socket (the last skb read): the kernel's CLOCK_REALTIME
         * stamp, moved to CLOCK_MONOTONIC; the generator's own delay does not count */
        struct cmsghdr *cmh = mh.msg_controllen ? CMSG_FIRSTHDR(&mh) : NULL;
        if (cmh && cmh->cmsg_level == SOL_SOCKET && cmh->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cmh), sizeof ts);
            double rx = (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - RT_OFF_NS) * 1e-9;
            if (USE_KTS && rx <= now && rx > now - 1.0) now = rx;
            KTS_HIT += c->state == ST_OPEN;
        } else KTS_MISS += c->state == ST_OPEN;
        c->pendlen = 0;
        size_t n = off + (size_t)r, pos = 0;
        if (c->state == ST_UPG || c->state == ST_TCP) {
            int hl = check_upgrade(c, RBUF, n);
            if (hl < 0) return;
            if (hl == 0) {
                if (c->fd >= 0) save_pend(c, RBUF, n);
                if ((size_t)r < room) return;
                continue;
            }
            upgrade_done(c);
            pos = (size_t)hl;
        }
        size_t need = 0;
        if (c->state == ST_OPEN) pos += parse_frames(c, RBUF + pos, n - pos, now, &need);
        if (c->fd < 0) return;
        if (pos < n) save_pend(c, RBUF + pos, n - pos);
        if (need) ensure_rcap(need + 65536);
        if ((size_t)r < room) return; /* short read: drained (edge-triggered) */
    }
}

static void on_event(uint32_t idx, uint32_t events) {
    Conn *c = &C[idx];
    if (c->fd < 0) return;
    if (c->state == ST_TCP) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            int e = 0;
            socklen_t l = sizeof e;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l);
            fail_errno(c, e ? e : ECONNRESET);
            return;
        }
        if (events & EPOLLOUT) try_request(c);
        if (c->fd < 0 || c->state == ST_TCP) return;
    }
    if ((events & EPOLLOUT) && c->outlen > c->outoff) conn_flush(c);
    if (c->fd >= 0 && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) do_read(c);
}

#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441
#endif
static bool HAVE_PWAIT2 = true;
static struct epoll_event EVS[MAXEV];

static void refresh_rt_off(void) {
    struct timespec a, b, a2;
    clock_gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    clock_gettime(CLOCK_REALTIME, &a2);
    int64_t ra = (int64_t)a.tv_sec * 1000000000 + a.tv_nsec;
    int64_t ra2 = (int64_t)a2.tv_sec * 1000000000 + a2.tv_nsec;
    RT_OFF_NS = ra + (ra2 - ra) / 2 - ((int64_t)b.tv_sec * 1000000000 + b.tv_nsec);
}

/* wait up to timeout seconds for events and handle them; returns the number of events */
static int poll_once(double timeout) {
    if (timeout < 0) timeout = 0;
    int n = -1;
    if (HAVE_PWAIT2) {
        struct timespec ts;
        ts.tv_sec = (time_t)timeout;
        ts.tv_nsec = (long)((timeout - (double)ts.tv_sec) * 1e9);
        n = (int)syscall(SYS_epoll_pwait2, ep, EVS, MAXEV, &ts, NULL, (size_t)8);
        if (n < 0 && errno == ENOSYS) HAVE_PWAIT2 = false;
    }
    if (!HAVE_PWAIT2) {
        int ms = (int)(timeout * 1000.0);
        if ((double)ms < timeout * 1000.0) ms++;
        n = epoll_wait(ep, EVS, MAXEV, ms);
    }
    NWAIT++;
    if (n <= 0) return 0;
    NEVT += n;
    refresh_rt_off();
    for (int i = 0; i < n; i++) on_event(EVS[i].data.u32, EVS[i].events);
    return n;
}

/* ------------------------------------------------------------------ phases */
static double connect_all(void) {
    double t0 = perf();
    int conc = A.concurrency, next = 0, inflight = 0, done = 0;
    int *slots = xmalloc((size_t)conc * sizeof *slots);
    while (done < NCLIENTS) {
        while (inflight < conc && next < NCLIENTS) {
            slots[inflight++] = next;
            start_attempt(&C[next++]);
        }
        double now = perf(), wake = now + 0.05;
        for (int i = 0; i < inflight;) {
            Conn *c = &C[slots[i]];
            if (c->state == ST_RETRY && now >= c->deadline) start_attempt(c);
            else if ((c->state == ST_TCP || c->state == ST_UPG) && now >= c->deadline) {
                fail_attempt(c, "TimeoutError: handshake timed out");
            }
            if (c->state == ST_OPEN || c->state == ST_DEAD || c->state == ST_FAILED) {
                slots[i] = slots[--inflight];
                done++;
                continue;
            }
            if (c->deadline < wake) wake = c->deadline;
            i++;
        }
        if (done >= NCLIENTS) break;
        if (inflight < conc && next < NCLIENTS) continue;
        poll_once(wake - perf());
    }
    free(slots);
    return perf() - t0;
}

/* process events until time t */
static void (*MARK_HOOK)(double now);
static double MARK_NEXT = 1e300;

static void poll_until(double t) {
    for (;;) {
        double now = perf();
        if (MARK_HOOK && now >= MARK_NEXT) { MARK_HOOK(now); now = perf(); }
        if (now >= t) return;
        double until = t < MARK_NEXT ? t : MARK_NEXT;
        poll_once(until - now);
    }
}

static double barrier(double timeout) {
    double t0 = perf();
    for (int r = 0; r < NROOMS; r++)
        if (A.clients > 1 && C[ROOMS[r].c0].tx) gsend(&C[ROOMS[r].c0], 0);
    double deadline = t0 + timeout;
    long long pending = 0;
    while (perf() < deadline) {
        pending = 0;
        for (int r = 0; r < NROOMS && A.clients > 1; r++) {
            int want = ROOMS[r].st[0].n - 1;
            for (int m = 1; m < A.clients; m++) {
                Conn *c = &C[ROOMS[r].c0 + m];
                if (c->last[0] < want && c->closed_code < 0 && c->tx) pending++;
            }
        }
        if (!pending) return perf() - t0;
        poll_until(perf() + 0.005);
    }
    kv_get(ERRS, &nerrs, "barrier timeout")->v = pending;
    return perf() - t0;
}

typedef struct {
    double u;
    int j;
} Drawn;

static int cmp_drawn(const void *a, const void *b) {
    const Drawn *x = a, *y = b;
    if (x->u < y->u) return -1;
    if (x->u > y->u) return 1;
    return (x->j > y->j) - (x->j < y->j);
}

static bool BATCHED;

static void drive(double t_start, double t_stop) {
    int *snd = xmalloc((size_t)(NCLIENTS ? NCLIENTS : 1) * sizeof *snd), n = 0;
    /* sorted by (member, room): interleave rooms so consecutive sends hit different rooms */
    for (int m = 0; m < A.senders; m++)
        for (int r = 0; r < NROOMS; r++)
            if (C[r * A.clients + m].tx) snd[n++] = r * A.clients + m;
    if (!n || A.rate <= 0) { poll_until(t_stop); free(snd); return; }
    double period = 1.0 / A.rate;
    double *phase = xmalloc((size_t)n * sizeof *phase);
    if (!strcmp(A.phases, "even")) {
        for (int i = 0; i < n; i++) phase[i] = period * i / n;
    } else {
        py_seed(A.seed);
        Drawn *d = xmalloc((size_t)n * sizeof *d);
        for (int j = 0; j < n; j++) { d[j].u = 0.0 + (period - 0.0) * py_random(); d[j].j = j; }
        qsort(d, (size_t)n, sizeof *d, cmp_drawn);
        int *s2 = xmalloc((size_t)n * sizeof *s2);
        for (int i = 0; i < n; i++) { s2[i] = snd[d[i].j]; phase[i] = d[i].u; }
        free(snd);
        snd = s2;
        free(d);
    }
    if (getenv("LOADGEN_DEBUG"))
        for (int q = 0; q < n && q < 6; q++)
            fprintf(stderr, "loadgen: sender %d: room %d member %d phase %.17g\n", q,
                    C[snd[q]].room, C[snd[q]].member, phase[q]);
    /* With kernel receive times, reading can wait for the next tick at no cost to the
     * figures: sleep until the tick, then read every socket that has data (one wake-up per
     * tick instead of one per few frames). Without them (or with LOADGEN_WAKE=event), wake up
     * for every event as loadgen.py does. */
    BATCHED = USE_KTS && KTS_HIT > 0 && KTS_MISS <= KTS_HIT / 100;
    int i = 0;
    long long k = 0;
    double due = t_start + phase[0], woke = perf(), tick = A.tick;
    for (;;) {
        double now = perf();
        if (MARK_HOOK && now >= MARK_NEXT) { MARK_HOOK(now); now = perf(); }
        if (now >= t_stop) break;
        /* loop lag: how late this tick woke up */
        double lg = now - woke;
        long long d = (long long)((lg > 0 ? lg : 0.0) * RES);
        LAG[d < HMAX ? d : HMAX]++;
        while (due <= now) {
            Conn *c = &C[snd[i]];
            if (c->closed_code < 0)
                for (int vi = c->olo; vi < c->olo + c->on; vi++) gsend(c, vi);
            if (++i == n) { i = 0; k++; }
            due = t_start + (double)k * period + phase[i];
        }
        woke = perf() + tick;
        if (!BATCHED) { poll_until(woke); continue; }
        for (;;) {
            double t = perf();
            if (MARK_HOOK && t >= MARK_NEXT) { MARK_HOOK(t); t = perf(); }
            if (t >= woke) break;
            double w = woke < MARK_NEXT ? woke : MARK_NEXT;
            struct timespec ts = {(time_t)w, (long)((w - (double)(time_t)w) * 1e9)};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        }
        while (poll_once(0) == MAXEV) {
        }
    }
    free(snd);
    free(phase);
}

static void incomplete(long long *bad_out, long long *total_out) {
    long long bad = 0, total = 0;
    for (int r = 0; r < NROOMS; r++) {
        for (int m = 0; m < A.clients; m++) {
            Conn *c = &C[ROOMS[r].c0 + m];
            if (!c->tx || c->closed_code >= 0) continue;
            for (int vi = 0; vi < NV; vi++) {
                int f = ROOMS[r].st[vi].n - 1;
                if (f < 0 || owns(c, vi)) continue;
                total++;
                if (c->last[vi] != f) bad++;
            }
        }
    }
    *bad_out = bad;
    *total_out = total;
}

static void close_all(void) {
    for (int i = 0; i < NCLIENTS; i++) {
        Conn *c = &C[i];
        if (c->tx && c->fd >= 0) {
            uint8_t f[16], pl[2] = {1000 >> 8, 1000 & 255};
            conn_write(c, f, ws_frame(f, 8, pl, 2));
            if (c->fd >= 0) { close(c->fd); c->fd = -1; }
        }
    }
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static double pct(const uint64_t *h, double q, bool *none) {
    unsigned long long n = 0;
    for (int i = 0; i <= HMAX; i++) n += h[i];
    *none = n == 0;
    if (!n) return 0;
    double want = q * (double)n;
    unsigned long long acc = 0;
    for (int i = 0; i <= HMAX; i++) {
        acc += h[i];
        if ((double)acc >= want) return ((double)i + 0.5) / RES * 1000.0;
    }
    return (double)HMAX / RES * 1000.0;
}

/* ------------------------------------------------------------------ JSON output */
static SB OUT;
static bool OUT_FIRST = true;

static void K(const char *k) {
    if (!OUT_FIRST) sb_puts(&OUT, ", ");
    OUT_FIRST = false;
    sb_jstr(&OUT, k);
    sb_puts(&OUT, ": ");
}
static void KI(const char *k, long long v) { K(k); sb_printf(&OUT, "%lld", v); }
static void KF(const char *k, double v) { K(k); sb_pyfloat(&OUT, v); }
static void KR(const char *k, double v, int nd) { KF(k, pyround(v, nd)); }
static void KP(const char *k, const uint64_t *h, double q) {
    bool none;
    double v = pct(h, q, &none);
    K(k);
    if (none) sb_puts(&OUT, "null");
    else sb_pyfloat(&OUT, v);
}
static void Kdict(const char *k, const KV *t, int n) {
    K(k);
    sb_puts(&OUT, "{");
    for (int i = 0; i < n; i++) {
        if (i) sb_puts(&OUT, ", ");
        sb_jstr(&OUT, t[i].k);
        sb_printf(&OUT, ": %lld", t[i].v);
    }
    sb_puts(&OUT, "}");
}

/* ------------------------------------------------------------------ run */
typedef struct {
    double t, gcpu, gsys, scpu, rcpu, mbusy, mirq;
    long long lines, sends, frames;
    bool done;
} Snap;

static Snap S0, S1;

static double T_W0, T_W1;

static void snap(Snap *s) {
    s->t = perf();
    s->lines = LINES;
    s->sends = SENDS;
    s->frames = FRAMES;
    s->gcpu = self_cpu();
    s->gsys = self_stime();
    s->scpu = server_cpu();
    s->rcpu = redis_cpu();
    machine_cpu(&s->mbusy, &s->mirq);
    s->done = true;
}

static void mark_hook(double now) {
    (void)now;
    if (!S0.done) {
        snap(&S0);
        W0 = S0.t;
        memset(LAG, 0, (size_t)(HMAX + 1) * sizeof *LAG);
        MARK_NEXT = T_W1;
    } else if (!S1.done) {
        snap(&S1);
        MARK_NEXT = 1e300;
    }
}

static void timed_out(int sig) {
    (void)sig;
    static const char msg[] = "{\"error\": \"generator timed out\"}\n";
    ssize_t w = write(1, msg, sizeof msg - 1);
    (void)w;
    _exit(0);
}

static void run(void) {
    int spid = A.server_pid;
    setup();
    sb_puts(&OUT, "{");
    K("scenario");
    sb_jstr(&OUT, A.scenario);
    K("client");
    sb_jstr(&OUT, A.client);
    K("params");
    sb_printf(&OUT, "{\"rooms\": %d, \"clients\": %d, \"senders\": %d, \"rate\": ", A.rooms, A.clients,
              A.senders);
    sb_pyfloat(&OUT, A.rate);
    sb_printf(&OUT, ", \"burst\": %d, \"warmup\": ", A.burst);
    sb_pyfloat(&OUT, A.warmup);
    sb_puts(&OUT, ", \"duration\": ");
    sb_pyfloat(&OUT, A.duration);
    sb_puts(&OUT, "}");
    KI("n_clients", NCLIENTS);

    long long rss0 = spid ? server_rss() : 0;
    double cpu_j0 = server_cpu(), rcpu_j0 = redis_cpu();
    double t_j0 = perf(), m_j0 = machine_busy(), g_j0 = self_cpu();
    double join_t = connect_all();
    long long connected = 0;
    for (int i = 0; i < NCLIENTS; i++) connected += C[i].tx;
    double bar_t = barrier(A.barrier_timeout);
    double cpu_j1 = server_cpu();
    double g_j1 = self_cpu();
    long long conn1 = connected > 1 ? connected : 1;
    KI("connected", connected);
    KR("join_s", join_t, 3);
    KR("barrier_s", bar_t, 3);
    KR("joins_per_s", (double)connected / (join_t + bar_t), 1);
    if (spid) KR("server_cpu_us_per_join", (cpu_j1 - cpu_j0) / (double)conn1 * 1e6, 1);

    if (A.senders == 0 || A.rate <= 0) {
        poll_until(perf() + A.settle);
        long long rss1 = spid ? server_rss() : 0;
        if (spid) {
            KR("server_rss_before_mb", (double)rss0 / 1048576.0, 1);
            KR("server_rss_after_mb", (double)rss1 / 1048576.0, 1);
            KR("rss_per_conn_kb", (double)(rss1 - rss0) / (double)conn1 / 1024.0, 2);
        }
        double el = perf() - t_j0;
        double gcpu = self_cpu() - g_j0;
        double other = machine_busy() - m_j0 - gcpu - (server_cpu() - cpu_j0) -
                       (redis_cpu() - rcpu_j0);
        KR("gen_cpu_pct", 100 * gcpu / el, 1);
        KR("other_cpu_pct", 100 * (other > 0 ? other : 0.0) / el, 1);
        Kdict("closes", CLOSES, ncloses);
        Kdict("errors", ERRS, nerrs);
        KR("gen_cpu_us_per_join", (g_j1 - g_j0) / (double)conn1 * 1e6, 1);
        sb_puts(&OUT, "}\n");
        close_all();
        return;
    }

    double t_start = perf();
    T_W0 = t_start + A.warmup;
    T_W1 = T_W0 + A.duration;
    MARK_HOOK = mark_hook;
    MARK_NEXT = T_W0;
    drive(t_start, T_W1);
    while (!S1.done) poll_until(perf() + 0.001);
    double t_d = perf();
    long long bad = 0, total = 0;
    while (perf() - t_d < A.drain_timeout) {
        incomplete(&bad, &total);
        if (!bad) break;
        poll_until(perf() + 0.02);
    }
    incomplete(&bad, &total);
    double win = S1.t - S0.t;
    long long lines = S1.lines - S0.lines, sends = S1.sends - S0.sends, frames = S1.frames - S0.frames;
    double scpu = S1.scpu - S0.scpu, gcpu = S1.gcpu - S0.gcpu, rcpu = S1.rcpu - S0.rcpu;
    int nrecv = A.clients - 1;
    double busy = S1.mbusy - S0.mbusy, irq = S1.mirq - S0.mirq;
    unsigned long long fresh = 0;
    for (int i = 0; i <= HMAX; i++) fresh += HIST[i];
    KR("window_s", win, 3);
    KR("offered_sets_per_s", (double)sends / win, 1);
    KR("expected_lines_per_s", (double)(sends * nrecv) / win, 1);
    KR("delivered_per_s", (double)lines / win, 1);
    KR("frames_per_s", (double)frames / win, 1);
    KR("lines_per_frame", (double)lines / (double)(frames > 1 ? frames : 1), 2);
    KP("p50_ms", HIST, 0.50);
    KP("p99_ms", HIST, 0.99);
    KP("p999_ms", HIST, 0.999);
    if (A.nurls > 1) {
        unsigned long long cross = 0;
        for (int i = 0; i <= HMAX; i++) cross += HIST_CROSS[i];
        KI("nodes", A.nurls);
        KP("cross_node_p50_ms", HIST_CROSS, 0.50);
        KP("cross_node_p99_ms", HIST_CROSS, 0.99);
        KI("cross_node_samples", (long long)cross);
    }
    K("max_ms");
    {
        int i = HMAX;
        while (i >= 0 && !HIST[i]) i--;
        if (i < 0) sb_puts(&OUT, "null");
        else sb_pyfloat(&OUT, ((double)i + 1) / RES * 1000.0);
    }
    KI("fresh_samples", (long long)fresh);
    KI("incomplete", bad);
    KI("checked_pairs", total);
    KR("drain_s", perf() - t_d, 3);
    KP("tick_lag_p99_ms", LAG, 0.99);
    KR("gen_cpu_pct", 100 * gcpu / win, 1);
    KR("gen_sys_pct", 100 * (S1.gsys - S0.gsys) / win, 1);
    KR("gen_cpu_us_per_line", gcpu / (double)(lines > 1 ? lines : 1) * 1e6, 2);
    double oth = busy - gcpu - scpu - rcpu;
    KR("other_cpu_pct", 100 * (oth > 0 ? oth : 0.0) / win, 1);
    KR("softirq_cpu_pct", 100 * irq / win, 1);
    KI("echo_lines", ECHO);
    KI("stale_lines", STALE);
    KI("unknown_lines", UNKNOWN);
    Kdict("closes", CLOSES, ncloses);
    Kdict("errors", ERRS, nerrs);
    if (spid) {
        KR("server_cpu_pct", 100 * scpu / win, 1);
        KR("server_cpu_us_per_line", scpu / (double)(lines > 1 ? lines : 1) * 1e6, 2);
        KR("server_rss_mb", (double)server_rss() / 1048576.0, 1);
    }
    if (A.redis_pid) {
        KR("redis_cpu_pct", 100 * rcpu / win, 1);
        KR("redis_cpu_us_per_line", rcpu / (double)(lines > 1 ? lines : 1) * 1e6, 2);
    }
    KR("gen_cpu_us_per_join", (g_j1 - g_j0) / (double)conn1 * 1e6, 1);
    KR("gen_cpu_us_per_frame", gcpu / (double)(frames > 1 ? frames : 1) * 1e6, 2);
    K("receive_time");
    sb_jstr(&OUT, USE_KTS && KTS_HIT > 0 && KTS_MISS <= KTS_HIT / 100 ? "kernel" : "read");
    sb_puts(&OUT, "}\n");
    close_all();
}

static void parse_url(const char *url, Endpoint *node) {
    const char *u = url;
    if (strncmp(u, "ws://", 5)) die("only ws:// URLs are supported: %s", u);
    u += 5;
    const char *slash = strchr(u, '/');
    size_t hl = slash ? (size_t)(slash - u) : strlen(u);
    if (hl == 0 || hl >= sizeof node->hosthdr) die("bad URL: %s", url);
    char *HOSTHDR = node->hosthdr;
    memcpy(HOSTHDR, u, hl);
    HOSTHDR[hl] = 0;
    snprintf(node->path, sizeof node->path, "%s", slash ? slash : "/");
    char host[300], port[16] = "80";
    if (HOSTHDR[0] == '[') {
        const char *rb = strchr(HOSTHDR, ']');
        if (!rb) die("bad URL: %s", url);
        snprintf(host, sizeof host, "%.*s", (int)(rb - HOSTHDR - 1), HOSTHDR + 1);
        if (rb[1] == ':') snprintf(port, sizeof port, "%s", rb + 2);
    } else {
        const char *colon = strrchr(HOSTHDR, ':');
        if (colon) {
            snprintf(host, sizeof host, "%.*s", (int)(colon - HOSTHDR), HOSTHDR);
            snprintf(port, sizeof port, "%s", colon + 1);
        } else snprintf(host, sizeof host, "%s", HOSTHDR);
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int e = getaddrinfo(host, port, &hints, &res);
    if (e) die("cannot resolve %s: %s", host, gai_strerror(e));
    memcpy(&node->addr, res->ai_addr, res->ai_addrlen);
    node->addrlen = res->ai_addrlen;
    node->fam = res->ai_family;
    freeaddrinfo(res);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    CLK_TCK = sysconf(_SC_CLK_TCK);
    PAGE = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < A.nurls; i++) parse_url(A.urls[i], &NODES[i]);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    const char *wake = getenv("LOADGEN_WAKE");
    USE_KTS = !(wake && !strcmp(wake, "event"));
    signal(SIGALRM, timed_out);
    alarm((unsigned)(A.warmup + A.duration + 300) + 1);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    RBUF = xmalloc(RCAP);
    HIST = xcalloc((size_t)HMAX + 1, sizeof *HIST);
    HIST_CROSS = xcalloc((size_t)HMAX + 1, sizeof *HIST_CROSS);
    LAG = xcalloc((size_t)HMAX + 1, sizeof *LAG);
    run();
    if (getenv("LOADGEN_DEBUG"))
        fprintf(stderr, "loadgen: slow-path lines %lld, frames %lld, lines %lld, epoll_pwait2 %d, "
                "waits %lld, events %lld, kernel stamps %lld/%lld, batched %d\n", SLOW_LINES, FRAMES,
                LINES, HAVE_PWAIT2, NWAIT, NEVT, KTS_HIT, KTS_HIT + KTS_MISS, BATCHED);
    fwrite(OUT.s, 1, OUT.n, stdout);
    fflush(stdout);
    _exit(0);
}
