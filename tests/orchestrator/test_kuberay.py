"""The KubeRay manifests in cluster/kuberay/ use KubeRay's field names and run the search as
cluster/kuberay/README.md says: no network, no Kubernetes, no Ray.

Field names are checked against cluster/kuberay/crd_fields.json, the paths that
cluster/kuberay/crd_fields.py read from KubeRay's own CRDs (their openAPIV3Schema; the commit
is recorded in the file). The rest checks what the manifests must do: run orchestrator/search.py
with an absolute --output on the shared volume, token authentication on, no trial on the head,
GPU limits consistent with the Ray resources, the dashboard not exposed, a ReadWriteMany claim
mounted at the same path everywhere, and worker pods that hold the config's trials.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import shlex
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
PLACEHOLDER_TOKEN = "REPLACE-WITH-openssl-rand-base64-32"
GPU = "nvidia.com/gpu"


def _crd_fields_module():
    spec = importlib.util.spec_from_file_location("crd_fields", KUBERAY / "crd_fields.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


crd_fields = _crd_fields_module()
CRD = json.loads((KUBERAY / "crd_fields.json").read_text())


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every YAML document in cluster/kuberay/."""
    out = []
    for path in sorted(KUBERAY.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def one(kind: str) -> dict[str, Any]:
    docs = [d for _, d in manifests() if d.get("kind") == kind]
    assert len(docs) == 1, f"expected one {kind} in cluster/kuberay/, found {len(docs)}"
    return docs[0]


# -- field names --------------------------------------------------------------------------


def _prefixed(fields: Mapping[str, str], prefix: str, under: str) -> dict[str, str]:
    """``fields`` below ``under`` (e.g. ``metadata``), re-rooted at ``prefix``."""
    return {prefix + p[len(under):]: t for p, t in fields.items() if p.startswith(under + ".") or p.startswith(under + "[]")}


def allowed_fields(kind: str) -> dict[str, str]:
    """Every field path a document of ``kind`` may use, with its type.

    RayJob / RayCluster: the CRD's paths. The root ``metadata`` is opaque in a CRD (the API
    server checks it as ObjectMeta); it is checked against the ObjectMeta the same CRDs embed
    in every pod template (name, namespace, labels, annotations, finalizers), a subset of
    ObjectMeta that is enough here. PersistentVolumeClaim: that ObjectMeta and the
    PersistentVolumeClaimSpec the CRDs embed at ``volumes[].ephemeral.volumeClaimTemplate.spec``.
    """
    pod = CRD["shared"]["PodTemplateSpec"]["fields"]
    meta = _prefixed(pod, "metadata", "metadata")
    top = {"apiVersion": "string", "kind": "string", "metadata": "object", **meta}
    if kind in CRD["kinds"]:
        return {**crd_fields.expand(CRD, kind), **top}
    if kind == "PersistentVolumeClaim":
        pvc = _prefixed(pod, "spec", "spec.volumes[].ephemeral.volumeClaimTemplate.spec")
        assert pvc, "the CRDs no longer embed a PersistentVolumeClaimSpec where expected"
        return {**top, "spec": "object", **pvc}
    raise KeyError(kind)


_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "int-or-string": (int, str),
}


def _type_ok(value: Any, expected: str | None) -> bool:
    if expected not in _TYPES:  # no type in the schema (or a union): nothing to check
        return True
    if isinstance(value, bool) and expected != "boolean":  # YAML true is not an integer
        return False
    return isinstance(value, _TYPES[expected])


def field_errors(doc: Mapping[str, Any], allowed: Mapping[str, str], enums: Mapping[str, list[Any]] | None = None) -> list[str]:
    """Every key path of ``doc`` that is not an allowed field, or whose value has the wrong
    type or is not one of the schema's ``enum`` values.

    A key matches ``path.key`` if the schema has that property, else ``path.*`` if the schema
    has a map there (labels, rayStartParams, resource quantities); list items are ``path[]``.
    """
    errors: list[str] = []

    def visit(value: Any, schema_path: str, shown: str) -> None:
        expected = allowed.get(schema_path)
        if not _type_ok(value, expected):
            errors.append(f"{shown}: {type(value).__name__} where the CRD has {expected}")
            return
        if enums and schema_path in enums and value not in enums[schema_path]:
            errors.append(f"{shown}: {value!r} is not one of {enums[schema_path]}")
            return
        if isinstance(value, dict):
            for key, child in value.items():
                sub = f"{schema_path}.{key}" if schema_path else str(key)
                star = f"{schema_path}.*" if schema_path else "*"
                where = f"{shown}.{key}" if shown else str(key)
                if sub in allowed:
                    visit(child, sub, where)
                elif star in allowed:
                    visit(child, star, where)
                else:
                    errors.append(f"{where}: no such field")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if f"{schema_path}[]" not in allowed:
                    errors.append(f"{shown}[{i}]: no list here")
                    break
                visit(item, f"{schema_path}[]", f"{shown}[{i}]")

    visit(doc, "", "")
    return errors


def test_crd_fields_json_is_what_the_script_derives() -> None:
    # Recorded provenance, and the refs resolve to the full path sets (spot checks of fields
    # this project uses, each present in KubeRay v1.7.0's CRDs).
    src = CRD["source"]
    assert src["repository"] == "https://github.com/ray-project/kuberay"
    assert re.fullmatch(r"[0-9a-f]{40}", src["commit"])
    job = crd_fields.expand(CRD, "RayJob")
    for path in (
        "spec.entrypoint",
        "spec.shutdownAfterJobFinishes",
        "spec.rayClusterSpec.authOptions.secretName",
        "spec.rayClusterSpec.headGroupSpec.rayStartParams.*",
        "spec.rayClusterSpec.workerGroupSpecs[].template.spec.containers[].resources.limits.*",
        "spec.submitterPodTemplate.spec.containers[].image",
    ):
        assert path in job, path
    assert crd_fields.expand(CRD, "RayJob", "enums")["spec.rayClusterSpec.authOptions.mode"] == ["disabled", "token"]
    assert "status" not in job and not any(p.startswith("status.") for p in job)


def test_crd_fields_script_handles_open_opaque_and_shared_subtrees() -> None:
    template = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}}}
    schema = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "properties": {
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                             "properties": {"hidden": {"type": "string"}}},
                    "params": {"type": "object", "additionalProperties": {"type": "string"}},
                    "groups": {"type": "array", "items": {"type": "object", "properties": {"template": copy.deepcopy(template)}}},
                    "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                },
            },
            "status": {"type": "object", "properties": {"state": {"type": "string"}}},
        },
    }
    d = crd_fields.describe(schema, {"T": template})
    assert d["open"] == ["spec.free"] and "spec.free.hidden" not in d["fields"]
    assert d["opaque"] == ["metadata"]
    assert d["refs"] == {"spec.groups[].template": "T"} and "spec.groups[].template.spec.x" not in d["fields"]
    assert d["fields"]["spec.params.*"] == "string" and d["fields"]["spec.port"] == "int-or-string"
    assert not any(p.startswith("status") for p in d["fields"])


def test_every_manifest_field_is_a_kuberay_or_kubernetes_field() -> None:
    kinds = {}
    for name, doc in manifests():
        kind = doc.get("kind")
        kinds.setdefault(kind, []).append(name)
        if kind == "Secret":
            continue  # no Secret schema in KubeRay's CRDs; its content is checked below
        assert kind in ("RayJob", "RayCluster", "PersistentVolumeClaim"), (
            f"{name}: unexpected kind {kind} (an Ingress or Service would expose the dashboard)")
        if kind in CRD["kinds"]:
            assert doc["apiVersion"] == CRD["kinds"][kind]["apiVersion"], name
        enums = crd_fields.expand(CRD, kind, "enums") if kind in CRD["kinds"] else {}
        errors = field_errors(doc, allowed_fields(kind), enums)
        assert not errors, f"{name} ({kind}): " + "; ".join(errors)
    assert set(kinds) == {"RayJob", "PersistentVolumeClaim", "Secret"}, kinds


def test_field_check_catches_a_misspelling_and_a_wrong_type() -> None:
    job = copy.deepcopy(one("RayJob"))
    job["spec"]["shutdownAfterJobFinished"] = job["spec"].pop("shutdownAfterJobFinishes")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["containers"][0]["volumeMount"] = worker["containers"][0].pop("volumeMounts")
    job["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "Token"
    assert sorted(field_errors(job, allowed_fields("RayJob"), crd_fields.expand(CRD, "RayJob", "enums"))) == [
        "spec.rayClusterSpec.authOptions.mode: 'Token' is not one of ['disabled', 'token']",
        "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus: int where the CRD has string",
        "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].volumeMount: no such field",
        "spec.shutdownAfterJobFinished: no such field",
    ]


# -- what the RayJob must do -------------------------------------------------------------


def cluster_spec() -> dict[str, Any]:
    return one("RayJob")["spec"]["rayClusterSpec"]


def pod_templates() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group name, group spec, pod spec) for the head and every worker group."""
    spec = cluster_spec()
    yield "head", spec["headGroupSpec"], spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group, group["template"]["spec"]


def ray_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


def quantity(q: str | int | float) -> Fraction:
    """A Kubernetes quantity as a number (the forms used here: plain, m, Ki..Ti)."""
    s = str(q)
    suffixes = {"m": Fraction(1, 1000), "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in suffixes.items():
        if s.endswith(suffix):
            return Fraction(s[: -len(suffix)]) * factor
    return Fraction(s)


def ray_resources(group: Mapping[str, Any], pod: Mapping[str, Any]) -> tuple[int, int]:
    """The CPUs and GPUs Ray starts with on this pod, derived the way KubeRay derives them.

    ``rayStartParams`` wins; otherwise the container's limit, else its request, rounded up to a
    whole number (KubeRay v1.7.0 ``generateRayStartCommand``: ``Quantity.Value()``).
    """
    res = ray_container(pod).get("resources", {})
    params = group.get("rayStartParams", {})

    def pick(param: str, name: str) -> int:
        if param in params:
            return int(params[param])
        for where in ("limits", "requests"):
            if name in res.get(where, {}):
                return math.ceil(quantity(res[where][name]))
        return 0

    return pick("num-cpus", "cpu"), pick("num-gpus", GPU)


def entrypoint_args() -> list[str]:
    entrypoint = one("RayJob")["spec"]["entrypoint"]
    # KubeRay pastes the entrypoint unquoted into the submitter's bash line
    # (`ray job submit ... -- <entrypoint> ;`, common/job.go): no shell syntax in it.
    assert not re.search(r"[;&|<>`$()\\]", entrypoint), entrypoint
    args = shlex.split(entrypoint)
    assert args[:2] == ["python", "orchestrator/search.py"], args
    return args


def arg(args: list[str], flag: str) -> str:
    assert flag in args, f"entrypoint lacks {flag}: {args}"
    return args[args.index(flag) + 1]


def shared_mounts() -> dict[str, str]:
    """Mount path of the ReadWriteMany claim in each Ray pod (group name -> path)."""
    claim = one("PersistentVolumeClaim")["metadata"]["name"]
    out = {}
    for name, _group, pod in pod_templates():
        volumes = [v["name"] for v in pod.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
        assert len(volumes) == 1, f"{name}: the pod does not mount claim {claim}"
        mounts = [m["mountPath"] for m in ray_container(pod).get("volumeMounts", []) if m["name"] == volumes[0]]
        assert len(mounts) == 1, f"{name}: the Ray container does not mount volume {volumes[0]}"
        out[name] = mounts[0]
    return out


def test_entrypoint_runs_the_search_with_an_absolute_output_on_the_shared_volume() -> None:
    args = entrypoint_args()
    assert (ROOT / arg(args, "--config")).is_file(), arg(args, "--config")
    output = Path(arg(args, "--output"))
    assert output.is_absolute(), "Train workers do not run in the job's working dir: --output must be absolute"
    mounts = set(shared_mounts().values())
    assert len(mounts) == 1, f"the shared volume must be at the same path on head and workers: {mounts}"
    assert output.is_relative_to(mounts.pop())
    # The relative --config works because the job's working_dir is the image's checkout.
    working_dir = yaml.safe_load(one("RayJob")["spec"]["runtimeEnvYAML"])["working_dir"]
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", (KUBERAY / "Dockerfile").read_text(), re.M)
    assert workdirs and working_dir == workdirs[-1]


def test_shared_claim_is_read_write_many() -> None:
    pvc = one("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert set(shared_mounts()) == {name for name, _, _ in pod_templates()}


def test_token_authentication_is_on_with_a_secret_that_holds_no_real_token() -> None:
    spec = cluster_spec()
    auth = spec.get("authOptions", {})
    assert auth.get("mode") == "token"
    # KubeRay refuses token mode below Ray 2.52.0 (utils/validation.go).
    assert tuple(int(x) for x in spec["rayVersion"].split(".")) >= (2, 52, 0)
    secret = one("Secret")
    assert auth.get("secretName") == secret["metadata"]["name"]
    assert secret["stringData"] == {"auth_token": PLACEHOLDER_TOKEN}  # the key KubeRay reads
    # Nothing overrides what KubeRay injects.
    for name, _, pod in pod_templates():
        for c in pod["containers"]:
            assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & {e["name"] for e in c.get("env", [])}, name


def test_dashboard_is_not_exposed() -> None:
    head = cluster_spec()["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert "ingressOptions" not in head
    assert not [d for _, d in manifests() if d.get("kind") in ("Ingress", "Service", "Gateway", "HTTPRoute")]


def test_head_runs_no_trial_and_workers_are_gpu_pods() -> None:
    spec = cluster_spec()
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_res = ray_container(head["template"]["spec"]).get("resources", {})
    assert GPU not in head_res.get("limits", {}) and GPU not in head_res.get("requests", {})
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        res = ray_container(pod)["resources"]
        limit = int(res["limits"][GPU])
        assert limit > 0
        assert int(res.get("requests", {}).get(GPU, limit)) == limit  # Kubernetes: equal for extended resources
        assert ray_resources(group, pod)[1] == limit
        assert pod.get("nodeSelector") or pod.get("affinity"), "no GPU node pool selected"
        if "nvidia.com/gpu.count" in pod.get("nodeSelector", {}):
            assert int(pod["nodeSelector"]["nvidia.com/gpu.count"]) >= limit
        assert any(t.get("key") == GPU for t in pod.get("tolerations", [])), "no toleration of GPU nodes' taint"
        for where in ("requests", "limits"):
            assert quantity(res[where]["cpu"]) > 0 and quantity(res[where]["memory"]) > 0


def test_one_image_whose_ray_is_the_clusters() -> None:
    images = {c["image"] for _, _, pod in pod_templates() for c in pod["containers"]}
    assert len(images) == 1, images
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    version = re.search(r"^ARG RAY_VERSION=(\S+)", dockerfile, re.M).group(1)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-gpu$", dockerfile, re.M)
    assert cluster_spec()["rayVersion"] == version


def test_job_lifecycle_settings() -> None:
    spec = one("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0  # KubeRay: only allowed with shutdownAfterJobFinishes
    # A retry would rerun the same entrypoint, which refuses an --output holding an experiment.
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] > 0


def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / arg(entrypoint_args(), "--config")).read_text())


def test_worker_pods_hold_the_configs_trials() -> None:
    res = config()["resources"]
    # Stated, not defaulted: the defaults live in orchestrator/config.py, not here.
    for key in ("workers", "use_gpu", "cpus_per_worker", "gpus_per_worker", "driver_cpus"):
        assert key in res, f"the KubeRay config must state resources.{key}"
    trial_cpus = Fraction(str(res["workers"])) * Fraction(str(res["cpus_per_worker"])) + Fraction(str(res["driver_cpus"]))
    trial_gpus = Fraction(str(res["workers"])) * Fraction(str(res["gpus_per_worker"]))
    assert res["use_gpu"] is True and trial_gpus > 0
    for group in cluster_spec()["workerGroupSpecs"]:
        cpus, gpus = ray_resources(group, group["template"]["spec"])
        # One trial's Train workers and driver fit in one pod (DDP stays on one node) ...
        assert trial_cpus <= cpus and trial_gpus <= gpus, (group["groupName"], cpus, gpus, trial_cpus, trial_gpus)
        # ... and the pod has CPUs for as many trials as its GPUs allow: no GPU idles for want of a CPU.
        assert math.floor(cpus / trial_cpus) >= math.floor(gpus / trial_gpus)
        # A fixed cluster: KubeRay submits once every pod runs, and the search plans on those.
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
        cluster = res.get("cluster")
        if cluster is not None:  # what --dry-run plans for: this cluster's worker pods
            assert (cluster["nodes"], cluster["cpus"], cluster["gpus"]) == (group["replicas"], cpus, gpus)
    assert not cluster_spec().get("enableInTreeAutoscaling", False)


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_allowed_fields_cover_the_ray_pod_template(kind: str) -> None:
    fields = allowed_fields(kind)
    prefix = "spec.rayClusterSpec." if kind == "RayJob" else "spec."
    for p in ("headGroupSpec.template.spec.containers[].volumeMounts[].mountPath",
              "workerGroupSpecs[].template.spec.tolerations[].effect",
              "workerGroupSpecs[].template.spec.nodeSelector.*"):
        assert fields[prefix + p] == "string"
