# -*- test-case-name: tests.test_cluster_sequencer -*-
"""
Many hub processes as one hub: what a node needs to share one history, one presence and one set
of limits with the others through a shared store.

  - L{sequencer.Sequencer}: events from every source, handed on in seq order, gaps named.
  - L{broker.ClusterBroker}: the broker of a node on the shared Redis log.
"""
