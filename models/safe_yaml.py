"""Parsing untrusted YAML (catalogues posted over HTTP) within fixed bounds.

PyYAML's ``safe_load`` refuses Python tags but happily expands aliases: a
15 KB document with aliases nested six deep becomes hundreds of megabytes
once turned into JSON or walked by the catalogue loader. Catalogues have no
need for anchors and aliases, so :func:`load_bounded_yaml` refuses aliases
outright and bounds the number of nodes and their nesting depth.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent

MAX_NODES = 200_000
MAX_DEPTH = 64


class YamlRefused(yaml.YAMLError):
    """The document uses an alias or is too big or too deep to accept."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, text: str | bytes, max_nodes: int, max_depth: int) -> None:
        super().__init__(text)
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.nodes = 0
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            raise YamlRefused("YAML aliases (*name) are not accepted; write the value out")
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise YamlRefused(f"document has more than {self.max_nodes} nodes")
        self.depth += 1
        try:
            if self.depth > self.max_depth:
                raise YamlRefused(f"document is nested deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_bounded_yaml(
    text: str | bytes, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH
) -> Any:
    """The one document in ``text``; :class:`YamlRefused` (a ``yaml.YAMLError``) past a bound."""
    loader = _BoundedLoader(text, max_nodes, max_depth)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
