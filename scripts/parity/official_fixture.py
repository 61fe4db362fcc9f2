#!/usr/bin/env python
"""Write the official-implementation parity fixture: the official VRS-HQ code, tiny and seeded, on CPU.

Official code: SitongGong/VRS-HQ at commit 62c9081922c7c3e32817da5d28abc18f0908143c (the fixture's
``meta.json`` records the commit given with ``--official-commit``). Nothing of it is copied here: it is
imported from the checkout named by ``--official``.

Its environment (CPU; Python 3.11; outside this repository; no network beyond PyPI):

    python3 -m venv official-env
    official-env/bin/pip install torch==2.13.0 transformers==4.31.0 peft==0.4.0 timm==0.6.13 \
        sentencepiece hydra-core iopath 'numpy<2' einops accelerate
    official-env/bin/pip install 'numpy<2' opencv-python-headless matplotlib scikit-image pycocotools termcolor scipy

(resolved here: numpy 1.26.4, opencv-python-headless 4.11.0.86, scipy 1.17.1, sentencepiece 0.2.3,
tokenizers 0.13.3, accelerate 1.16.0, hydra-core 1.3.8, Python 3.11.7)

Run (from the repository root; a few minutes on two cores):

    official-env/bin/python scripts/parity/official_fixture.py --official /path/to/VRS-HQ \
        --official-commit 62c9081922c7c3e32817da5d28abc18f0908143c --out tests/fixtures/official_parity

What it does:

1. Stand-ins for what the official code imports but cannot have on a CPU machine, none of which computes
   anything the fixture compares: ``torchvision`` (no build for this torch; SAM2's transforms are only
   constructed, and the SAM-1 ``ResizeLongestSide`` is only asked for the identity resize, which the
   stand-in checks), Chat-UniVi's EVA encoder (never used by VRS-HQ), ``sam2._C`` (the CUDA connected
   components of hole filling, here ``scipy.ndimage.label`` with 8-connectivity, the kernel's rule),
   ``Tensor.cuda`` (identity), the SAM2 inference state's hard-coded CUDA device (the CPU), and the
   forced bf16 casts of the SAM2 predictor (kept in float32, so the fixture is a float32 reference).
2. Tiny, seeded model at the official code's own construction path (``VrshqForCausalLM`` with
   ``initialize_vision_modules``, ``initialize_cluster_modules``, ``initialize_lisa_modules``,
   ``initialize_clip_modules``, ``resize_token_embeddings``): a 2-layer LLaMA, a CLIP vision tower and a
   CLIP anchor model built from literal configs, and SAM2 built by the official ``_build_sam2_`` recipe
   at tiny sizes (the one function the official code hard-codes Hiera-L in is replaced by the same
   recipe with the sizes below). The object-score head's output layer is scaled (``OBJ_SCORE_GAIN``) so
   that TKS has a real choice and masks are not empty. Every parameter is rounded to bfloat16 (the
   release's LLM dtype) so that the committed bf16 state dict holds exactly the weights the official code
   ran with.
3. A sentencepiece BPE tokenizer (LLaMA's special ids, byte fallback) trained on the prompt texts and
   saved through transformers 4.31's slow ``LlamaTokenizer`` with ``[SEG]`` and ``[TAK]`` added as the
   evaluation script adds them.
4. Three 12-frame synthetic videos, one for each branch of the official propagation
   (keyframe inside the video, first, last), and a few expressions, run one expression at a time through the official
   evaluation path (``RVOSEvalDataset.__getitem__`` -> ``collate_fn_`` -> ``model_forward(inference=True)``).
   Intermediate results are read from ``model_forward``'s local variables when it returns (a profile
   hook), so the official code runs unmodified. The visual tokens of every expression's frames are made
   again under eight other draws of DPC-KNN's ``rand * 1e-6`` tie-break noise and must be identical.
   Not run: the evaluation script's DeepSpeed engine and its no-op LoRA wrap (LoRA B is zero at creation).

Frame and model sizes are chosen so that no resampling happens in preprocessing (frames 48x64: the CLIP
processors' shortest side is 48, SAM2's longest side is 64), which keeps PIL out of the comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

SEED = 0
HEIGHT, WIDTH = 48, 64
CLIP_SIZE = 48  # CLIP-224 stand-in: shortest side and crop; patch 3 -> 16x16 = 256 patches as in ViT-L/14-224
ANCHOR_SIZE = 48  # CLIP-336 stand-in
SAM_SIZE = 64
VIDEOS = (  # (name, frames, roll in time, indices into EXPRESSIONS): one per branch of the official propagation
    ("keyframe inside", 12, 5, (0, 1, 2)),  # forward pass, reset, backward pass; every other frame sampled
    ("keyframe first", 12, 0, (0,)),  # forward pass only
    ("keyframe last", 12, 11, (0,)),  # backward pass only
)
EXPRESSIONS = (
    "the red circle moving to the right",
    "Which object is bouncing up and down?",
    "  the Blue  square ",
)

LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5)
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             image_size=CLIP_SIZE, patch_size=3, hidden_act="quick_gelu", projection_dim=32)
ANCHOR_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32)
ANCHOR_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     image_size=ANCHOR_SIZE, patch_size=6, hidden_act="quick_gelu", projection_dim=32)
OBJ_SCORE_GAIN, OBJ_SCORE_BIAS = 30.0, 2.0  # object scores that vary between frames and stay mostly positive
SAM2 = dict(image_size=SAM_SIZE, d_model=32, embed_dim=16, mem_dim=16)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# --------------------------------------------------------------------------------------------- stand-ins
class _Unused(torch.nn.Module):
    """torchvision transform stand-in: SAM2Transforms constructs (and scripts) them; evaluation never calls them."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("torchvision stand-in: this transform is not available")


def install_stand_ins() -> None:
    """Modules the official code imports that this CPU environment cannot provide (see the header)."""
    import transformers  # noqa: F401  (before the stand-in: transformers must see torchvision as absent)
    from PIL import Image

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    transforms.Resize = transforms.Normalize = transforms.ToTensor = _Unused
    transforms.Compose = _Unused

    class InterpolationMode:
        BICUBIC = "bicubic"
        BILINEAR = "bilinear"

    transforms.InterpolationMode = functional.InterpolationMode = InterpolationMode

    def to_pil_image(image):
        return Image.fromarray(np.asarray(image))

    def resize(image, size):
        if tuple(size) != (image.height, image.width):
            raise NotImplementedError(f"torchvision stand-in resizes nothing: {image.size} -> {size}")
        return image

    functional.to_pil_image, functional.resize = to_pil_image, resize
    transforms.functional = functional
    tv.transforms = transforms
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")

    def _no_boxes(*args, **kwargs):  # imported by the automatic mask generators, never called
        raise NotImplementedError("torchvision stand-in: box ops are not available")

    boxes.batched_nms = boxes.box_area = _no_boxes
    ops.boxes = boxes
    tv.ops = ops
    tv.__path__ = transforms.__path__ = ops.__path__ = []  # packages, for "from torchvision.x import y"
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional, "torchvision.ops": ops,
                        "torchvision.ops.boxes": boxes})

    eva = types.ModuleType("model.univi.model.multimodal_encoder.eva_encoder")

    class EVAVisionTower:  # imported by Chat-UniVi's builder, never built by VRS-HQ
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("EVA encoder stand-in")

    eva.EVAVisionTower = EVAVisionTower
    sys.modules[eva.__name__] = eva

    import scipy.ndimage

    c_ext = types.ModuleType("sam2._C")

    def get_connected_componnets(mask: torch.Tensor):
        labels = np.zeros(mask.shape, dtype=np.int32)
        areas = np.zeros(mask.shape, dtype=np.int32)
        for i in range(mask.shape[0]):
            lab, _ = scipy.ndimage.label(mask[i, 0].cpu().numpy() > 0, structure=np.ones((3, 3)))
            counts = np.bincount(lab.ravel())
            counts[0] = 0
            labels[i, 0], areas[i, 0] = lab, counts[lab]
        return torch.from_numpy(labels), torch.from_numpy(areas)

    c_ext.get_connected_componnets = get_connected_componnets
    sys.modules["sam2._C"] = c_ext

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    original_to = torch.Tensor.to

    def to_keeping_float32(self, *args, **kwargs):
        args = tuple(torch.float32 if a is torch.bfloat16 else a for a in args)
        if kwargs.get("dtype") is torch.bfloat16:
            kwargs["dtype"] = torch.float32
        return original_to(self, *args, **kwargs)

    torch.Tensor.to = to_keeping_float32


# ------------------------------------------------------------------------------------------------ inputs
def synthetic_video(num_frames: int, roll: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a noise texture (no two CLIP patches alike, so DPC-KNN has no density ties)
    with a red disc moving right, a blue square and a green disc bouncing, rolled in time by ``roll``
    (the random model favours the content of the unrolled first frame, so the roll moves the keyframe)."""
    rng = np.random.default_rng(SEED)
    background = rng.integers(40, 200, size=(HEIGHT, WIDTH, 3), dtype=np.int64)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    frames = []
    for t in range(num_frames):
        img = background.copy() + rng.integers(-20, 21, size=background.shape)
        cx, cy = 8 + 4 * t, 14
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = (230, 30, 30)
        img[30:40, 44:54] = (30, 30, 230)
        by = 34 - abs(6 - t) * 2
        img[(yy - by) ** 2 + (xx - 12) ** 2 <= 20] = (30, 220, 30)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.roll(np.stack(frames), roll, axis=0)


def corpus_text() -> str:
    from dataset.utils import ANSWER_LIST, UNIFIED_LONG_QUESTION_LIST, UNIFIED_SHORT_QUESTION_LIST
    from model.llava import conversation as conversation_lib

    conv = conversation_lib.conv_templates["llava_v1"]
    lines = [conv.system, "USER: ASSISTANT: </s>"] + list(UNIFIED_SHORT_QUESTION_LIST)
    lines += list(UNIFIED_LONG_QUESTION_LIST) + list(ANSWER_LIST) + [e.lower() for e in EXPRESSIONS]
    lines += [", ".join(f"({i})<image>" for i in range(12)), ", ".join(f"({i}) [SEG]" for i in range(12))]
    return "\n".join(lines * 4)


def train_llama_tokenizer(work: Path, out: Path):
    """sentencepiece BPE with LLaMA's conventions, saved by transformers 4.31's slow LlamaTokenizer."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    model_bytes = io.BytesIO()  # from memory to memory: no file path is recorded in the model's trainer spec
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_text().splitlines()), model_writer=model_bytes, vocab_size=400, model_type="bpe",
        byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    (work / "sp.model").write_bytes(model_bytes.getvalue())
    tok = LlamaTokenizer(vocab_file=str(work / "sp.model"))
    tok.save_pretrained(str(work / "base_tokenizer"))
    # As evaluation_multiseg.py: slow tokenizer, right padding, pad = unk, [SEG] then [TAK] special.
    tok = LlamaTokenizer.from_pretrained(str(work / "base_tokenizer"), model_max_length=2048,
                                         padding_side="right", use_fast=False)
    tok.pad_token = tok.unk_token
    base_vocab = len(tok)
    tok.add_tokens("[SEG]", special_tokens=True)
    seg_id = tok("[SEG]", add_special_tokens=False).input_ids[0]
    tok.add_tokens("[TAK]", special_tokens=True)
    tak_id = tok("[TAK]", add_special_tokens=False).input_ids[0]
    tok.save_pretrained(str(out))
    return tok, base_vocab, seg_id, tak_id


def write_clip_bpe(folder: Path, words) -> None:
    """vocab.json/merges.txt in CLIP's layout: byte symbols, their '</w>' forms, merges of the words."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges = []
    for word in sorted(set(words)):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if (parts[0], parts[1]) not in merges:
                merges.append((parts[0], parts[1]))
                if merged not in vocab:
                    vocab.append(merged)
            parts = [merged] + parts[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def build_clip_folders(work: Path):
    """The CLIP-224 tower folder and the CLIP-336 anchor folder, from literal configs."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer,
                              CLIPVisionConfig, CLIPVisionModel)

    tower_dir, anchor_dir = work / "clip_tower", work / "clip_anchor"
    tower_dir.mkdir()
    anchor_dir.mkdir()
    torch.manual_seed(SEED + 1)
    CLIPVisionModel(CLIPVisionConfig(**TOWER)).save_pretrained(str(tower_dir), safe_serialization=False)

    def processor(size):
        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  do_center_crop=True, do_resize=True, do_rescale=True, do_normalize=True,
                                  do_convert_rgb=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)

    processor(CLIP_SIZE).save_pretrained(str(tower_dir))

    words = " ".join(" ".join(e.lower().split()) for e in EXPRESSIONS).replace("?", " ? ").split()
    write_clip_bpe(anchor_dir, words)
    clip_tok = CLIPTokenizer(str(anchor_dir / "vocab.json"), str(anchor_dir / "merges.txt"))
    text_cfg = dict(ANCHOR_TEXT, vocab_size=len(clip_tok), bos_token_id=clip_tok.bos_token_id,
                    eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id)
    torch.manual_seed(SEED + 2)
    CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=ANCHOR_VISION, projection_dim=32)).save_pretrained(
        str(anchor_dir), safe_serialization=False)
    CLIPProcessor(image_processor=processor(ANCHOR_SIZE), tokenizer=clip_tok).save_pretrained(str(anchor_dir))
    return tower_dir, anchor_dir, text_cfg


# --------------------------------------------------------------------------------------------- the model
def tiny_sam2_builder():
    """``sam2.build_sam._build_sam2_``'s recipe (same classes and flags) at the tiny sizes of SAM2."""
    from sam2.build_sam import (CXBlock, FpnNeck, Fuser, Hiera, ImageEncoder, MaskDownSampler,
                                MemoryAttention, MemoryAttentionLayer, MemoryEncoder, PositionEmbeddingSine,
                                RoPEAttention, SAM2VideoPredictor)

    d, e, m = SAM2["d_model"], SAM2["embed_dim"], SAM2["mem_dim"]

    def build(ckpt_path=None, device="cuda", mode="eval", video_inference=False, if_substitute=False):
        assert ckpt_path is None
        rope = dict(rope_theta=10000.0, feat_sizes=[32, 32], embedding_dim=d, num_heads=1, downsample_rate=1,
                    dropout=0.1)
        model = SAM2VideoPredictor(
            image_encoder=ImageEncoder(
                trunk=Hiera(embed_dim=e, num_heads=1, window_spec=[8, 4, 16, 8],
                            window_pos_embed_bkg_spatial_size=[7, 7], global_att_blocks=[3], stages=[1, 1, 2, 1]),
                neck=FpnNeck(d_model=d, backbone_channel_list=[8 * e, 4 * e, 2 * e, e], fpn_top_down_levels=[2, 3],
                             fpn_interp_model="nearest",
                             position_encoding=PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None,
                                                                     temperature=10000)),
                scalp=1),
            memory_attention=MemoryAttention(
                d_model=d, pos_enc_at_input=True, num_layers=2,
                layer=MemoryAttentionLayer(activation="relu", dim_feedforward=4 * d, dropout=0.1,
                                           pos_enc_at_attn=False, d_model=d, pos_enc_at_cross_attn_keys=True,
                                           pos_enc_at_cross_attn_queries=False,
                                           self_attention=RoPEAttention(**rope),
                                           cross_attention=RoPEAttention(**rope, kv_in_dim=m, rope_k_repeat=True))),
            memory_encoder=MemoryEncoder(
                out_dim=m, in_dim=d,
                position_encoding=PositionEmbeddingSine(num_pos_feats=m, normalize=True, scale=None,
                                                        temperature=10000),
                mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1, embed_dim=d),
                fuser=Fuser(CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                            num_layers=2)),
            num_maskmem=7, image_size=SAM2["image_size"], sigmoid_scale_for_mem_enc=20.0,
            sigmoid_bias_for_mem_enc=-10.0, use_mask_input_as_output_without_sam=True,
            directly_add_no_mem_embed=True, use_high_res_features_in_sam=True, multimask_output_in_sam=False,
            iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=False,
            only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
            fixed_no_obj_ptr=True, multimask_output_for_tracking=False, use_multimask_token_for_obj_ptr=False,
            multimask_min_pt_num=0, multimask_max_pt_num=1, use_mlp_for_obj_ptr_proj=True,
            compile_image_encoder=False, binarize_mask_from_pts_for_mem_enc=True, fill_hole_area=8,
            sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": False,
                                         "dynamic_multimask_stability_delta": 0.05,
                                         "dynamic_multimask_stability_thresh": 0.98})
        if mode == "eval":
            model.eval()
        return model

    return build


def build_official_model(tokenizer, base_vocab, seg_id, tak_id, tower_dir, anchor_dir):
    import model.VISA_multiseg_cliptree_bf16 as msc
    from model.univi.model.language_model.llama import ChatUniViConfig

    from sam2.sam2_video_inference_ import SAM2VideoPredictor

    msc._build_sam2_ = tiny_sam2_builder()  # the only Hiera-L literal of the official model
    init_state = SAM2VideoPredictor.init_state

    def init_state_on_cpu(self, *args, **kwargs):  # init_state hard-codes torch.device("cuda")
        state = init_state(self, *args, **kwargs)
        state["device"] = state["storage_device"] = torch.device("cpu")
        return state

    SAM2VideoPredictor.init_state = init_state_on_cpu
    # initializer_range 0.3 (LLaMA's 0.02 makes a 2-layer model's states nearly position-independent)
    config = ChatUniViConfig(vocab_size=base_vocab, tie_word_embeddings=False, initializer_range=0.3, **LLM)
    config.mm_vision_select_layer = -2
    config.mm_hidden_size = TOWER["hidden_size"]
    torch.manual_seed(SEED + 3)
    model = msc.VrshqForCausalLM(
        config, train_mask_decoder=True, out_dim=SAM2["d_model"], ce_loss_weight=1.0, dice_loss_weight=0.5,
        bce_loss_weight=2.0, seg_token_idx=seg_id, seg_token_num=1, track_token_idx=tak_id, alpha=0.1,
        vision_tower=str(tower_dir), use_mm_start_end=False,
    )
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.get_model().initialize_vision_modules(model.get_model().config)
    cluster_args = types.SimpleNamespace(use_cluster=True, spatial_cluster_rate0=64, spatial_cluster_rate1=32,
                                         spatial_cluster_rate2=16, temporal_cluster_rate=0.0625,
                                         spatial_cluster_rate3=8)
    model.get_model().initialize_cluster_modules(cluster_args)
    model.get_model().initialize_lisa_modules(model.get_model().config)
    model.initialize_clip_modules(str(anchor_dir))
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        # A random object-score head says "absent" as often as "present"; a positive bias keeps the
        # keyframe and propagated masks non-empty so that the mask comparison means something.
        head = model.model.visual_model.sam_mask_decoder.pred_obj_score_head.layers[-1]
        head.weight.mul_(OBJ_SCORE_GAIN)
        head.bias.fill_(OBJ_SCORE_BIAS)
        # .bfloat16(), not .to(torch.bfloat16): the stand-in keeps .to(bf16) casts in float32
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
        gauss = model.model.visual_model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        gauss.copy_(gauss.bfloat16().float())
    return model.eval()


# ------------------------------------------------------------------------------------------- the run
class LocalsAtReturn:
    """Keeps the local variables of one function each time it returns (``sys.setprofile``)."""

    def __init__(self, code):
        self.code, self.calls = code, []

    def __enter__(self):
        def profile(frame, event, arg):
            if event == "return" and frame.f_code is self.code:
                self.calls.append(dict(frame.f_locals))

        sys.setprofile(profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


def make_dataset(tokenizer, tower_dir, anchor_dir, frame_paths, expressions):
    from dataset import rvos_clip_eval_dataset as rve
    from model.segment_anything.utils.transforms import ResizeLongestSide
    from transformers import CLIPImageProcessor, CLIPProcessor

    from model.llava import conversation as conversation_lib

    # evaluation_multiseg.py: --conv_type llava_v1 becomes the default conversation
    conversation_lib.default_conversation = conversation_lib.conv_templates["llava_v1"]
    ds = rve.RVOSEvalDataset.__new__(rve.RVOSEvalDataset)  # its __init__ reads a dataset meta file
    ds.image_size, ds.img_size, ds.tokenizer, ds.precision = SAM_SIZE, SAM_SIZE, tokenizer, "fp32"
    ds.transform = ResizeLongestSide(SAM_SIZE)
    ds.clip_image_processor = CLIPImageProcessor.from_pretrained(str(tower_dir))
    ds.clip_processsor = CLIPProcessor.from_pretrained(str(anchor_dir))
    ds.max_image_token = 12
    ds.long_question_list, ds.short_question_list = rve.UNIFIED_LONG_QUESTION_LIST, rve.UNIFIED_SHORT_QUESTION_LIST
    ds.answer_list = rve.ANSWER_LIST
    ds.d2_dataset_dicts, ds.lisa_dataset_dicts = [], []
    for i, exp in enumerate(expressions):
        # as load_target_frame: lower-case, collapse whitespace
        ds.d2_dataset_dicts.append({"video_name": "synthetic", "file_names": frame_paths,
                                    "sentence": " ".join(exp.lower().split()), "exp_id": str(i)})
        ds.lisa_dataset_dicts.append({"idx_d2": i, "frame_path": frame_paths,
                                      "output_path": [f"{i}/{t:05d}.png" for t in range(len(frame_paths))]})
    return ds, rve.collate_fn_


def run_official(args) -> None:
    sys.path.insert(0, str(args.official))
    install_stand_ins()
    import cv2

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer, base_vocab, seg_id, tak_id = train_llama_tokenizer(work, out / "tokenizer")
        tower_dir, anchor_dir, anchor_text_cfg = build_clip_folders(work)
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
            (out / "clip_tokenizer").mkdir(exist_ok=True)
            shutil.copy(anchor_dir / name, out / "clip_tokenizer" / name)
        model = build_official_model(tokenizer, base_vocab, seg_id, tak_id, tower_dir, anchor_dir)

        videos = []
        for v, (name, num_frames, roll, which) in enumerate(VIDEOS):
            expressions = [EXPRESSIONS[i] for i in which]
            frames = synthetic_video(num_frames, roll)
            frame_paths = []
            for t, frame in enumerate(frames):
                path = work / f"{v}_{t:05d}.png"
                cv2.imwrite(str(path), frame[..., ::-1])  # BGR on disk; the dataset converts back to RGB
                frame_paths.append(str(path))
            ds, collate = make_dataset(tokenizer, tower_dir, anchor_dir, frame_paths, expressions)
            results = [run_expression(model, ds, collate, tokenizer, i, seed=SEED + 10 * v + i, label=f"{name}, {i}")
                       for i in range(len(expressions))]
            videos.append({"name": name, "roll": roll, "frames": torch.from_numpy(frames),
                           "expressions": expressions, "results": results})

        save_fixture(out, model, videos, args, base_vocab, seg_id, tak_id, anchor_text_cfg)


def run_expression(model, ds, collate, tokenizer, i: int, *, seed: int, label: str) -> dict:
    """One expression through ``model_forward(inference=True)``, with its intermediate results."""
    batch = collate([ds[i]], tokenizer=tokenizer, conv_type="llava_v1", use_mm_start_end=False)
    torch.manual_seed(seed)  # DPC-KNN's tie-break noise; checked below to change nothing
    with torch.no_grad(), LocalsAtReturn(type(model).model_forward.__code__) as spy:
        output = model(**batch)
    r = collect(spy.calls[-1], output)
    print(f"{label}: anchor {r['anchor_index']}, frames {r['frame_ids']}, keyframe {r['keyframe']}, "
          f"TKS {[round(v, 4) for v in r['tks_scores'].tolist()]}, foreground "
          f"{[round(v, 2) for v in (r['mask_logits'] > 0).float().mean((1, 2)).tolist()]}", file=sys.stderr)
    check_merge_ignores_noise(model, batch["images_clip"][0][r["frame_ids"]], seed=seed, label=label)
    return r


def check_merge_ignores_noise(model, images_clip: torch.Tensor, *, seed: int, label: str, draws: int = 8) -> None:
    """The Chat-UniVi tokens of the frames the MLLM saw, as ``prepare_inputs_labels_for_multimodal`` makes
    them (tower, then ``project`` frame by frame), must not depend on DPC-KNN's ``rand * 1e-6`` tie-break:
    near-ties there would make the official result a draw of that noise (vrshq breaks ties by index)."""
    with torch.no_grad():
        features = model.encode_images(images_clip)
        draws_out = []
        for k in range(draws):
            torch.manual_seed(seed + 1000 * (k + 1))
            draws_out.append(torch.cat([model.project(features[t : t + 1], input_type="image")
                                        for t in range(features.shape[0])]))
    if not all(torch.equal(d, draws_out[0]) for d in draws_out[1:]):
        raise SystemExit(f"{label}: DPC-KNN noise changes the visual tokens; choose other frames")


def collect(loc: dict, output: dict) -> dict:
    """The intermediate results of one ``model_forward`` call, from its locals at return."""
    input_ids = loc["input_ids"]
    hidden = loc["output_hidden_states"][-1][0]
    logits = loc["output_i"].logits[0]
    seg_pos = torch.nonzero(loc["seg_token_mask"][0]).flatten()
    tak_pos = torch.nonzero(loc["track_token_mask"][0]).flatten()
    cands = loc["obj_score_per_frame"]
    key = [c["frame_ids"] for c in cands].index(loc["cond_frame_idx"])
    return {
        "input_ids": input_ids[0].clone(),
        "anchor_logits_per_image": loc["outputs"].logits_per_image[:, 0].clone(),
        "anchor_index": int(loc["index_frame"]),
        "frame_ids": [int(f) for f in loc["frame_ids"]],
        "seg_positions": seg_pos.clone(),  # positions in the embedded sequence (state before each [SEG])
        "tak_position": tak_pos.clone(),
        "seg_hidden": hidden[seg_pos].clone(),
        "tak_hidden": hidden[tak_pos].clone(),
        "seg_logits": logits[seg_pos].clone(),
        "tak_logits": logits[tak_pos].clone(),
        "last_hidden": hidden[-1].clone(),
        "sequence_length": int(hidden.shape[0]),
        "seg_embeddings": loc["seg_embed"].clone(),
        "tak_embedding": loc["pred_track_embeddings"][0][0].clone(),
        "tda_cosine": loc["similarity_"][:, 0].clone(),
        "tda_weights": loc["similarity"][:, 0].clone(),
        "fused_tak": loc["track_embed"][0].clone(),
        "object_score_logits": torch.tensor([c["object_score_logits"] for c in cands]),
        "tks_scores": torch.tensor(loc["results"]),
        "keyframe": int(loc["cond_frame_idx"]),
        "keyframe_mask_logits": cands[key]["out_mask_logits"][0, 0].clone(),  # (S, S) letterboxed video res
        "mask_logits": output["pred_masks"].clone(),  # (T, H, W) before the > 0 of rvos_validate
    }


def save_fixture(out, model, videos, args, base_vocab, seg_id, tak_id, anchor_text_cfg) -> None:
    state = {}
    for name, value in model.state_dict().items():
        state[name] = value.bfloat16() if value.is_floating_point() and "inv_freq" not in name else value
    torch.save(state, out / "pytorch_model.bin")
    torch.save({"videos": videos}, out / "official_outputs.pt")
    meta = {
        "official_repository": "SitongGong/VRS-HQ",
        "official_commit": args.official_commit,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "seed": SEED,
        "frame_size": [HEIGHT, WIDTH],
        "llm": dict(LLM, vocab_size=base_vocab, seg_token_id=seg_id, tak_token_id=tak_id),
        "vision_tower": dict(TOWER, select_layer=-2, shortest_edge=CLIP_SIZE, crop_size=CLIP_SIZE,
                             cluster_counts=[64, 32, 16], knn_k=[5, 3, 3]),
        "anchor": {"text": anchor_text_cfg, "vision": ANCHOR_VISION, "projection_dim": 32,
                   "shortest_edge": ANCHOR_SIZE, "crop_size": ANCHOR_SIZE},
        "sam2": SAM2,
        "method": {"tda_alpha": 0.1, "max_frames": 12, "seg_embed_dim": SAM2["d_model"]},
        "weights_dtype": "bfloat16 (inv_freq float32); the official model ran on their float32 values",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of SitongGong/VRS-HQ")
    parser.add_argument("--official-commit", default=None, help="its commit (read with git when omitted)")
    parser.add_argument("--out", required=True, help="fixture folder to (re)write")
    args = parser.parse_args(argv)
    if not (args.official / "model" / "VISA_multiseg_cliptree_bf16.py").is_file():
        parser.error(f"--official {args.official}: no model/VISA_multiseg_cliptree_bf16.py there")
    if args.official_commit is None:
        try:
            args.official_commit = subprocess.run(["git", "-C", str(args.official), "rev-parse", "HEAD"],
                                                  check=True, capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            parser.error("--official-commit is required when the checkout is not a git work tree")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    run_official(args)


if __name__ == "__main__":
    main()
