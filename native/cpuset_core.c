/*
 * cpuset_core.c - NUMA-, L3- and SMT-aware cpuset placement (see cpuset_core.h).
 *
 * Placement of n CPUs (static workloads and the guaranteed minimum of burst workloads)
 * walks the tree root -> socket -> node -> cell (L3 within a node) -> core:
 *   - at each level, if some child has >= need free CPUs, descend into the best such child
 *     ranked by (lower-level span needed inside it, SMT sharing it would force,
 *     overlap with a preferred set (rebalance: the workload's current CPUs),
 *     best fit = fewest free CPUs left over, index);
 *   - otherwise take the largest children wholly until the remainder fits one child, which
 *     yields the minimal number of children (greedy by descending free count), then
 *     place the remainder in the best fitting child;
 *   - inside a cell: take whole free cores (largest first), then a part of the
 *     smallest clean core (no other workload on it), and only then threads of cores
 *     already used by another workload (SMT sharing, only when unavoidable in the cell).
 * All ties are broken by index, so the result is deterministic.
 */
#include "cpuset_core.h"

#include <stdlib.h>
#include <string.h>

#define MAXC CS_MAX_CPUS
#define MAXW CS_MAX_WORKLOADS
#define MAXT CS_MAX_THREADS_PER_CORE
#define NLEV 5 /* 0 root, 1 socket, 2 node, 3 cell, 4 core */

#define OWNER_TAKEN (-4) /* internal: picked by the placement in progress */

#define W_SOCK ((int64_t)1 << 48)
#define W_NODE ((int64_t)1 << 36)
#define W_CELL ((int64_t)1 << 24)

typedef struct {
    int64_t id;
    int32_t ncpu;
    int32_t cls;
    int32_t used;
} wl_t;

typedef struct {
    int32_t f, cl, p;
} agg_t;

struct cs_state {
    int32_t n, ncore, ncell, nnode, nsock, usable, maxthr;
    int8_t online[MAXC];
    int8_t reserved[MAXC];
    int16_t cpu_core[MAXC];
    int16_t core_nthr[MAXC];
    int16_t core_thr[MAXC][MAXT];
    int16_t core_cell[MAXC];
    int16_t cell_node[MAXC];
    int16_t node_sock[MAXC];
    /* children of domain d at level l: kids[l][kstart[l][d] .. kstart[l][d + 1]) */
    int16_t kstart[4][MAXC + 1];
    int16_t kids[4][MAXC];
    /* minimal number of sockets / nodes / cells whose capacity covers k CPUs */
    int32_t ideal[3][MAXC + 1];

    /* allocation state */
    int32_t owner[MAXC];
    wl_t wl[MAXW];
    int32_t nslot; /* high-water mark of used slots */
    int32_t nwork;

    /* scratch (not part of the logical state) */
    agg_t agg[NLEV][MAXC]; /* free / clean-free / preferred-free CPUs per domain */
    int8_t core_clean[MAXC];
    int8_t pref[MAXC];
    int32_t tmp[MAXC];
    int32_t pick[MAXC];
    int32_t npick;
    int32_t old[MAXC];
    int32_t owner_save[MAXC];
    int32_t bstart[MAXW + 1];
    int32_t bfill[MAXW];
    int32_t bucket[MAXC];
    int32_t stamp[3][MAXC];
    int32_t gen;
    int64_t percost[MAXW];
    int64_t percost2[MAXW];
    int8_t tried[MAXW];
};

/* ------------------------------------------------------------------------- */
/* small helpers                                                              */

static int cmp_desc_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x < y) - (x > y);
}

static int cmp_asc_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* insertion sort for the short arrays of the hot path; qsort for long ones */
static void sort_i32(int32_t *v, int32_t m, int desc)
{
    if (m > 24) {
        qsort(v, (size_t)m, sizeof(int32_t), desc ? cmp_desc_i32 : cmp_asc_i32);
        return;
    }
    for (int32_t i = 1; i < m; i++) {
        int32_t x = v[i], j = i - 1;
        while (j >= 0 && (desc ? v[j] < x : v[j] > x)) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

static int32_t find_slot(const cs_state *st, int64_t id)
{
    for (int32_t s = 0; s < st->nslot; s++)
        if (st->wl[s].used && st->wl[s].id == id)
            return s;
    return -1;
}

static int32_t new_slot(cs_state *st)
{
    for (int32_t s = 0; s < MAXW; s++)
        if (!st->wl[s].used)
            return s;
    return -1;
}

static int32_t domain_count(const cs_state *st, int lev)
{
    switch (lev) {
    case 0: return 1;
    case 1: return st->nsock;
    case 2: return st->nnode;
    case 3: return st->ncell;
    default: return st->ncore;
    }
}

/* ------------------------------------------------------------------------- */
/* topology                                                                   */

static int32_t lookup_add(int32_t *keys_a, int32_t *keys_b, int32_t *count, int32_t a,
                          int32_t b)
{
    for (int32_t i = 0; i < *count; i++)
        if (keys_a[i] == a && keys_b[i] == b)
            return i;
    keys_a[*count] = a;
    keys_b[*count] = b;
    return (*count)++;
}

/* children lists of level `lev` from parent[] of the domains one level below */
static void build_kids(cs_state *st, int lev, const int16_t *parent, int32_t nchild,
                       int32_t nparent)
{
    int32_t cnt[MAXC + 1];
    memset(cnt, 0, sizeof(cnt));
    for (int32_t c = 0; c < nchild; c++)
        cnt[parent[c] + 1]++;
    for (int32_t p = 0; p < nparent; p++)
        cnt[p + 1] += cnt[p];
    for (int32_t p = 0; p <= nparent; p++)
        st->kstart[lev][p] = (int16_t)cnt[p];
    for (int32_t c = 0; c < nchild; c++)
        st->kids[lev][cnt[parent[c]]++] = (int16_t)c;
}

static void build_ideal(cs_state *st, int idx, const int32_t *cap, int32_t k)
{
    int32_t v[MAXC];
    memcpy(v, cap, (size_t)k * sizeof(int32_t));
    qsort(v, (size_t)k, sizeof(int32_t), cmp_desc_i32);
    for (int32_t i = 0; i <= MAXC; i++)
        st->ideal[idx][i] = MAXC + 1;
    st->ideal[idx][0] = 0;
    int32_t sum = 0;
    for (int32_t m = 0; m < k; m++) {
        int32_t lo = sum + 1;
        sum += v[m];
        for (int32_t x = lo; x <= sum && x <= MAXC; x++)
            st->ideal[idx][x] = m + 1;
    }
}

static int build(cs_state *st, const cs_cpu_desc *cpus, int32_t ncpus)
{
    int32_t sock_a[MAXC], sock_b[MAXC], node_a[MAXC], node_b[MAXC], cell_a[MAXC],
        cell_b[MAXC], core_a[MAXC], core_b[MAXC];
    int32_t nsock = 0, nnode = 0, ncell = 0, ncore = 0, nonline = 0;

    st->n = ncpus;
    for (int32_t i = 0; i < ncpus; i++) {
        const cs_cpu_desc *c = &cpus[i];
        st->online[i] = c->online != 0;
        st->reserved[i] = c->online != 0 && c->reserved != 0;
        st->cpu_core[i] = -1;
        if (!st->online[i]) {
            st->owner[i] = CS_OWNER_OFFLINE;
            continue;
        }
        if (c->socket < 0 || c->node < 0 || c->l3 < 0 || c->core < 0)
            return CS_ETOPO;
        nonline++;
        int32_t s = lookup_add(sock_a, sock_b, &nsock, c->socket, 0);
        int32_t nd = lookup_add(node_a, node_b, &nnode, s, c->node);
        int32_t ce = lookup_add(cell_a, cell_b, &ncell, nd, c->l3);
        int32_t before = ncore;
        int32_t co = lookup_add(core_a, core_b, &ncore, c->core, 0);
        if (co == before) {
            st->core_cell[co] = (int16_t)ce;
            st->core_nthr[co] = 0;
        } else if (st->core_cell[co] != ce) {
            return CS_ETOPO; /* threads of one core in different L3/node/socket */
        }
        if (st->core_nthr[co] >= MAXT)
            return CS_ETOPO;
        st->core_thr[co][st->core_nthr[co]++] = (int16_t)i;
        if (st->core_nthr[co] > st->maxthr)
            st->maxthr = st->core_nthr[co];
        st->cpu_core[i] = (int16_t)co;
        st->node_sock[nd] = (int16_t)s;
        st->cell_node[ce] = (int16_t)nd;
        st->owner[i] = st->reserved[i] ? CS_OWNER_RESERVED : CS_OWNER_FREE;
        if (!st->reserved[i])
            st->usable++;
    }
    if (nonline == 0)
        return CS_ETOPO;
    st->nsock = nsock;
    st->nnode = nnode;
    st->ncell = ncell;
    st->ncore = ncore;

    int16_t root_parent[MAXC];
    for (int32_t s = 0; s < nsock; s++)
        root_parent[s] = 0;
    build_kids(st, 0, root_parent, nsock, 1);
    build_kids(st, 1, st->node_sock, nnode, nsock);
    build_kids(st, 2, st->cell_node, ncell, nnode);
    build_kids(st, 3, st->core_cell, ncore, ncell);

    int32_t capc[MAXC], capn[MAXC], caps[MAXC];
    memset(capc, 0, sizeof(capc));
    memset(capn, 0, sizeof(capn));
    memset(caps, 0, sizeof(caps));
    for (int32_t i = 0; i < ncpus; i++) {
        if (!st->online[i] || st->reserved[i])
            continue;
        int32_t ce = st->core_cell[st->cpu_core[i]];
        int32_t nd = st->cell_node[ce];
        capc[ce]++;
        capn[nd]++;
        caps[st->node_sock[nd]]++;
    }
    build_ideal(st, 0, caps, nsock);
    build_ideal(st, 1, capn, nnode);
    build_ideal(st, 2, capc, ncell);
    return CS_OK;
}

int cs_init(cs_state **out, const cs_cpu_desc *cpus, int32_t ncpus)
{
    if (out == NULL || cpus == NULL || ncpus < 1 || ncpus > MAXC)
        return CS_EINVAL;
    /* malloc + memset rather than calloc: touch every page now, so the first
     * placements do not pay the page faults (they showed up as the p99 latency) */
    cs_state *st = malloc(sizeof(*st));
    if (st == NULL)
        return CS_ENOMEM;
    memset(st, 0, sizeof(*st));
    int rc = build(st, cpus, ncpus);
    if (rc != CS_OK) {
        free(st);
        return rc;
    }
    *out = st;
    return CS_OK;
}

void cs_destroy(cs_state *st)
{
    free(st);
}

/* ------------------------------------------------------------------------- */
/* placement                                                                  */

static void compute_scratch(cs_state *st)
{
    /* per core, then bottom-up per level: no interleaved stores into the level arrays
     * (they are 4 KiB apart, and interleaving them costs 4K-aliasing stalls) */
    for (int32_t c = 0; c < st->ncore; c++) {
        int32_t f = 0, p = 0, dirty = 0;
        for (int32_t t = 0; t < st->core_nthr[c]; t++) {
            int32_t cpu = st->core_thr[c][t];
            int32_t o = st->owner[cpu];
            if (o == CS_OWNER_FREE) {
                f++;
                p += st->pref[cpu];
            } else if (o >= 0 || o == CS_OWNER_RESERVED) {
                dirty = 1;
            }
        }
        st->core_clean[c] = (int8_t)!dirty;
        st->agg[4][c].f = f;
        st->agg[4][c].cl = dirty ? 0 : f;
        st->agg[4][c].p = p;
    }
    for (int lev = 3; lev >= 0; lev--) {
        int32_t nd = domain_count(st, lev);
        for (int32_t d = 0; d < nd; d++) {
            int32_t f = 0, cl = 0, p = 0;
            for (int32_t i = st->kstart[lev][d]; i < st->kstart[lev][d + 1]; i++) {
                int32_t k = st->kids[lev][i];
                f += st->agg[lev + 1][k].f;
                cl += st->agg[lev + 1][k].cl;
                p += st->agg[lev + 1][k].p;
            }
            st->agg[lev][d].f = f;
            st->agg[lev][d].cl = cl;
            st->agg[lev][d].p = p;
        }
    }
}

/* minimal number of domains (free counts in st->tmp[0..m)) to cover need */
static int32_t needed_count(cs_state *st, int32_t m, int32_t need)
{
    sort_i32(st->tmp, m, 1);
    int32_t sum = 0;
    for (int32_t i = 0; i < m; i++) {
        sum += st->tmp[i];
        if (sum >= need)
            return i + 1;
    }
    return m + 1;
}

/* span cost (lower-level domains needed) of placing `need` inside domain d of level lev */
static void span_cost(cs_state *st, int lev, int32_t d, int32_t need, int32_t *k0, int32_t *k1)
{
    *k0 = 0;
    *k1 = 0;
    if (lev == 1) {
        int32_t m = 0;
        for (int32_t i = st->kstart[1][d]; i < st->kstart[1][d + 1]; i++) {
            int32_t f = st->agg[2][st->kids[1][i]].f;
            if (f > 0)
                st->tmp[m++] = f;
        }
        *k0 = needed_count(st, m, need);
        m = 0;
        for (int32_t i = st->kstart[1][d]; i < st->kstart[1][d + 1]; i++) {
            int32_t nd = st->kids[1][i];
            for (int32_t j = st->kstart[2][nd]; j < st->kstart[2][nd + 1]; j++) {
                int32_t f = st->agg[3][st->kids[2][j]].f;
                if (f > 0)
                    st->tmp[m++] = f;
            }
        }
        *k1 = needed_count(st, m, need);
    } else if (lev == 2) {
        int32_t m = 0;
        for (int32_t j = st->kstart[2][d]; j < st->kstart[2][d + 1]; j++) {
            int32_t f = st->agg[3][st->kids[2][j]].f;
            if (f > 0)
                st->tmp[m++] = f;
        }
        *k1 = needed_count(st, m, need);
    }
}

typedef struct {
    int32_t k[6];
} rank_t;

static int rank_less(const rank_t *a, const rank_t *b)
{
    for (int i = 0; i < 6; i++) {
        if (a->k[i] != b->k[i])
            return a->k[i] < b->k[i];
    }
    return 0;
}

static void take_threads(cs_state *st, int32_t core, int32_t k)
{
    int32_t took = 0;
    for (int pass = 0; pass < 2 && took < k; pass++) {
        for (int32_t t = 0; t < st->core_nthr[core] && took < k; t++) {
            int32_t cpu = st->core_thr[core][t];
            if (st->owner[cpu] != CS_OWNER_FREE)
                continue;
            if ((pass == 0) != (st->pref[cpu] != 0))
                continue;
            st->owner[cpu] = OWNER_TAKEN;
            st->pick[st->npick++] = cpu;
            took++;
        }
    }
    st->agg[4][core].f -= took;
}

static void place_leaf(cs_state *st, int32_t cell, int32_t need)
{
    int32_t lo = st->kstart[3][cell], hi = st->kstart[3][cell + 1];
    /* 1. whole clean cores, largest first, preferred first */
    for (int32_t fv = st->maxthr; fv >= 1 && need > 0; fv--) {
        if (fv > need)
            continue;
        for (int pass = 0; pass < 2 && need > 0; pass++) {
            for (int32_t i = lo; i < hi && need > 0; i++) {
                int32_t c = st->kids[3][i];
                int32_t f = st->agg[4][c].f;
                if (!st->core_clean[c] || f != fv || f > need)
                    continue;
                if ((pass == 0) != (st->agg[4][c].p > 0))
                    continue;
                take_threads(st, c, f);
                need -= f;
            }
        }
    }
    if (need <= 0)
        return;
    /* 2. part of the smallest clean core (all remaining clean cores have f > need) */
    int32_t best = -1;
    rank_t br = {{0}};
    for (int32_t i = lo; i < hi; i++) {
        int32_t c = st->kids[3][i];
        int32_t f = st->agg[4][c].f;
        if (!st->core_clean[c] || f <= 0)
            continue;
        rank_t r = {{f, -st->agg[4][c].p, i, 0, 0, 0}};
        if (best < 0 || rank_less(&r, &br)) {
            best = c;
            br = r;
        }
    }
    if (best >= 0) {
        take_threads(st, best, need);
        return;
    }
    /* 3. cores shared with another workload: most free first */
    while (need > 0) {
        best = -1;
        for (int32_t i = lo; i < hi; i++) {
            int32_t c = st->kids[3][i];
            int32_t f = st->agg[4][c].f;
            if (f <= 0)
                continue;
            rank_t r = {{-f, -st->agg[4][c].p, i, 0, 0, 0}};
            if (best < 0 || rank_less(&r, &br)) {
                best = c;
                br = r;
            }
        }
        if (best < 0)
            return; /* cannot happen: caller guarantees free >= need */
        int32_t f = st->agg[4][best].f;
        int32_t k = f < need ? f : need;
        take_threads(st, best, k);
        need -= k;
    }
}

static void place_in(cs_state *st, int clev, const int16_t *cand, int32_t nc, int32_t need);

/* place `need` CPUs inside domain d of level lev (its children are the candidates) */
static void place(cs_state *st, int lev, int32_t d, int32_t need)
{
    if (need <= 0)
        return;
    if (lev == 3) {
        place_leaf(st, d, need);
        return;
    }
    int32_t lo = st->kstart[lev][d], hi = st->kstart[lev][d + 1];
    place_in(st, lev + 1, &st->kids[lev][lo], hi - lo, need);
}

/* place `need` CPUs among the candidate domains cand[0..nc) of level clev (1..3) */
static void place_in(cs_state *st, int clev, const int16_t *cand, int32_t nc, int32_t need)
{
    while (need > 0) {
        int32_t best = -1;
        rank_t br = {{0}};
        for (int32_t i = 0; i < nc; i++) {
            int32_t c = cand[i];
            int32_t f = st->agg[clev][c].f;
            if (f < need)
                continue;
            int32_t k0, k1;
            span_cost(st, clev, c, need, &k0, &k1);
            int32_t share = need - st->agg[clev][c].cl;
            int32_t pr = st->agg[clev][c].p;
            rank_t r = {{k0, k1, share > 0 ? share : 0, -(pr < need ? pr : need), f - need, i}};
            if (best < 0 || rank_less(&r, &br)) {
                best = c;
                br = r;
            }
        }
        if (best >= 0 && clev == 1 && br.k[0] > 1) {
            /* One socket holds the request only across more NUMA nodes than the fewest
             * nodes that could hold it anywhere: NUMA span outranks staying in the socket
             * (remote memory is per node), so decide at node level across all sockets. */
            int16_t sub[MAXC];
            int32_t ns = 0, k = 0;
            for (int32_t i = 0; i < nc; i++) {
                int32_t c = cand[i];
                for (int32_t j = st->kstart[1][c]; j < st->kstart[1][c + 1]; j++) {
                    int32_t nd = st->kids[1][j];
                    sub[ns++] = (int16_t)nd;
                    if (st->agg[2][nd].f > 0)
                        st->tmp[k++] = st->agg[2][nd].f;
                }
            }
            if (needed_count(st, k, need) < br.k[0]) {
                place_in(st, 2, sub, ns, need);
                return;
            }
        }
        if (best >= 0) {
            place(st, clev, best, need);
            st->agg[clev][best].f -= need;
            return;
        }
        if (clev < 3) {
            /* No single candidate fits. If every candidate with free CPUs must be used
             * anyway (the minimal count is all of them), this level's span is fixed:
             * decide one level down across all of them, which minimises the span there
             * (e.g. NUMA nodes across both sockets instead of a whole socket). */
            int32_t m = 0, k = 0;
            for (int32_t i = 0; i < nc; i++) {
                int32_t f = st->agg[clev][cand[i]].f;
                if (f > 0)
                    st->tmp[k++] = f;
            }
            m = needed_count(st, k, need);
            if (m >= k) {
                int16_t sub[MAXC];
                int32_t ns = 0;
                for (int32_t i = 0; i < nc; i++) {
                    int32_t c = cand[i];
                    if (st->agg[clev][c].f <= 0)
                        continue;
                    for (int32_t j = st->kstart[clev][c]; j < st->kstart[clev][c + 1]; j++)
                        sub[ns++] = st->kids[clev][j];
                }
                place_in(st, clev + 1, sub, ns, need);
                return;
            }
        }
        /* take the largest candidate wholly */
        for (int32_t i = 0; i < nc; i++) {
            int32_t c = cand[i];
            int32_t f = st->agg[clev][c].f;
            if (f <= 0)
                continue;
            rank_t r = {{-f, -st->agg[clev][c].cl, -st->agg[clev][c].p, i, 0, 0}};
            if (best < 0 || rank_less(&r, &br)) {
                best = c;
                br = r;
            }
        }
        if (best < 0)
            return; /* cannot happen: caller guarantees free >= need */
        int32_t f = st->agg[clev][best].f;
        place(st, clev, best, f);
        st->agg[clev][best].f = 0;
        st->agg[clev][best].cl = 0;
        need -= f;
    }
}

/* Runs a placement of n CPUs into st->pick (owner set to OWNER_TAKEN). Needs free >= n. */
static void run_place(cs_state *st, int32_t n)
{
    st->npick = 0;
    compute_scratch(st);
    place(st, 0, 0, n);
    sort_i32(st->pick, st->npick, 0);
}

static int32_t count_free(const cs_state *st)
{
    int32_t f = 0;
    for (int32_t i = 0; i < st->n; i++)
        f += st->owner[i] == CS_OWNER_FREE;
    return f;
}

int cs_allocate(cs_state *st, int64_t id, int32_t ncpus, int32_t cls, int32_t *out,
                int32_t cap, int32_t *nout)
{
    if (st == NULL || nout == NULL || id < 0 || (cls != CS_STATIC && cls != CS_BURST) ||
        ncpus <= 0)
        return CS_EINVAL;
    if (ncpus > st->usable)
        return CS_ETOOBIG;
    if (out == NULL || cap < ncpus)
        return CS_EBUFSZ;
    if (find_slot(st, id) >= 0)
        return CS_EEXIST;
    int32_t slot = new_slot(st);
    if (slot < 0)
        return CS_ECAP;
    st->npick = 0;
    compute_scratch(st);
    if (st->agg[0][0].f < ncpus)
        return CS_ENOSPACE;
    place(st, 0, 0, ncpus);
    sort_i32(st->pick, st->npick, 0);
    if (st->npick != ncpus) { /* defensive: undo, never reached */
        for (int32_t i = 0; i < st->npick; i++)
            st->owner[st->pick[i]] = CS_OWNER_FREE;
        return CS_ENOSPACE;
    }
    for (int32_t i = 0; i < st->npick; i++) {
        st->owner[st->pick[i]] = slot;
        out[i] = st->pick[i];
    }
    st->wl[slot].id = id;
    st->wl[slot].ncpu = ncpus;
    st->wl[slot].cls = cls;
    st->wl[slot].used = 1;
    if (slot >= st->nslot)
        st->nslot = slot + 1;
    st->nwork++;
    *nout = ncpus;
    return CS_OK;
}

int cs_assign(cs_state *st, int64_t id, int32_t cls, const int32_t *cpus, int32_t n)
{
    if (st == NULL || cpus == NULL || id < 0 || (cls != CS_STATIC && cls != CS_BURST) || n <= 0)
        return CS_EINVAL;
    if (n > st->usable)
        return CS_ETOOBIG;
    for (int32_t i = 0; i < n; i++) {
        int32_t c = cpus[i];
        if (c < 0 || c >= st->n || !st->online[c] || st->reserved[c])
            return CS_EINVAL;
        for (int32_t j = 0; j < i; j++)
            if (cpus[j] == c)
                return CS_EINVAL;
    }
    if (find_slot(st, id) >= 0)
        return CS_EEXIST;
    for (int32_t i = 0; i < n; i++)
        if (st->owner[cpus[i]] != CS_OWNER_FREE)
            return CS_EBUSY;
    int32_t slot = new_slot(st);
    if (slot < 0)
        return CS_ECAP;
    for (int32_t i = 0; i < n; i++)
        st->owner[cpus[i]] = slot;
    st->wl[slot].id = id;
    st->wl[slot].ncpu = n;
    st->wl[slot].cls = cls;
    st->wl[slot].used = 1;
    if (slot >= st->nslot)
        st->nslot = slot + 1;
    st->nwork++;
    return CS_OK;
}

int cs_release(cs_state *st, int64_t id)
{
    if (st == NULL)
        return CS_EINVAL;
    int32_t slot = find_slot(st, id);
    if (slot < 0)
        return CS_ENOENT;
    for (int32_t i = 0; i < st->n; i++)
        if (st->owner[i] == slot)
            st->owner[i] = CS_OWNER_FREE;
    st->wl[slot].used = 0;
    st->nwork--;
    while (st->nslot > 0 && !st->wl[st->nslot - 1].used)
        st->nslot--;
    return CS_OK;
}

int cs_get(const cs_state *st, int64_t id, int32_t *cls, int32_t *out, int32_t cap,
           int32_t *nout)
{
    if (st == NULL || nout == NULL)
        return CS_EINVAL;
    int32_t slot = find_slot(st, id);
    if (slot < 0)
        return CS_ENOENT;
    if (out == NULL || cap < st->wl[slot].ncpu)
        return CS_EBUFSZ;
    int32_t k = 0;
    for (int32_t i = 0; i < st->n && k < cap; i++)
        if (st->owner[i] == slot)
            out[k++] = i;
    if (cls != NULL)
        *cls = st->wl[slot].cls;
    *nout = k;
    return CS_OK;
}

int cs_burst_pool(const cs_state *st, int32_t flags, int32_t *out, int32_t cap, int32_t *nout)
{
    if (st == NULL || nout == NULL || (flags != CS_POOL_ALL_IDLE &&
                                       flags != CS_POOL_AVOID_STATIC_SIBLINGS))
        return CS_EINVAL;
    int32_t k = 0;
    for (int32_t i = 0; i < st->n; i++) {
        if (st->owner[i] != CS_OWNER_FREE)
            continue;
        if (flags == CS_POOL_AVOID_STATIC_SIBLINGS) {
            int32_t c = st->cpu_core[i], skip = 0;
            for (int32_t t = 0; t < st->core_nthr[c]; t++) {
                int32_t o = st->owner[st->core_thr[c][t]];
                if (o >= 0 && st->wl[o].cls == CS_STATIC)
                    skip = 1;
            }
            if (skip)
                continue;
        }
        if (out == NULL || k >= cap)
            return CS_EBUFSZ;
        out[k++] = i;
    }
    *nout = k;
    return CS_OK;
}

int cs_owners(const cs_state *st, int64_t *out, int32_t cap)
{
    if (st == NULL || out == NULL)
        return CS_EINVAL;
    if (cap < st->n)
        return CS_EBUFSZ;
    for (int32_t i = 0; i < st->n; i++) {
        int32_t o = st->owner[i];
        out[i] = o >= 0 ? st->wl[o].id : (int64_t)o;
    }
    return CS_OK;
}

/* ------------------------------------------------------------------------- */
/* objective and rebalancing                                                  */

static int64_t total_cost(cs_state *st, int64_t *per)
{
    int32_t ns = st->nslot;
    memset(st->bstart, 0, (size_t)(ns + 1) * sizeof(int32_t));
    for (int32_t i = 0; i < st->n; i++)
        if (st->owner[i] >= 0)
            st->bstart[st->owner[i] + 1]++;
    for (int32_t s = 0; s < ns; s++)
        st->bstart[s + 1] += st->bstart[s];
    memcpy(st->bfill, st->bstart, (size_t)ns * sizeof(int32_t));
    for (int32_t i = 0; i < st->n; i++)
        if (st->owner[i] >= 0)
            st->bucket[st->bfill[st->owner[i]]++] = i;

    int64_t total = 0;
    for (int32_t s = 0; s < ns; s++) {
        per[s] = 0;
        int32_t lo = st->bstart[s], hi = st->bstart[s + 1];
        if (!st->wl[s].used || hi <= lo)
            continue;
        if (st->gen >= 2000000000) {
            memset(st->stamp, 0, sizeof(st->stamp));
            st->gen = 0;
        }
        int32_t g = ++st->gen;
        int32_t ss = 0, nn = 0, cc = 0, shared = 0;
        for (int32_t j = lo; j < hi; j++) {
            int32_t cpu = st->bucket[j];
            int32_t co = st->cpu_core[cpu];
            int32_t ce = st->core_cell[co];
            int32_t nd = st->cell_node[ce];
            int32_t so = st->node_sock[nd];
            if (st->stamp[0][so] != g) { st->stamp[0][so] = g; ss++; }
            if (st->stamp[1][nd] != g) { st->stamp[1][nd] = g; nn++; }
            if (st->stamp[2][ce] != g) { st->stamp[2][ce] = g; cc++; }
            for (int32_t t = 0; t < st->core_nthr[co]; t++) {
                int32_t o = st->owner[st->core_thr[co][t]];
                if (o >= 0 && o != s) {
                    shared++;
                    break;
                }
            }
        }
        int32_t k = hi - lo;
        int64_t ds = ss - st->ideal[0][k], dn = nn - st->ideal[1][k], dc = cc - st->ideal[2][k];
        per[s] = W_SOCK * (ds > 0 ? ds : 0) + W_NODE * (dn > 0 ? dn : 0) +
                 W_CELL * (dc > 0 ? dc : 0) + shared;
        total += per[s];
    }
    return total;
}

int64_t cs_cost(cs_state *st)
{
    if (st == NULL)
        return CS_EINVAL;
    return total_cost(st, st->percost);
}

int cs_rebalance(cs_state *st, int32_t max_moves, int32_t apply, cs_move *out, int32_t cap,
                 int32_t *nout, int64_t *cost_before, int64_t *cost_after)
{
    if (st == NULL || nout == NULL || max_moves < 0 || cap < 0 || (cap > 0 && out == NULL))
        return CS_EINVAL;
    int32_t budget = max_moves < cap ? max_moves : cap;
    int32_t nmoves = 0;
    memcpy(st->owner_save, st->owner, (size_t)st->n * sizeof(int32_t));
    memset(st->pref, 0, (size_t)st->n);
    int64_t before = total_cost(st, st->percost);
    int64_t cur = before;
    memset(st->tried, 0, sizeof(st->tried));
    int32_t trials = 0, max_trials = 4 * st->nwork + 16;

    while (budget > 0 && trials < max_trials) {
        int32_t w = -1;
        for (int32_t s = 0; s < st->nslot; s++) {
            if (!st->wl[s].used || st->tried[s] || st->percost[s] <= 0)
                continue;
            if (w < 0 || st->percost[s] > st->percost[w] ||
                (st->percost[s] == st->percost[w] && st->wl[s].id < st->wl[w].id))
                w = s;
        }
        if (w < 0)
            break;
        st->tried[w] = 1;
        trials++;

        int32_t nold = 0;
        for (int32_t i = 0; i < st->n; i++) {
            if (st->owner[i] == w) {
                st->old[nold++] = i;
                st->pref[i] = 1;
                st->owner[i] = CS_OWNER_FREE;
            }
        }
        run_place(st, nold);
        int32_t moved = 0;
        for (int32_t i = 0; i < st->npick; i++) {
            st->owner[st->pick[i]] = w;
            moved += !st->pref[st->pick[i]];
        }
        for (int32_t i = 0; i < nold; i++)
            st->pref[st->old[i]] = 0;
        int accept = 0;
        int64_t nc = cur;
        if (moved > 0 && moved <= budget && st->npick == nold) {
            nc = total_cost(st, st->percost2);
            accept = nc < cur;
        }
        if (!accept) {
            for (int32_t i = 0; i < st->npick; i++)
                st->owner[st->pick[i]] = CS_OWNER_FREE;
            for (int32_t i = 0; i < nold; i++)
                st->owner[st->old[i]] = w;
            continue;
        }
        /* record moves: removed CPUs (ascending) paired with added CPUs (ascending) */
        int32_t ri = 0, ai = 0;
        while (1) {
            while (ri < nold && st->owner[st->old[ri]] == w)
                ri++;
            while (ai < st->npick) {
                int32_t c = st->pick[ai], was = 0;
                for (int32_t j = 0; j < nold; j++)
                    if (st->old[j] == c) { was = 1; break; }
                if (!was)
                    break;
                ai++;
            }
            if (ri >= nold || ai >= st->npick)
                break;
            out[nmoves].workload = st->wl[w].id;
            out[nmoves].from_cpu = st->old[ri];
            out[nmoves].to_cpu = st->pick[ai];
            nmoves++;
            ri++;
            ai++;
        }
        budget -= moved;
        cur = nc;
        memcpy(st->percost, st->percost2, (size_t)st->nslot * sizeof(int64_t));
        memset(st->tried, 0, sizeof(st->tried));
    }
    if (!apply)
        memcpy(st->owner, st->owner_save, (size_t)st->n * sizeof(int32_t));
    *nout = nmoves;
    if (cost_before != NULL)
        *cost_before = before;
    if (cost_after != NULL)
        *cost_after = cur;
    return CS_OK;
}

/* ------------------------------------------------------------------------- */
/* accessors                                                                  */

int32_t cs_num_cpus(const cs_state *st) { return st == NULL ? CS_EINVAL : st->n; }
int32_t cs_num_workloads(const cs_state *st) { return st == NULL ? CS_EINVAL : st->nwork; }
int32_t cs_free_cpus(const cs_state *st) { return st == NULL ? CS_EINVAL : count_free(st); }
int32_t cs_usable_cpus(const cs_state *st) { return st == NULL ? CS_EINVAL : st->usable; }

const char *cs_strerror(int32_t code)
{
    switch (code) {
    case CS_OK: return "ok";
    case CS_EINVAL: return "invalid argument";
    case CS_ETOOBIG: return "request larger than the host's usable CPUs";
    case CS_ENOSPACE: return "not enough free CPUs";
    case CS_EEXIST: return "workload already placed";
    case CS_ENOENT: return "unknown workload";
    case CS_ECAP: return "too many workloads";
    case CS_ETOPO: return "invalid topology";
    case CS_ENOMEM: return "out of memory";
    case CS_EBUFSZ: return "output buffer too small";
    case CS_EBUSY: return "CPU already held";
    default: return "unknown error";
    }
}
