"""``vace weights tiny DIR``: small random-weight models in the exact on-disk layout of the real weights.

No model hub is reachable on build machines, so tests and the demo run on models built here: the real
architectures (``WanVACETransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel`` and a fast tokenizer; the
safety checker's ``ViTForImageClassification`` with its normal / nsfw labels; the prompt expander's
``Qwen2ForCausalLM`` with a byte-level BPE tokenizer trained here and a ChatML chat template), shrunk to a few
thousand parameters and saved with ``save_pretrained`` into the same folders ``vace weights download`` fills. The
loader cannot tell them apart from real weights, which is the point: the code that serves real weights is the code
under test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline, WanVACETransformer3DModel
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE, WordLevel
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from pipelines.interpolation import build_tiny_interpolators
from pipelines.manifest import AUXILIARY, MODELS, PROMPT_EXPANDER, SAFETY_CHECKER, SHARED_COMPONENTS, SHARED_FOLDER
from preprocessors.tiny import build_tiny_annotators

TEXT_DIM = 32
# A small English vocabulary, so that different prompts give different embeddings.
WORDS = (
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


def build_text_encoder(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def build_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def build_transformer() -> WanVACETransformer3DModel:
    return WanVACETransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=3,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        vace_layers=[0, 2],
        vace_in_channels=96,
    ).eval()


def build_safety_checker(folder: Path) -> None:
    """A 32x32-input ViT with Falconsai's labels and preprocessing (mean and std 0.5). Its last bias favours
    ``normal``: random weights would flag at random, and a test forces a flag by flipping that bias."""
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
    )
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([3.0, -3.0]))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )


# ChatML turns as Qwen2.5's own template renders them for a conversation with a system message and no tools.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_chat_tokenizer() -> Qwen2Tokenizer:
    """Qwen2's byte-level BPE (every byte has a token, so any text encodes) with merges trained on ``WORDS``."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials,
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(WORDS)], trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_prompt_expander(folder: Path) -> None:
    """A one-layer, 16-wide Qwen2 causal LM and its chat tokenizer in one folder, as the Qwen repos ship them.

    Left fully random, greedy decoding writes stray bytes or whitespace, or stops at once, which would read as an
    expander failure. So every input embedding carries one large constant feature and the (untied) output head
    gives it weight +1 on the whole-word tokens and -1 on all others: the random model always writes words, until
    ``max_new_tokens``.
    """
    tokenizer = build_chat_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    words = [i for token, i in tokenizer.get_vocab().items() if token.startswith("Ġ") and token[1:].isalpha()]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 5.0
        model.lm_head.weight[:, 0] = -1.0
        model.lm_head.weight[words, 0] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _link_shared(model_dir: Path) -> None:
    """Replace the model's own copies of the shared components with links into the shared folder."""
    for name in SHARED_COMPONENTS:
        target = model_dir / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        os.symlink(Path("..") / SHARED_FOLDER / name, target)


def build_tiny_weights(weights_dir: Path, seed: int = 0) -> Path:
    """Write every model of the manifest (generation models, annotators, interpolators, the safety checker and the
    prompt-expansion LM) with tiny random weights into ``weights_dir``."""
    weights_dir = Path(weights_dir)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    vae = build_vae()
    shared = weights_dir / SHARED_FOLDER
    tokenizer.save_pretrained(shared / "tokenizer")
    text_encoder.save_pretrained(shared / "text_encoder")
    vae.save_pretrained(shared / "vae")
    for entry in MODELS.values():
        model_dir = weights_dir / entry.folder
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
        _link_shared(model_dir)
        index = json.loads((model_dir / "model_index.json").read_text())
        assert index.get("boundary_ratio") == entry.boundary_ratio
    build_tiny_interpolators(weights_dir)
    build_tiny_annotators(weights_dir)
    build_safety_checker(weights_dir / AUXILIARY[SAFETY_CHECKER].folder)
    build_prompt_expander(weights_dir / AUXILIARY[PROMPT_EXPANDER].folder)
    return weights_dir
