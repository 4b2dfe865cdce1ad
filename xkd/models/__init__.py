"""XKD models: video / audio ViT encoders, MAE decoder, DINO head, EMA teachers, the three variants."""
from xkd.models.dino_head import DINOHead
from xkd.models.encoders import AudioViT, VideoViT, ViTEncoder, build_encoder
from xkd.models.mae import MAEDecoder
from xkd.models.transformer import COMPILE_MODES, Attention, Block, compile_blocks, set_fused_attention
from xkd.models.xkd import XKD, XKDStudents, XKDTeachers, build_xkd

__all__ = ["COMPILE_MODES", "Attention", "AudioViT", "Block", "DINOHead", "MAEDecoder", "VideoViT", "ViTEncoder",
           "XKD", "XKDStudents", "XKDTeachers", "build_encoder", "build_xkd", "compile_blocks", "set_fused_attention"]
