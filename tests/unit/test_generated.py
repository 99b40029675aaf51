"""Generated artifacts match the API models."""

from shopdb_operator.api import generate
from shopdb_operator.api.crd import crd


def test_generated_files_are_up_to_date():
    assert generate.main(["--check"]) == 0, "run: python -m shopdb_operator.api.generate"


def test_crd_has_status_printer_columns_and_defaults():
    version = crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Primary", "Ready", "Lag", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["default"] == {}
    assert spec["properties"]["replicas"]["default"][2] == {
        "name": "analytics", "purpose": "analytics and vendor dashboards", "poolSize": 20,
        "promotable": False, "analytics": True}
    assert spec["properties"]["postgres"]["properties"]["resources"]["properties"]["primary"]["default"] == {
        "cpu": "8", "memory": "32Gi"}


def test_crd_schema_is_structural():
    """No $ref, anyOf or untyped nodes: the API server would refuse them."""
    def walk(node, path):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return
        assert "type" in node, path
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for key in ("spec", "status"):
        walk(schema["properties"][key], key)
