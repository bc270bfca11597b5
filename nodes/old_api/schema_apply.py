"""Old definitions (see schema.py) of the other apply nodes: Tiled (+ Batch), Style & Composition (+ Batch), Precise Style Transfer /
Composition (+ Batch), Mad Scientist.

Plain data, no imports: ``nodes(s)`` gets the schema module (its OldNode, constants and helpers) and returns
node ID -> OldNode in the old pack's NODE_CLASS_MAPPINGS order."""


def nodes(s) -> dict:
    return {}
