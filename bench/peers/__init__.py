"""Python re-implementations of peer CPU allocators, written from the descriptions in
``shared/reference/cpu-placement.md`` (no upstream code copied), for bench/placement.py:

- :mod:`bench.peers.kubelet` - kubelet CPU manager static policy (packed takeByTopology,
  optional Topology Manager NUMA hint, optional full-pcpus-only);
- :mod:`bench.peers.titus_isolate` - titus-isolate's greedy allocator and rebalance.
"""
