"""Thin ComfyUI layer: node classes and their registration."""
from .apply import IPAApply, IPAApplyAdvanced, IPAApplySimple
from .combine import IPACombineEmbeds
from .embeds_file import IPALoadEmbeds, IPASaveEmbeds
from .encode import IPAEncode
from .loader import IPAModelLoader, register_folder
from .noise import IPANoiseImage
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
}

NODE_CLASS_MAPPINGS = dict(_NODES)
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in _NODES.items()}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_folder"]
