"""The text path of a training batch written prompt by prompt: the baseline of the batched one.

Before the batched text path ``VrshqMLLM.build_inputs`` walked every id of every prompt in Python and made per-prompt
tensors, and ``VrshqModel`` gathered each prompt's `[SEG]` states, ran the seg head and padded them one prompt
at a time. A stage-G batch has 768 prompts, so a step dispatched ~120k operators (a kernel launch each on a
GPU) and the H200 ran it at ~1.4 s, far above its work. :func:`per_token_splice` and
:func:`per_prompt_text_path` are that way, rebuilt from the model's public parts; ``benchmarks.text_path_host``
times them against the batched code and checks equal outputs, and ``tests/unit/test_mllm.py`` uses the splice
as the reference of the batched layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from vrshq.model.mllm import MllmInputs
from vrshq.model.tda import temporal_dynamic_aggregation
from vrshq.model.tokens import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def per_token_splice(
    mllm, input_ids: Sequence[Sequence[int]], visual_tokens: Sequence[torch.Tensor],
    labels: Sequence[Sequence[int]] | None = None,
) -> MllmInputs:
    """``mllm.build_inputs`` (no input checks) as it was: the layout walked one id at a time in Python, per
    prompt its `[SEG]` positions and reshaped visual tokens; then one embedding lookup and two scatters."""
    embed = mllm.llm.get_input_embeddings()
    device = embed.weight.device
    k = mllm.tokens_per_frame
    seg_id, tak_id = mllm.token_ids.seg_token_id, mllm.token_ids.tak_token_id
    lengths, text_rows, text_cols, text_ids, vis_rows, vis_cols, segs, taks, label_rows = ([] for _ in range(9))
    for b, ids in enumerate(input_ids):
        lab = list(labels[b]) if labels is not None else [IGNORE_INDEX] * len(ids)
        pos, row_segs, row_labels = 0, [], []
        for t, label in zip(ids, lab):
            if t == IMAGE_TOKEN_INDEX:
                vis_rows.extend([b] * k)
                vis_cols.extend(range(pos, pos + k))
                row_labels.extend([IGNORE_INDEX] * k)
                pos += k
                continue
            text_rows.append(b)
            text_cols.append(pos)
            text_ids.append(t)
            if t == seg_id:
                row_segs.append(pos - 1)
            elif t == tak_id:
                taks.append(pos - 1)
            row_labels.append(label)
            pos += 1
        lengths.append(pos)
        segs.append(row_segs)
        label_rows.append(row_labels)
    max_len = max(lengths)
    text_embeds = embed(torch.tensor(text_ids, dtype=torch.long).to(device))
    embeds = text_embeds.new_zeros(len(lengths), max_len, text_embeds.shape[-1])
    embeds = embeds.index_put((torch.tensor(text_rows).to(device), torch.tensor(text_cols).to(device)), text_embeds)
    if vis_rows:
        visual = torch.cat([v.reshape(-1, v.shape[-1]) for v in visual_tokens if v.shape[0] > 0])
        embeds = embeds.index_put((torch.tensor(vis_rows).to(device), torch.tensor(vis_cols).to(device)),
                                  visual.to(device=device, dtype=text_embeds.dtype))
    mask = (torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]).long().to(device)
    padded = [r + [IGNORE_INDEX] * (max_len - len(r)) for r in label_rows]
    per_prompt = [torch.tensor(p, dtype=torch.long).to(device) for p in segs]  # as it was: a copy per prompt
    return MllmInputs(
        inputs_embeds=embeds,
        attention_mask=mask,
        labels=torch.tensor(padded, dtype=torch.long).to(device) if labels is not None else None,
        seg_rows=torch.tensor([b for b, s in enumerate(segs) for _ in s], dtype=torch.long).to(device),
        seg_cols=torch.cat(per_prompt),
        seg_counts=tuple(len(s) for s in segs),
        tak_positions=torch.tensor(taks, dtype=torch.long).to(device),
    )


def prompt_inputs(model, batch) -> tuple[list, list[torch.Tensor]]:
    """Per prompt of a video batch, its encoding and its clip's visual tokens (one tensor object per clip, shared
    by the clip's prompts), as ``VrshqModel.text_path`` assembles them."""
    visual_of = model._encode_visual_clips([video.frames for video in batch.videos])
    encoded, visual = [], []
    for video, vis in zip(batch.videos, visual_of):
        for prompt in video.prompts:
            encoded.append(model.encode_prompt(prompt))
            visual.append(vis)
    return encoded, visual


def per_prompt_text_path(model, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model.text_path(batch)`` of a video batch, prompt by prompt: the splice above, then per prompt its
    `[SEG]` states' gather and the seg head, ``pad_sequence`` and TDA. Returns ``(fused_tak, ce)``."""
    encoded, visual = prompt_inputs(model, batch)
    with model._autocast():
        inputs = per_token_splice(model.mllm, [e.input_ids for e in encoded], visual, [e.labels for e in encoded])
        per_prompt_positions = inputs.seg_positions
        out = model.mllm(inputs)
        hidden = out.hidden_states
        seg = [model.seg_head(hidden[b, pos]) for b, pos in enumerate(per_prompt_positions)]
        tak = model.seg_head(out.tak_hidden)
        lengths = torch.tensor([s.shape[0] for s in seg], device=tak.device)
        seg_pad = torch.nn.utils.rnn.pad_sequence([s.to(tak.dtype) for s in seg], batch_first=True)
        mask = torch.arange(seg_pad.shape[1], device=tak.device)[None, :] < lengths[:, None]
        tda = temporal_dynamic_aggregation(seg_pad, tak, alpha=model.cfg.method.tda_alpha, frame_mask=mask)
        image_rows = torch.tensor([s.shape[0] == 1 for s in seg], device=tak.device)  # 1-frame samples keep TAK
        fused_tak = torch.where(image_rows[:, None], tak.float(), tda.fused_tak)
    return fused_tak, out.ce_loss
