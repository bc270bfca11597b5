"""Old definitions (see schema.py) of the weight-strategy nodes (IPAdapterWeights, IPAdapterWeightsFromStrategy, IPAdapterCombineWeights,
IPAdapterPromptScheduleFromWeightsStrategy).

Plain data, no imports: ``nodes(s)`` gets the schema module (its OldNode, constants and helpers) and returns
node ID -> OldNode in the old pack's NODE_CLASS_MAPPINGS order."""


def nodes(s) -> dict:
    return {}
