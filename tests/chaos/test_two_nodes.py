"""More than one node: ``infer`` on a 3-node Ray cluster simulated on this machine
(``ray.cluster_utils.Cluster``: a 0-CPU head (GCS + driver only) and two 2-CPU workers, each with its own raylet and
object store, all on 127.0.0.1), inputs and outputs on the S3 test server. Mid-run, the worker node
that hosts the model actor is removed (its raylet and every process on it die, as when a machine is
lost); Ray Data restarts the actor and re-runs the lost tasks on the surviving nodes, and the job
completes with every (video, expression, frame) row exactly once, equal to a run without the loss.
Nothing may rely on the driver's local disk or a worker's cwd: all data goes through ``s3://``.

``train`` on several nodes is the training helper's (tests/pipelines/test_training_ray.py).
"""
from __future__ import annotations

import os
import pathlib
import threading
import time

import psutil
import pytest

from pipelines.inference.config import ComputeConfig, DatasetConfig, InferenceConfig
from pipelines.inference.run import run_inference
from pipelines.io.writers import list_parts
from tests.chaos.figures import FIGURES
from tests.chaos.test_jobs_under_faults import assert_same_rows, canonical
from tests.ray_cluster import cluster_node_ports, free_port
from vrshq.data import write_synthetic_revos

pytestmark = pytest.mark.slow

REPO = str(pathlib.Path(__file__).resolve().parents[2])
DATA = dict(num_videos=6, num_frames=4, height=32, width=48, seed=21, split="valid")
SMALL = ComputeConfig(num_actors=1, num_cpus_per_actor=1.0, read_num_cpus=0.25, writer_num_cpus=0.25, videos_per_file=1)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        # Cluster advertises itself in the machine-wide /tmp/ray/ray_current_cluster (and deletes that file at
        # shutdown), where any `ray.init()` of another process would join it or lose the cluster it had joined.
        patch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
        patch.setattr(ray._common.utils, "reset_ray_address", lambda *args, **kwargs: None)
        # Every node on free ports: Ray's defaults (dashboard 8265, ...) may belong to a cluster already running.
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "object_store_memory": 150 * 2**20,
            "gcs_server_port": free_port(), **cluster_node_ports()})
        workers = [cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20, **cluster_node_ports())
                   for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        try:
            yield cluster, workers
        finally:
            ray.shutdown()
            cluster.shutdown()


def _node_of_model_actor(workers) -> object | None:
    for node in workers:
        raylet = node.all_processes["raylet"][0].process
        for proc in psutil.Process(raylet.pid).children(recursive=True):
            try:
                if "SegmentActor" in " ".join(proc.cmdline()):
                    return node
            except psutil.Error:
                continue
    return None


def test_infer_survives_losing_a_node(cluster, s3_server):
    cluster, workers = cluster
    bucket = s3_server.make_bucket()
    root = f"{bucket}/ReVOS"
    write_synthetic_revos(root, storage_options=s3_server.storage_options, **DATA)

    def cfg(output):
        return InferenceConfig(out=output, dataset=DatasetConfig(format="revos", root=root), preset="tiny", seed=3, compute=SMALL,
                               code_version="chaos", storage_options=s3_server.storage_options)

    reference_out = f"{bucket}/runs/reference"
    assert run_inference(cfg(reference_out)).ok
    reference = canonical(reference_out, s3_server.storage_options)

    output = f"{bucket}/runs/node-lost"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary=run_inference(cfg(output))), daemon=True)
    runner.start()
    deadline = time.monotonic() + 180
    victim = None
    while victim is None:
        assert runner.is_alive() and time.monotonic() < deadline, "the job ended or stalled before a node was lost"
        if list_parts(output, "scores", storage_options=s3_server.storage_options):
            victim = _node_of_model_actor(workers)  # None while the actor is being (re)started
        time.sleep(0.2)
    cluster.remove_node(victim, allow_graceful=False)
    FIGURES.add("faults", "worker node hosting the model actor removed mid-run (3-node cluster)", 1)
    runner.join(300)
    assert not runner.is_alive(), "the job did not finish after losing a node"
    summary = result["summary"]
    assert summary.ok and summary.videos_processed <= DATA["num_videos"], summary
    assert_same_rows(canonical(output, s3_server.storage_options), reference, "node lost on a 3-node cluster")
