"""Load a release-format folder with the release path and segment one 720p video: load time and memory.

Writes random tensors in the layout of the released VRS-HQ-7B (official key names, two
``pytorch_model-0000N-of-00002.bin`` shards with ``pytorch_model.bin.index.json``, the LLM, CLIP tower and
projector in bf16, SAM2 and ``text_hidden_fcs`` in fp32, 4.31's ``inv_freq`` buffers, a Chat-UniVi
``config.json``, slow LLaMA tokenizer files) and a CLIP-336 anchor folder (fp32 ``pytorch_model.bin``,
as ``openai/clip-vit-large-patch14-336``), in a child process so that writing does not count in this
process's peak memory. Then loads them with :func:`vrshq.checkpoint.release.load_release` (the path of
``jobs.infer --checkpoint``; parameters created on the meta device, shards memory-mapped and each tensor
materialised on the device) and segments one synthetic video (``--frames`` frames at ``--height`` x
``--width``, ``--expressions`` expressions), resized to the SAM2 size as the pipeline does.

Run (GPU, full size; writes ~16 GB under --dir once, reused by later runs)::

    python -m benchmarks.release_load --preset vrshq-7b --dir /tmp/vrshq-release-7b
    python -m benchmarks.release_load --preset tiny --dir /tmp/vrshq-release-tiny --frames 6   # CPU check

Prints the load time (build on empty weights; file read; tensor copy to the device; the rest), the
time to the first mask and to all masks, and the peak host memory (max RSS) and peak GPU memory, one
``name: value`` line each, then the same as one JSON line.

``--compare`` first loads the same folders twice more, each in a fresh child process: this path, and
the plain one (the model built with random weights on the CPU in float32, every shard read whole,
converted, copied in, cast and moved to the device), and prints their load times and peak host
memory with the ratio plain / streamed. At 7B the plain load needs ~45 GB of host memory (a float32
model plus the bf16 tensors) and its random init takes minutes on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["main", "release_preset_config", "write_release"]

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TOKENIZER = _REPO / "tests" / "fixtures" / "slow_llama_tokenizer"  # a 400-piece slow LLaMA tokenizer
_TOKENIZER_FILES = ("tokenizer.model", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json")
_FP32_PREFIXES = ("model.visual_model.", "model.text_hidden_fcs.")
_DONE = "WRITTEN"


def release_preset_config(preset: str):
    """The preset's ``VrshqConfig`` with the LLaMA tokenizer kind (the release's) and no weight paths."""
    from vrshq.builders import tiny_config, vrshq_7b_config

    if preset == "vrshq-7b":
        return vrshq_7b_config()
    cfg = tiny_config(trainable="none")
    return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=400, tokenizer="llama"))


def _random_like(name: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Norm weights 1, biases 0, other weights N(0, 0.02): a random model whose activations stay finite."""
    leaf = name.rsplit(".", 1)[-1]
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if leaf == "bias":
        return torch.zeros(shape, dtype=dtype)
    if "norm" in name and leaf == "weight":
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def _official_layout(cfg) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], object]:
    """Official name -> (shape, release dtype) of the model of ``cfg``, and its (meta) anchor CLIP model."""
    from vrshq.builders import build_vrshq
    from vrshq.checkpoint.official_names import VRSHQ_ANCHOR_PREFIX, to_official_state_dict

    meta = build_vrshq(cfg, device="meta")
    state = {k: v for k, v in meta.state_dict().items() if not k.startswith(VRSHQ_ANCHOR_PREFIX)}
    layout = {}
    for key, tensor in to_official_state_dict(state).items():
        keep = key.startswith(_FP32_PREFIXES) or not tensor.is_floating_point()
        layout[key] = (tuple(tensor.shape), tensor.dtype if keep else torch.bfloat16)
    head = cfg.llm.hidden_size // cfg.llm.num_attention_heads
    for i in range(cfg.llm.num_hidden_layers):  # transformers 4.31 saved the RoPE buffers
        layout[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = ((head // 2,), torch.float32)
    return layout, meta.anchor.clip_model


def write_release(folder: pathlib.Path, preset: str, *, seed: int = 0) -> None:
    """Write the release folder (``folder/release``) and the anchor folder (``folder/anchor``)."""
    from vrshq.model.clip_preprocess import build_tiny_clip_tokenizer
    from vrshq.model.tokenizer import TINY_EXPRESSION_WORDS

    cfg = release_preset_config(preset)
    layout, clip_meta = _official_layout(cfg)
    release, anchor = folder / "release", folder / "anchor"
    for path in (release, anchor):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    cut = cfg.llm.num_hidden_layers * 3 // 4  # the release: embeddings and layers 0-23 of 32 in shard 1
    first = [k for k in layout if k.startswith("model.embed_tokens.") or
             (k.startswith("model.layers.") and int(k.split(".")[2]) < cut)]
    shards = {"pytorch_model-00001-of-00002.bin": first,
              "pytorch_model-00002-of-00002.bin": [k for k in layout if k not in set(first)]}
    total = 0
    for name, keys in shards.items():
        part = {k: _random_like(k, *layout[k], generator) for k in keys}
        total += sum(t.numel() * t.element_size() for t in part.values())
        torch.save(part, release / name)
        del part
    index = {"metadata": {"total_size": total}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (release / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    llm = cfg.llm
    (release / "config.json").write_text(json.dumps({
        "architectures": ["ChatUniViLlamaForCausalLM"], "model_type": "ChatUniVi", "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size, "num_attention_heads": llm.num_attention_heads,
        "num_hidden_layers": llm.num_hidden_layers, "num_key_value_heads": llm.num_key_value_heads,
        "max_position_embeddings": llm.max_position_embeddings, "rms_norm_eps": llm.rms_norm_eps,
        "vocab_size": llm.vocab_size + 2, "torch_dtype": "bfloat16", "transformers_version": "4.31.0",
        "mm_use_im_start_end": True, "mm_vision_select_layer": cfg.vision.select_layer,
        "mm_vision_tower": "openai/clip-vit-large-patch14", "tie_word_embeddings": False,
    }, indent=2))
    for name in _TOKENIZER_FILES:
        shutil.copy(_TOKENIZER / name, release / name)
    clip_meta.config.to_json_file(str(anchor / "config.json"))
    clip_state = {k: _random_like(k, tuple(v.shape), v.dtype, generator) for k, v in clip_meta.state_dict().items()}
    torch.save(clip_state, anchor / "pytorch_model.bin")
    build_tiny_clip_tokenizer(TINY_EXPRESSION_WORDS).save_pretrained(str(anchor))
    image = cfg.anchor.image
    (anchor / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": image.shortest_edge},
        "crop_size": {"height": image.crop_size, "width": image.crop_size}, "image_mean": list(image.mean),
        "image_std": list(image.std), "do_resize": True, "do_center_crop": True, "do_normalize": True,
    }))
    (folder / _DONE).write_text(preset + "\n")


def _synthetic_video(frames: int, height: int, width: int) -> np.ndarray:
    """A moving bright square on a gradient, uint8 (T, H, W, 3)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), np.full_like(xx, 60)], -1)
    video = np.repeat(base[None].astype(np.uint8), frames, axis=0)
    side = max(2, height // 5)
    for t in range(frames):
        x = (t * width // max(1, frames)) % max(1, width - side)
        video[t, height // 3:height // 3 + side, x:x + side] = (250, 30, 30)
    return video


def _load_streamed(release: str, anchor: str, config, device: torch.device, dtype: torch.dtype):
    from vrshq.checkpoint.release import load_release

    return load_release(release, config, anchor=anchor, device=device, dtype=dtype)


def _load_plain(release: str, anchor: str, config, device: torch.device, dtype: torch.dtype):
    """The load without streaming: a random-init float32 model on the CPU, all tensors in memory at once."""
    from vrshq.builders import build_vrshq
    from vrshq.checkpoint.load import load_state_dict_into
    from vrshq.checkpoint.weight_files import read_state_dict
    from vrshq.checkpoint.official_names import OFFICIAL_ANCHOR_PREFIX, convert_official_state_dict

    model = build_vrshq(config)
    tensors = read_state_dict(release)
    tensors = {k: v.clone() for k, v in tensors.items()}  # read whole, as torch.load without mmap does
    tensors.update({OFFICIAL_ANCHOR_PREFIX + k: v.clone() for k, v in read_state_dict(anchor).items()})
    load_state_dict_into(model, convert_official_state_dict(tensors), source=release)
    del tensors
    return model.to(device=device, dtype=dtype).eval()


def _load_only(mode: str, folder: pathlib.Path, preset: str, device: torch.device) -> dict:
    """Load the folders with ``mode`` in this (fresh) process: seconds and peak memory."""
    from vrshq.checkpoint.release import release_vrshq_config

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    release, anchor = str(folder / "release"), str(folder / "anchor")
    start = time.perf_counter()
    config = release_vrshq_config(release, release_preset_config(preset), anchor=anchor)
    model = (_load_streamed if mode == "streamed" else _load_plain)(release, anchor, config, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"mode": mode, "load_s": round(time.perf_counter() - start, 2), "peak_host_rss_gb": round(_max_rss_gb(), 3),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else 0.0,
            "parameters": sum(p.numel() for p in model.parameters())}


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")])}


def _compare(folder: pathlib.Path, preset: str, device_name: str) -> dict:
    """Both loads, each in a fresh child process (so each peak RSS is its own); the ratios plain / streamed."""
    rows = {}
    for mode in ("streamed", "plain"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.release_load", "--preset", preset, "--dir", str(folder),
                              "--device", device_name, "--load-only", mode], check=True, cwd=_REPO, env=_child_env(),
                             capture_output=True, text=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    streamed, plain = rows["streamed"], rows["plain"]
    return {"streamed": streamed, "plain": plain,
            "peak_host_rss_ratio_plain_over_streamed": round(plain["peak_host_rss_gb"] / streamed["peak_host_rss_gb"], 2),
            "load_time_ratio_plain_over_streamed": round(plain["load_s"] / streamed["load_s"], 2)}


def _max_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("vrshq-7b", "tiny"), default="vrshq-7b")
    parser.add_argument("--dir", required=True, help="folder for the written release and anchor (reused)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--expressions", type=int, default=2, choices=(1, 2))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--rewrite", action="store_true", help="write the folders again even if present")
    parser.add_argument("--compare", action="store_true",
                        help="also load with the plain (non-streamed) path, each load in a fresh process")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load-only", choices=("streamed", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = pathlib.Path(args.dir)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.write_only:
        write_release(folder, args.preset)
        return 0
    if args.load_only:
        print(json.dumps(_load_only(args.load_only, folder, args.preset, device)))
        return 0
    done = folder / _DONE
    if args.rewrite or not done.is_file() or done.read_text().strip() != args.preset:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.release_load", "--preset", args.preset, "--dir", str(folder),
                        "--write-only"], check=True, cwd=_REPO, env=_child_env())
        print(f"wrote the release-format folders in {time.perf_counter() - start:.1f} s (child process)")
    comparison = None
    if args.compare:
        comparison = _compare(folder, args.preset, str(device))
        for mode in ("streamed", "plain"):
            print(f"{mode} load (fresh process): {comparison[mode]['load_s']} s, peak host RSS "
                  f"{comparison[mode]['peak_host_rss_gb']} GB, peak GPU {comparison[mode]['peak_gpu_gb']} GB")
        print(f"peak host RSS plain / streamed: {comparison['peak_host_rss_ratio_plain_over_streamed']}x; "
              f"load time plain / streamed: {comparison['load_time_ratio_plain_over_streamed']}x")

    from pipelines.inference.video_io import resize_frames
    from vrshq.checkpoint.release import load_release, release_vrshq_config

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    release, anchor = str(folder / "release"), str(folder / "anchor")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    config = release_vrshq_config(release, release_preset_config(args.preset), anchor=anchor)
    model = load_release(release, config, anchor=anchor, device=device, dtype=dtype, timings=timings)
    load_s = time.perf_counter() - start
    rss_after_load = _max_rss_gb()
    gpu_after_load = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0

    video = _synthetic_video(args.frames, args.height, args.width)
    expressions = ["the red square moving right", "which object moves across the frame?"][: args.expressions]
    frames = resize_frames(video, max_side=config.sam2.image_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    results = model.segment_video(frames, expressions, output_hw=(args.height, args.width))
    first_index, first_chunk = next(iter(results[0].iter_mask_chunks()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_mask_s = time.perf_counter() - start
    masked = sum(int(np.asarray(chunk).sum()) for r in results for _, chunk in r.iter_mask_chunks())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    all_masks_s = time.perf_counter() - start
    row = {
        "preset": args.preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "parameters": sum(p.numel() for p in model.parameters()),
        "load_s": round(load_s, 2), "build_s": round(timings["build"], 2), "read_s": round(timings["read"], 2),
        "copy_to_device_s": round(timings["copy"], 2), "finish_s": round(timings["finish"], 2),
        "frames": args.frames, "height": args.height, "width": args.width, "expressions": len(expressions),
        "first_mask_s": round(first_mask_s, 2), "all_masks_s": round(all_masks_s, 2),
        "first_mask_frame": int(first_index), "first_chunk_frames": int(len(first_chunk)), "mask_pixels": masked,
        "peak_host_rss_gb_after_load": round(rss_after_load, 2), "peak_host_rss_gb": round(_max_rss_gb(), 2),
        "peak_gpu_gb_after_load": round(gpu_after_load, 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else 0.0,
    }
    if comparison is not None:
        row["compare"] = comparison
    for key, value in row.items():
        print(f"{key}: {value}")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
