/*
 * cpuset_core.h - NUMA-, L3- and SMT-aware cpuset placement core (C11, libc only).
 *
 * Model: hardware threads (CPUs) -> physical core -> L3 group -> NUMA node -> socket.
 * Internally the hierarchy is the tree root -> socket -> (socket,node) -> (socket,node,l3)
 * "cell" -> core -> thread, so it is always a proper tree even when a vendor's L3 spans
 * several NUMA nodes (Intel SNC) or a NUMA node holds several L3 groups (AMD NPS1/NPS4).
 *
 * Every function returns CS_OK (0) or a negative CS_E* code; no function aborts, and a
 * failed call leaves the allocator state unchanged. Fixed caps: CS_MAX_CPUS CPU ids,
 * CS_MAX_WORKLOADS live workloads, CS_MAX_THREADS_PER_CORE threads per core.
 * The core is deterministic: the same sequence of calls yields the same results.
 * It is not thread-safe: callers serialise access to one cs_state.
 */
#ifndef TITUS_CPUSET_CORE_H
#define TITUS_CPUSET_CORE_H

#include <stdint.h>

#define CS_MAX_CPUS 1024
#define CS_MAX_WORKLOADS 4096
#define CS_MAX_THREADS_PER_CORE 16

/* Error codes (all negative). */
#define CS_OK 0
#define CS_EINVAL (-1)   /* bad argument (n <= 0, bad class, bad CPU id, NULL pointer) */
#define CS_ETOOBIG (-2)  /* request larger than the host's usable CPUs */
#define CS_ENOSPACE (-3) /* not enough free CPUs right now */
#define CS_EEXIST (-4)   /* workload id already placed */
#define CS_ENOENT (-5)   /* unknown workload id */
#define CS_ECAP (-6)     /* CS_MAX_WORKLOADS live workloads reached */
#define CS_ETOPO (-7)    /* invalid or contradictory topology description */
#define CS_ENOMEM (-8)   /* allocation of the state failed */
#define CS_EBUFSZ (-9)   /* output buffer too small */
#define CS_EBUSY (-10)   /* a CPU given to cs_assign is already held */

/* Workload classes. */
#define CS_STATIC 0
#define CS_BURST 1

/* Owner codes returned by cs_owners for CPUs not held by a workload. */
#define CS_OWNER_FREE (-1)
#define CS_OWNER_RESERVED (-2)
#define CS_OWNER_OFFLINE (-3)

/* Flags for cs_burst_pool. */
#define CS_POOL_ALL_IDLE 0
#define CS_POOL_AVOID_STATIC_SIBLINGS 1

/* One entry per CPU id 0..ncpus-1. Offline CPUs: online = 0, other fields ignored.
 * socket/node/l3/core are arbitrary non-negative ids; `core` must be unique host-wide
 * (e.g. the lowest CPU id among the core's threads). */
typedef struct {
    int32_t online;
    int32_t reserved;
    int32_t socket;
    int32_t node;
    int32_t l3;
    int32_t core;
} cs_cpu_desc;

/* One CPU moved by a rebalance: workload gives up from_cpu and receives to_cpu. */
typedef struct {
    int64_t workload;
    int32_t from_cpu;
    int32_t to_cpu;
} cs_move;

typedef struct cs_state cs_state;

/* Build a topology and an empty allocator. *out is set only on success. */
int cs_init(cs_state **out, const cs_cpu_desc *cpus, int32_t ncpus);
void cs_destroy(cs_state *st);

/* Place a new workload. For CS_BURST, ncpus is the guaranteed minimum; the effective
 * cpuset of a burst workload is its minimum plus cs_burst_pool(). On success writes the
 * sorted CPU list to out[0..*nout). cap must be >= ncpus. */
int cs_allocate(cs_state *st, int64_t id, int32_t ncpus, int32_t cls, int32_t *out,
                int32_t cap, int32_t *nout);

/* Record an exact placement (checkpoint restore, drift correction). */
int cs_assign(cs_state *st, int64_t id, int32_t cls, const int32_t *cpus, int32_t n);

int cs_release(cs_state *st, int64_t id);

/* The CPUs held by a workload (its minimum for burst). */
int cs_get(const cs_state *st, int64_t id, int32_t *cls, int32_t *out, int32_t cap,
           int32_t *nout);

/* Idle CPUs that burst workloads may use on top of their minimum. */
int cs_burst_pool(const cs_state *st, int32_t flags, int32_t *out, int32_t cap, int32_t *nout);

/* Propose (apply = 0) or perform (apply = 1) a better layout moving at most max_moves
 * CPUs (and at most cap entries). A workload is moved only if the weighted objective
 * (socket excess > NUMA excess > L3 excess > SMT sharing) strictly improves.
 * cost_before/cost_after may be NULL. */
int cs_rebalance(cs_state *st, int32_t max_moves, int32_t apply, cs_move *out, int32_t cap,
                 int32_t *nout, int64_t *cost_before, int64_t *cost_after);

/* Per-CPU owner: workload id, or CS_OWNER_FREE / _RESERVED / _OFFLINE. cap >= ncpus. */
int cs_owners(const cs_state *st, int64_t *out, int32_t cap);

/* Current value of the rebalance objective (lower is better), or a negative error. */
int64_t cs_cost(cs_state *st);

int32_t cs_num_cpus(const cs_state *st);
int32_t cs_num_workloads(const cs_state *st);
int32_t cs_free_cpus(const cs_state *st);
int32_t cs_usable_cpus(const cs_state *st);
const char *cs_strerror(int32_t code);

#endif
