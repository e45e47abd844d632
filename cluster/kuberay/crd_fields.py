"""The field paths KubeRay's CRDs allow, read from their ``openAPIV3Schema`` (nothing guessed).

    # every field path of one CRD file, one per line
    python cluster/kuberay/crd_fields.py ray.io_rayjobs.yaml

    # what tests/orchestrator/test_kuberay.py checks the manifests against
    git clone --bare https://github.com/ray-project/kuberay /tmp/kuberay.git
    python cluster/kuberay/crd_fields.py --git-dir /tmp/kuberay.git --rev v1.7.0 \\
        --json cluster/kuberay/crd_fields.json

Notation of a path: ``a.b`` is property ``b`` of object ``a``; ``a[]`` an item of list ``a``;
``a.*`` any key of map ``a`` (``additionalProperties``: labels, ``rayStartParams``, resource
quantities). ``status`` is left out (the operator writes it, a manifest never does).

What the schema does not describe, said rather than guessed:

* ``x-kubernetes-preserve-unknown-fields: true`` makes a subtree free-form: such a path is
  listed under ``open`` and anything below it is allowed. (KubeRay v1.7.0's CRDs have none:
  they embed the full PodTemplateSpec.)
* An ``object`` with neither ``properties`` nor ``additionalProperties`` (nor the flag above)
  is listed under ``opaque``. At the root that is ``metadata``, which the API server checks as
  ObjectMeta; anywhere else the API server would silently prune whatever a manifest put there.

The JSON output stores each schema once: a subtree equal to a shared one (the PodTemplateSpec
KubeRay embeds for the head, every worker group and the RayJob submitter; a RayJob's
``spec.rayClusterSpec``, equal to a RayCluster's ``spec``) becomes an entry of ``refs``
(``path -> name``), whose fields are those of ``shared[name]`` (or of a kind's paths under a
prefix, ``RayCluster:spec``) prefixed by the path. The script checks that equality; it does not
assume it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

CRD_FILES = {
    "RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
    "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
}
# The shared PodTemplateSpec is defined where KubeRay embeds it first.
POD_TEMPLATE_AT = ("RayCluster", "spec.headGroupSpec.template")


def served_schema(crd: Mapping[str, Any], version: str = "v1") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one served version of a CRD document."""
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            if not v.get("served", False):
                raise ValueError(f"{crd['spec']['names']['kind']} {version} is not served")
            return v["schema"]["openAPIV3Schema"]
    raise ValueError(f"{crd['spec']['names']['kind']} has no version {version}")


def node_type(node: Mapping[str, Any]) -> str:
    """The type a manifest value must have at this node."""
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    if "type" in node:
        return str(node["type"])
    if "anyOf" in node or "oneOf" in node:
        kinds = sorted({str(s.get("type", "?")) for s in node.get("anyOf", node.get("oneOf", []))})
        return "|".join(kinds)
    return "any"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def walk(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every (path, schema node) below ``node``, depth first; ``status`` at the root skipped."""
    for key, child in (node.get("properties") or {}).items():
        if not path and key == "status":
            continue
        sub = _join(path, key)
        yield sub, child
        yield from walk(child, sub)
    if isinstance(node.get("items"), Mapping):
        sub = f"{path}[]"
        yield sub, node["items"]
        yield from walk(node["items"], sub)
    if isinstance(node.get("additionalProperties"), Mapping):
        sub = _join(path, "*")
        yield sub, node["additionalProperties"]
        yield from walk(node["additionalProperties"], sub)


def subschema(schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The schema node at ``path`` (inverse of :func:`walk`'s notation)."""
    node = schema
    for part in path.replace("[]", ".[]").split("."):
        if part == "[]":
            node = node["items"]
        elif part == "*":
            node = node["additionalProperties"]
        else:
            node = node["properties"][part]
    return node


def describe(schema: Mapping[str, Any], shared: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Fields, enums, open and opaque paths of ``schema``; subtrees equal to ``shared`` become refs."""
    shared = shared or {}
    fields: dict[str, str] = {}
    enums: dict[str, list[Any]] = {}
    refs: dict[str, str] = {}
    open_paths: list[str] = []
    opaque: list[str] = []
    skip: list[str] = []
    for path, node in walk(schema):
        if any(path == s or path.startswith(s + ".") or path.startswith(s + "[]") for s in skip):
            continue
        fields[path] = node_type(node)
        name = next((n for n, s in shared.items() if s == node), None)
        if name is not None:
            refs[path] = name
            skip.append(path)
            continue
        if "enum" in node:
            enums[path] = list(node["enum"])
        if node.get("x-kubernetes-preserve-unknown-fields"):
            open_paths.append(path)
            skip.append(path)
        elif node.get("type") == "object" and not node.get("properties") and "additionalProperties" not in node:
            opaque.append(path)
    return {
        "fields": dict(sorted(fields.items())),
        "enums": dict(sorted(enums.items())),
        "refs": dict(sorted(refs.items())),
        "open": sorted(open_paths),
        "opaque": sorted(opaque),
    }


def build(crds: Mapping[str, Mapping[str, Any]], version: str = "v1") -> dict[str, Any]:
    """The JSON document: shared PodTemplateSpec once, each kind with refs to it."""
    schemas = {kind: served_schema(doc, version) for kind, doc in crds.items()}
    kind, at = POD_TEMPLATE_AT
    pod_template = subschema(schemas[kind], at)
    shared = {"PodTemplateSpec": pod_template}
    out: dict[str, Any] = {"shared": {"PodTemplateSpec": describe(pod_template)}, "kinds": {}}
    for kind in sorted(schemas):
        kind_shared = dict(shared)
        if kind == "RayJob" and "RayCluster" in schemas:
            kind_shared["RayCluster:spec"] = schemas["RayCluster"]["properties"]["spec"]
        doc = crds[kind]
        out["kinds"][kind] = {
            "apiVersion": f"{doc['spec']['group']}/{version}",
            **describe(schemas[kind], kind_shared),
        }
    # The refs must cover every place the template appears, or the test would miss fields.
    for kind, info in out["kinds"].items():
        for path, name in info["refs"].items():
            target = shared.get(name) or schemas["RayCluster"]["properties"]["spec"]
            if subschema(schemas[kind], path) != target:
                raise AssertionError(f"{kind} {path} is not equal to {name}")
    return out


def expand(doc: Mapping[str, Any], kind: str, what: str = "fields") -> dict[str, Any]:
    """``what`` (``fields``: ``{path: type}``, or ``enums``) of ``kind``, refs resolved."""
    info = doc["kinds"][kind]
    out = dict(info[what])
    for path, name in info["refs"].items():
        if ":" in name:  # "RayCluster:spec": that kind's paths under the prefix
            other, prefix = name.split(":")
            sub = expand(doc, other, what)
            out.update({path + p[len(prefix):]: t for p, t in sub.items() if p.startswith(prefix + ".") or p.startswith(prefix + "[]")})
        else:
            out.update({_join(path, p): t for p, t in doc["shared"][name][what].items()})
    return out


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("crd", nargs="*", help="CRD YAML files (prints their paths)")
    p.add_argument("--git-dir", help="a KubeRay git directory (a bare clone, or a clone's .git): read the CRDs at --rev")
    p.add_argument("--rev", default="HEAD", help="tag or commit of --git-dir (default HEAD)")
    p.add_argument("--version", default="v1", help="CRD version (default v1, KubeRay's storage version)")
    p.add_argument("--json", help="write the JSON document here (needs --git-dir, for its source)")
    a = p.parse_args(argv)

    if a.git_dir:
        crds = {kind: yaml.safe_load(_git(a.git_dir, "show", f"{a.rev}:{path}")) for kind, path in CRD_FILES.items()}
    else:
        crds = {}
        for f in a.crd:
            doc = yaml.safe_load(Path(f).read_text())
            crds[doc["spec"]["names"]["kind"]] = doc
    if not crds:
        p.error("give CRD files or --git-dir")

    if a.json:
        if not a.git_dir:
            p.error("--json needs --git-dir (the document records the commit it was read from)")
        commit = _git(a.git_dir, "rev-parse", f"{a.rev}^{{commit}}")
        doc = {
            "about": "Field paths KubeRay's CRDs allow (openAPIV3Schema), for tests/orchestrator/test_kuberay.py. "
                     "Derived data, see cluster/kuberay/crd_fields.py for the notation.",
            "source": {
                "repository": "https://github.com/ray-project/kuberay",
                "rev": a.rev,
                "commit": commit,
                "commit_date": _git(a.git_dir, "show", "-s", "--format=%cI", commit),
                "files": CRD_FILES,
                "crd_version": a.version,
            },
            "command": "git clone --bare https://github.com/ray-project/kuberay /tmp/kuberay.git && "
                       f"python cluster/kuberay/crd_fields.py --git-dir /tmp/kuberay.git --rev {a.rev} --json {a.json}",
            **build(crds, a.version),
        }
        Path(a.json).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
        counts = {k: len(expand(doc, k)) for k in doc["kinds"]}
        print(f"wrote {a.json}: {counts} field paths ({a.rev} = {commit[:12]})", file=sys.stderr)
        return 0

    for kind, crd in sorted(crds.items()):
        for path in describe(served_schema(crd, a.version))["fields"]:
            print(f"{kind}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
