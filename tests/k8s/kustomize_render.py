"""A small, strict kustomize renderer for the tests: what `kubectl kustomize k8s/...` would output.

It supports exactly the kustomization features the manifests under ``k8s/`` use (``resources``
as files or directories, ``namespace``, ``images`` and JSON 6902 ``patches`` with a ``target``,
applied by the ``jsonpatch`` library) and refuses any other field, so a manifest change that
needs more fails loudly here instead of being rendered wrong. No ``kubectl`` is needed; where
one is installed, its output and this one agree (checked by hand when the manifests change).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Doc = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
# Kinds without a namespace (the namespace transformer leaves them alone).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class RenderError(Exception):
    pass


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def render(directory: Path) -> list[Doc]:
    """The resources of the kustomization in ``directory``, transformed as kustomize would."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise RenderError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, docs)
    namespace = kustomization.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = namespace
    for image in kustomization.get("images", []):
        for container in _containers(docs):
            container["image"] = _retag(container["image"], image)
    return docs


def _apply_patch(directory: Path, patch: dict[str, Any], docs: list[Doc]) -> None:
    if set(patch) != {"path", "target"}:
        raise RenderError(f"{directory}: patches need exactly path and target, got {patch}")
    ops = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(ops, list):
        raise RenderError(f"{patch['path']}: only JSON 6902 patches (a list of ops) are supported")
    target = patch["target"]
    matched = [
        d for d in docs
        if d["kind"] == target["kind"]
        and ("name" not in target or d["metadata"]["name"] == target["name"])
    ]
    if not matched:
        raise RenderError(f"{patch['path']}: no resource matches target {target}")
    patch_ops = jsonpatch.JsonPatch(ops)
    for index, doc in enumerate(docs):
        if any(doc is m for m in matched):
            try:
                docs[index] = patch_ops.apply(doc)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise RenderError(f"{patch['path']}: {err}") from err


def _containers(docs: list[Doc]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod:
            found.extend(pod.get("initContainers", []))
            found.extend(pod.get("containers", []))
    return found


def _retag(image: str, rule: dict[str, str]) -> str:
    name, _, tag = image.partition(":")
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    tag = rule.get("newTag", tag)
    return f"{name}:{tag}" if tag else name
