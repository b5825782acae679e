"""Tiny Wan VACE models: the shared UMT5 text encoder, tokenizer and VAE, and every model folder of the manifest.

The real classes (``WanVACETransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel`` and a fast tokenizer)
shrunk to a few thousand parameters and saved with ``save_pretrained`` into the folders ``vace weights download``
fills, the shared components linked in the same way.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline, WanVACETransformer3DModel
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from pipelines.manifest import MODELS, SHARED_FOLDER
from weights.shared_links import link_shared


@dataclass(frozen=True)
class WanSize:
    """The numbers in which the tiny models differ from the real ones; every other argument of the builders below is
    the real models' own, so ``bench/gpu.py`` builds the real architectures through the same code at another size."""

    vocab_size: int | None  # UMT5's embedding rows; None: as many as the tokenizer has ids
    text_dim: int  # UMT5's d_model, which is also the transformer's text_dim
    text_kv: int
    text_ff: int
    text_layers: int
    text_heads: int
    text_buckets: int
    text_max_distance: int
    heads: int
    head_dim: int
    ffn_dim: int
    layers: int
    vace_layers: tuple[int, ...]
    vae_base_dim: int
    vae_dim_mult: tuple[int, ...]
    vae_res_blocks: int


TINY = WanSize(
    vocab_size=None,
    text_dim=32,
    text_kv=8,
    text_ff=64,
    text_layers=2,
    text_heads=4,
    text_buckets=8,
    text_max_distance=16,
    heads=2,
    head_dim=12,
    ffn_dim=32,
    layers=3,
    vace_layers=(0, 2),
    vae_base_dim=3,
    vae_dim_mult=(1, 1, 1, 1),
    vae_res_blocks=1,
)

# A small English vocabulary, so that different prompts give different embeddings.
WORDS = (  # noqa: SIM905 - as a list literal, these 110 words would take 8 times the lines
    "a an the and or of in on at to with from by for is are was dancing dance walking walk running run jumping "
    "person man woman girl boy child robot dog cat bird horse car street city park beach forest room studio stage "
    "red green blue yellow black white gray golden silver bright dark light sunset night day morning rain snow "
    "slow fast smooth camera pan zoom close up wide shot cinematic realistic style video frame motion pose depth "
    "wearing dress shirt jacket hat hair long short young old happy smiling standing sitting arms legs hands "
    "low quality blurry worst bad static still picture ugly deformed extra fingers background people"
).split()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with UMT5's special ids (<pad>=0, </s>=1, <unk>=2) that appends </s> like UMT5."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_text_encoder(vocab_size: int, size: WanSize = TINY) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size if size.vocab_size is None else size.vocab_size,
        d_model=size.text_dim,
        d_kv=size.text_kv,
        d_ff=size.text_ff,
        num_layers=size.text_layers,
        num_heads=size.text_heads,
        relative_attention_num_buckets=size.text_buckets,
        relative_attention_max_distance=size.text_max_distance,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def build_vae(size: WanSize = TINY) -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=size.vae_base_dim,
        z_dim=16,
        dim_mult=list(size.vae_dim_mult),
        num_res_blocks=size.vae_res_blocks,
        temperal_downsample=[False, True, True],
    ).eval()


def build_transformer(size: WanSize = TINY) -> WanVACETransformer3DModel:
    return WanVACETransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=size.heads,
        attention_head_dim=size.head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=size.text_dim,
        freq_dim=256,
        ffn_dim=size.ffn_dim,
        num_layers=size.layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        vace_layers=list(size.vace_layers),
        vace_in_channels=96,
    ).eval()


def build_wan_models(weights_dir: Path) -> None:
    """Write the shared folder and every model folder of the manifest (two experts where the model has them)."""
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    vae = build_vae()
    shared = weights_dir / SHARED_FOLDER
    tokenizer.save_pretrained(shared / "tokenizer")
    text_encoder.save_pretrained(shared / "text_encoder")
    vae.save_pretrained(shared / "vae")
    for entry in MODELS.values():
        model_dir = entry.path(weights_dir)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        pipe = WanVACEPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=UniPCMultistepScheduler(
                prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
            ),
            transformer=build_transformer(),
            transformer_2=build_transformer() if entry.two_experts else None,
            boundary_ratio=entry.boundary_ratio,
        )
        pipe.save_pretrained(model_dir)
        link_shared(model_dir, weights_dir, replace_copies=True)  # save_pretrained wrote copies of the shared ones
        index = json.loads((model_dir / "model_index.json").read_text())
        assert index.get("boundary_ratio") == entry.boundary_ratio
