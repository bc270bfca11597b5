"""Thin ComfyUI layer: node classes and their registration."""
from .apply import IPAApply, IPAApplyAdvanced, IPAApplySimple
from .combine import IPACombineEmbeds
from .embeds_file import IPALoadEmbeds, IPASaveEmbeds
from .encode import IPAEncode
from .face import IPAApplyFaceID, IPAEncodeFace, IPAFaceModelLoader
from .folders import register_folder
from .loader import IPAModelLoader
from .noise import IPANoiseImage
from .old_api import old_api_mappings
from .prep import IPAPrepImage
from .regional import IPARegionalApply
from .reweight import IPAReweight
from .style_composition import IPAStyleComposition
from .tiled import IPAApplyTiled
from .unified_loader import IPAUnifiedLoader

_NODES = {
    "IPA_ModelLoader": IPAModelLoader,
    "IPA_Encode": IPAEncode,
    "IPA_Apply": IPAApply,
    "IPA_ApplySimple": IPAApplySimple,
    "IPA_ApplyAdvanced": IPAApplyAdvanced,
    "IPA_CombineEmbeds": IPACombineEmbeds,
    "IPA_NoiseImage": IPANoiseImage,
    "IPA_PrepImage": IPAPrepImage,
    "IPA_SaveEmbeds": IPASaveEmbeds,
    "IPA_LoadEmbeds": IPALoadEmbeds,
    "IPA_Reweight": IPAReweight,
    "IPA_ApplyTiled": IPAApplyTiled,
    "IPA_StyleComposition": IPAStyleComposition,
    "IPA_RegionalApply": IPARegionalApply,
    "IPA_UnifiedLoader": IPAUnifiedLoader,
    "IPA_FaceModelLoader": IPAFaceModelLoader,
    "IPA_EncodeFace": IPAEncodeFace,
    "IPA_ApplyFaceID": IPAApplyFaceID,
}

# Names users search the node library for (ComfyUI 0.33 serves them as object_info "search_aliases"; older
# releases ignore the attribute): the old ComfyUI_IPAdapter_plus node IDs each node replaces, and "ipadapter".
_SEARCH_ALIASES = {
    "IPA_ModelLoader": ["IPAdapterModelLoader"],
    "IPA_Encode": ["IPAdapterEncoder"],
    "IPA_Apply": ["IPAdapter"],
    "IPA_ApplySimple": ["IPAdapter"],
    "IPA_ApplyAdvanced": ["IPAdapterAdvanced", "IPAdapterBatch", "IPAdapterEmbeds"],
    "IPA_CombineEmbeds": ["IPAdapterCombineEmbeds"],
    "IPA_NoiseImage": ["IPAdapterNoise"],
    "IPA_PrepImage": ["PrepImageForClipVision"],
    "IPA_SaveEmbeds": ["IPAdapterSaveEmbeds"],
    "IPA_LoadEmbeds": ["IPAdapterLoadEmbeds"],
    "IPA_Reweight": [],
    "IPA_ApplyTiled": ["IPAdapterTiled"],
    "IPA_StyleComposition": ["IPAdapterStyleComposition"],
    "IPA_RegionalApply": ["IPAdapterRegionalConditioning"],
    "IPA_UnifiedLoader": ["IPAdapterUnifiedLoader"],
    "IPA_FaceModelLoader": ["IPAdapterInsightFaceLoader", "insightface", "faceid"],
    "IPA_EncodeFace": ["IPAdapterFaceID", "faceid"],
    "IPA_ApplyFaceID": ["IPAdapterFaceID", "IPAAdapterFaceIDBatch", "faceid"],
}
for _node_id, _cls in _NODES.items():
    _cls.SEARCH_ALIASES = _SEARCH_ALIASES[_node_id] + ["ipadapter", "ip-adapter"]

NODE_CLASS_MAPPINGS = dict(_NODES)
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in _NODES.items()}
# the ComfyUI_IPAdapter_plus node IDs, when that pack is not installed (nodes/old_api/)
_OLD_CLASSES, _OLD_NAMES = old_api_mappings()
NODE_CLASS_MAPPINGS.update(_OLD_CLASSES)
NODE_DISPLAY_NAME_MAPPINGS.update(_OLD_NAMES)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_folder"]
