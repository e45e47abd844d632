"""A simulated multi-node Ray cluster for tests: ``python _sim_cluster.py TEMP_DIR``.

Starts ``ray.cluster_utils.Cluster`` with a head node that has no CPUs (as on a real
cluster whose head only runs drivers) and two 1-CPU worker nodes, prints one JSON line
``{"address", "head", "workers": [node ids]}``, and shuts the cluster down when its stdin
closes. Run as its own process, so its Ray never meets the test session's shared one.

Commands on stdin, one per line, each answered by one JSON line: ``remove <node id>``
kills that worker node (its raylet and every worker process on it, as a lost machine
would), ``add`` starts a new 1-CPU worker node.

``Cluster`` records its head's address in ``<Ray's default temp dir>/ray_current_cluster``
(``/tmp/ray`` unless ``RAY_TMPDIR`` says otherwise), whatever ``temp_dir`` its nodes get,
and removes it only in a clean ``shutdown()``. That file is where every Ray call given no
address on the machine goes (tests/ray_lookup.py): a helper killed first (the fixture's
SIGKILL after its grace period) left it naming a dead cluster, and any later
``list_actors()`` given no address, in any test run on the machine, timed out waiting for
that GCS. So Ray's default temp dir here is TEMP_DIR: the file lives and dies with it.
"""

from __future__ import annotations

import json
import os
import sys

from ray.cluster_utils import Cluster

MB = 2**20


def main(temp_dir: str) -> None:
    os.environ["RAY_TMPDIR"] = temp_dir  # read when Cluster writes ray_current_cluster
    os.makedirs(os.path.join(temp_dir, "ray"), exist_ok=True)
    common = {"object_store_memory": 100 * MB, "temp_dir": temp_dir}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **common})
    try:
        workers = [cluster.add_node(num_cpus=1, **common) for _ in range(2)]
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                          "workers": [w.node_id for w in workers]}), flush=True)
        nodes = {w.node_id: w for w in workers}
        for line in sys.stdin:  # until the test closes our stdin
            cmd = line.split()
            if cmd[:1] == ["remove"] and len(cmd) == 2 and cmd[1] in nodes:
                cluster.remove_node(nodes.pop(cmd[1]), allow_graceful=False)
                print(json.dumps({"removed": cmd[1]}), flush=True)
            elif cmd == ["add"]:
                node = cluster.add_node(num_cpus=1, **common)
                nodes[node.node_id] = node
                print(json.dumps({"added": node.node_id}), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
