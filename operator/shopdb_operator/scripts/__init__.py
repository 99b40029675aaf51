"""The shell scripts the database and PgBouncer containers run.

They are shipped in the `<cluster>-scripts` ConfigMap (mounted flat at /etc/shopdb/scripts/);
`instance_scripts()` is what the builder puts in that ConfigMap.
"""

from __future__ import annotations

from importlib import resources

_SUFFIXES = (".sh",)


def instance_scripts() -> dict[str, str]:
    """File name -> content of every script in this package, for the scripts ConfigMap."""
    package = resources.files(__name__)
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in sorted(package.iterdir(), key=lambda e: e.name)
        if entry.is_file() and entry.name.endswith(_SUFFIXES)
    }
