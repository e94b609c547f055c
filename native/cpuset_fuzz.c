/*
 * cpuset_fuzz.c - random-input driver for the placement core, meant to be built with
 * -fsanitize=address,undefined (see native/Makefile, target `sanitize`, and
 * tests/cpuset/test_cpuset_sanitize.py).
 *
 * Usage: cpuset_fuzz [iterations] [seed]
 * For each iteration it builds a random (sometimes invalid) topology and runs a random
 * sequence of calls with random (often invalid) arguments, checking after every call:
 *   - each CPU has at most one owner and every workload holds exactly its CPU count;
 *   - free + held + reserved == online;
 *   - a failed call leaves the state unchanged.
 * Every iteration runs twice from the same seed and the output digests must match
 * (determinism). Exit status 0 = all good, 1 = invariant violated.
 */
#include "cpuset_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;

static uint32_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}

static int32_t rr(int32_t lo, int32_t hi) /* inclusive */
{
    if (hi <= lo)
        return lo;
    return lo + (int32_t)(rnd() % (uint32_t)(hi - lo + 1));
}

static uint64_t digest;

static void mix(int64_t v)
{
    digest ^= (uint64_t)v + 0x9e3779b97f4a7c15ULL + (digest << 6) + (digest >> 2);
}

#define MAXC CS_MAX_CPUS
#define FAIL(...)                                                                          \
    do {                                                                                   \
        fprintf(stderr, __VA_ARGS__);                                                      \
        fprintf(stderr, "\n");                                                             \
        return 1;                                                                          \
    } while (0)

static cs_cpu_desc descs[MAXC + 8];
static int64_t owners[MAXC], owners2[MAXC];
static int32_t buf[MAXC + 8];
static cs_move moves[4 * MAXC];

static int32_t make_topology(int32_t *ncpus)
{
    int kind = rr(0, 9);
    int32_t n;
    if (kind == 0) { /* garbage */
        n = rr(-2, MAXC + 4);
        int32_t m = n < 1 ? 1 : (n > MAXC + 8 ? MAXC + 8 : n);
        for (int32_t i = 0; i < m; i++) {
            descs[i].online = rr(-1, 2);
            descs[i].reserved = rr(-1, 2);
            descs[i].socket = rr(-2, 4);
            descs[i].node = rr(-2, 8);
            descs[i].l3 = rr(-2, 16);
            descs[i].core = rr(-2, 40);
        }
        *ncpus = n;
        return kind;
    }
    int32_t sockets = rr(1, 4), nps = rr(1, 4), l3pn = rr(1, 4), cpl3 = rr(1, 8), thr = rr(1, 4);
    if (kind == 1)
        thr = rr(1, 20); /* may exceed CS_MAX_THREADS_PER_CORE */
    int adjacent = rr(0, 1);
    int32_t ncores = sockets * nps * l3pn * cpl3;
    n = ncores * thr;
    if (n > MAXC) {
        cpl3 = 1;
        ncores = sockets * nps * l3pn;
        if (ncores * thr > MAXC)
            thr = MAXC / ncores;
        n = ncores * thr;
    }
    int32_t core = 0;
    for (int32_t s = 0; s < sockets; s++)
        for (int32_t nd = 0; nd < nps; nd++)
            for (int32_t l = 0; l < l3pn; l++)
                for (int32_t c = 0; c < cpl3; c++, core++)
                    for (int32_t t = 0; t < thr; t++) {
                        int32_t cpu = adjacent ? core * thr + t : core + t * ncores;
                        descs[cpu].online = 1;
                        descs[cpu].reserved = rr(0, 30) == 0;
                        descs[cpu].socket = s * 7 + 3; /* sparse ids */
                        descs[cpu].node = s * nps + nd;
                        descs[cpu].l3 = (s * nps + nd) * l3pn + l;
                        descs[cpu].core = core * 3 + 1;
                    }
    for (int32_t i = 0; i < n; i++)
        if (rr(0, 15) == 0)
            descs[i].online = 0;
    if (kind == 2 && n > 1) /* contradiction: a core split across L3 groups */
        descs[rr(0, n - 1)].l3 += 1000;
    *ncpus = n;
    return kind;
}

static int check(cs_state *st, const int64_t *ids, const int32_t *cnt, int32_t nids)
{
    int32_t n = cs_num_cpus(st);
    if (cs_owners(st, owners, n) != CS_OK)
        FAIL("cs_owners failed");
    int32_t held = 0, fr = 0, res = 0, off = 0;
    for (int32_t i = 0; i < n; i++) {
        if (owners[i] >= 0)
            held++;
        else if (owners[i] == CS_OWNER_FREE)
            fr++;
        else if (owners[i] == CS_OWNER_RESERVED)
            res++;
        else if (owners[i] == CS_OWNER_OFFLINE)
            off++;
        else
            FAIL("bad owner code %lld", (long long)owners[i]);
    }
    if (fr != cs_free_cpus(st))
        FAIL("free count mismatch");
    if (fr + held != cs_usable_cpus(st))
        FAIL("free + held != usable (%d + %d != %d)", fr, held, cs_usable_cpus(st));
    (void)res;
    (void)off;
    int32_t sum = 0, live = 0;
    for (int32_t k = 0; k < nids; k++) {
        if (cnt[k] <= 0)
            continue;
        live++;
        int32_t c = 0;
        for (int32_t i = 0; i < n; i++)
            c += owners[i] == ids[k];
        if (c != cnt[k])
            FAIL("workload %lld holds %d CPUs, expected %d", (long long)ids[k], c, cnt[k]);
        sum += c;
    }
    if (sum != held)
        FAIL("held CPUs (%d) not accounted to known workloads (%d)", held, sum);
    if (live != cs_num_workloads(st))
        FAIL("workload count mismatch %d vs %d", live, cs_num_workloads(st));
    return 0;
}

#define NIDS 64

static int run_iteration(uint64_t seed)
{
    rng_state = seed * 0x2545F4914F6CDD1DULL + 1;
    memset(descs, 0, sizeof(descs));
    int32_t n;
    int kind = make_topology(&n);
    cs_state *st = NULL;
    int rc = cs_init(&st, descs, n);
    mix(rc);
    if (rc != CS_OK) {
        if (st != NULL)
            FAIL("cs_init failed but set *out");
        return 0;
    }
    (void)kind;
    int64_t ids[NIDS];
    int32_t cnt[NIDS];
    for (int k = 0; k < NIDS; k++) {
        ids[k] = k * 5 + 2;
        cnt[k] = 0;
    }
    int32_t usable = cs_usable_cpus(st);
    int ops = rr(1, 300);
    for (int op = 0; op < ops; op++) {
        int which = rr(0, 9);
        int32_t k = rr(0, NIDS - 1);
        cs_owners(st, owners2, n);
        int changed_ok = 0;
        switch (which) {
        case 0: case 1: case 2: case 3: {
            int32_t want = rr(0, 9) == 0 ? rr(-3, usable + 3) : rr(1, usable / 4 + 1);
            int32_t cls = rr(0, 20) == 0 ? rr(-1, 3) : rr(0, 1);
            int32_t cap = rr(0, 15) == 0 ? rr(-1, want) : MAXC;
            int32_t nout = -1;
            rc = cs_allocate(st, ids[k], want, cls, buf, cap, &nout);
            mix(rc);
            if (rc == CS_OK) {
                if (cnt[k] != 0 || nout != want)
                    FAIL("allocate succeeded inconsistently");
                for (int32_t i = 0; i < nout; i++) {
                    mix(buf[i]);
                    if (i > 0 && buf[i] <= buf[i - 1])
                        FAIL("allocate output not sorted/unique");
                    if (owners2[buf[i]] != CS_OWNER_FREE)
                        FAIL("allocate handed out a CPU that was not free");
                }
                cnt[k] = want;
                changed_ok = 1;
            }
            break;
        }
        case 4: case 5:
            rc = cs_release(st, rr(0, 20) == 0 ? -7 : ids[k]);
            mix(rc);
            if (rc == CS_OK) {
                cnt[k] = 0;
                changed_ok = 1;
            } else if (rc != CS_ENOENT)
                FAIL("release returned %d", rc);
            break;
        case 6: {
            int32_t m = rr(0, 6);
            for (int32_t i = 0; i < m; i++)
                buf[i] = rr(-2, n + 2);
            rc = cs_assign(st, ids[k], rr(0, 1), buf, m);
            mix(rc);
            if (rc == CS_OK) {
                cnt[k] = m;
                changed_ok = 1;
            }
            break;
        }
        case 7: {
            int32_t mm = rr(-1, 3 * n), apply = rr(0, 1), nout = 0;
            int64_t b = 0, a = 0;
            int32_t cap = rr(0, 4) == 0 ? rr(-1, 4) : (int32_t)(sizeof(moves) / sizeof(moves[0]));
            rc = cs_rebalance(st, mm, apply, moves, cap, &nout, &b, &a);
            mix(rc);
            if (rc == CS_OK) {
                mix(nout);
                mix(a);
                if (a > b)
                    FAIL("rebalance made the objective worse");
                if (nout > mm)
                    FAIL("rebalance exceeded max_moves");
                if (!apply)
                    for (int32_t i = 0; i < n; i++) {
                        int64_t o;
                        cs_owners(st, owners, n);
                        o = owners[i];
                        if (o != owners2[i])
                            FAIL("rebalance without apply changed the state");
                    }
                changed_ok = apply;
            }
            break;
        }
        case 8: {
            int32_t nout = 0;
            rc = cs_burst_pool(st, rr(-1, 2), buf, rr(0, 3) == 0 ? rr(0, n) : MAXC, &nout);
            mix(rc);
            mix(nout);
            int32_t cls = 0;
            rc = cs_get(st, ids[k], &cls, buf, MAXC, &nout);
            mix(rc);
            break;
        }
        default:
            mix(cs_cost(st));
            mix(cs_allocate(NULL, 1, 1, 0, buf, 4, NULL));
            mix(cs_release(NULL, 1));
            mix(cs_owners(st, NULL, 0));
            mix(cs_rebalance(NULL, 1, 1, NULL, 0, NULL, NULL, NULL));
            break;
        }
        if (!changed_ok) {
            cs_owners(st, owners, n);
            if (memcmp(owners, owners2, (size_t)n * sizeof(int64_t)) != 0)
                FAIL("failed/read-only call (op %d, rc %d) changed the state", which, rc);
        }
        if (check(st, ids, cnt, NIDS))
            return 1;
    }
    cs_destroy(st);
    return 0;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? strtol(argv[1], NULL, 10) : 2000;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    for (long it = 0; it < iters; it++) {
        digest = 0;
        if (run_iteration(seed + (uint64_t)it)) {
            fprintf(stderr, "iteration %ld (seed %llu) failed\n", it,
                    (unsigned long long)(seed + (uint64_t)it));
            return 1;
        }
        uint64_t d1 = digest;
        digest = 0;
        if (run_iteration(seed + (uint64_t)it))
            return 1;
        if (digest != d1) {
            fprintf(stderr, "iteration %ld: non-deterministic output\n", it);
            return 1;
        }
    }
    printf("ok: %ld iterations\n", iters);
    return 0;
}
