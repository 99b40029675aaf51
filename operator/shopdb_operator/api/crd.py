"""Generates the CustomResourceDefinition from the spec models.

Pydantic's JSON schema is turned into a structural OpenAPI v3 schema: references are
inlined, optional fields lose their `null` branch, nested objects default to `{}` so the
API server applies their inner defaults, and every string gets a length bound so that
CEL rules stay within the API server's cost budget.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from .. import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from .spec import ClusterSpec

DEFAULT_MAX_STRING = 512
MAX_CLUSTER_NAME = 30
_KEEP = {"type", "description", "default", "enum", "pattern", "minimum", "maximum",
         "minLength", "maxLength", "minItems", "maxItems", "items", "properties",
         "required", "additionalProperties", "maxProperties", "x-kubernetes-validations",
         "x-kubernetes-list-type", "x-kubernetes-list-map-keys"}


def _models(model: type[BaseModel], found: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `model`, by its JSON-schema name."""
    found[model.__name__] = model
    for field in model.model_fields.values():
        for arg in _type_args(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__name__ not in found:
                _models(arg, found)
    return found


def _type_args(annotation: Any) -> list[Any]:
    args = [annotation]
    for sub in getattr(annotation, "__args__", ()) or ():
        args.extend(_type_args(sub))
    return args


def _structural(node: dict, defs: dict, models: dict[str, type[BaseModel]]) -> dict:
    node = copy.deepcopy(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        merged = {**copy.deepcopy(defs[name]), **node}
        out = _structural(merged, defs, models)
        _add_model_defaults(out, models.get(name))
        return out
    if "anyOf" in node:  # Optional[X]: the field may be absent, never null
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        assert len(branches) == 1, f"unsupported union: {branches}"
        merged = {**branches[0], **node}
        if merged.get("default", 0) is None:
            merged.pop("default")
        return _structural(merged, defs, models)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = {**node.pop("allOf")[0], **node}
        return _structural(merged, defs, models)
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    out = {k: v for k, v in node.items() if k in _KEEP}
    if "properties" in out:
        out["properties"] = {k: _structural(v, defs, models) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _structural(out["items"], defs, models)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"], defs, models)
        out.setdefault("maxProperties", 64)
    elif out.get("additionalProperties") is False:
        out.pop("additionalProperties")  # structural schemas prune unknown fields instead
    if out.get("type") == "string" and "enum" not in out:
        out.setdefault("maxLength", DEFAULT_MAX_STRING)
    return out


def _add_model_defaults(schema: dict, model: type[BaseModel] | None) -> None:
    """Defaults that pydantic leaves out of the JSON schema (default factories)."""
    if model is None:
        return
    for name, field in model.model_fields.items():
        key = field.alias or name
        prop = schema.get("properties", {}).get(key)
        if prop is None or field.default_factory is None:
            continue
        value = field.default_factory()
        if isinstance(value, BaseModel):
            # `{}` lets the API server fill inner defaults; a non-default value is spelled out
            same = value == type(value)()
            prop["default"] = {} if same else value.model_dump(mode="json", by_alias=True, exclude_none=True)
        elif isinstance(value, list):
            prop["default"] = [
                v.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(v, BaseModel) else v
                for v in value
            ]
        else:
            prop["default"] = value


def spec_schema() -> dict:
    raw = ClusterSpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    models = _models(ClusterSpec, {})
    schema = _structural(raw, defs, models)
    _add_model_defaults(schema, ClusterSpec)
    return schema


def status_schema() -> dict:
    instance = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "role": {"type": "string"},
            "ready": {"type": "boolean"},
            "lagBytes": {"type": "integer"},
            "routes": {"type": "array", "items": {"type": "string"}},
        },
        "x-kubernetes-preserve-unknown-fields": True,
    }
    return {
        "type": "object",
        "description": "Observed state, written by the operator.",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "currentPrimary": {"type": "string"},
            "targetPrimary": {"type": "string"},
            "readyInstances": {"type": "string"},
            "maxLagBytes": {"type": "integer"},
            "instances": {"type": "array", "items": instance},
            "conditions": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    }


def crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "listKind": f"{KIND}List",
                "categories": ["all", "shopdb"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Primary", "type": "string", "jsonPath": ".status.currentPrimary"},
                        {"name": "Ready", "type": "string", "jsonPath": ".status.readyInstances"},
                        {"name": "Lag", "type": "integer", "jsonPath": ".status.maxLagBytes",
                         "description": "Largest replica lag in bytes"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A PostgreSQL tier for a marketplace: primary, read replicas, "
                                           "PgBouncer, Redis, maintenance jobs and automated failover.",
                            "x-kubernetes-validations": [{
                                "rule": f"size(self.metadata.name) <= {MAX_CLUSTER_NAME}",
                                "message": f"the cluster name must be at most {MAX_CLUSTER_NAME} characters "
                                           "(it prefixes the names of its pods and Services)",
                            }],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {**spec_schema(), "default": {}},
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated from operator/shopdb_operator/api/spec.py by `shopdb-operator crd`; do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
