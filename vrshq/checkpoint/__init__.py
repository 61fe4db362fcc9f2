"""Checkpoints of vrshq models: safetensors through fsspec, strict by default, never unpickling.

A checkpoint is a self-contained folder, local or remote (any fsspec URI such as ``s3://bucket/run/step-100``)::

    <uri>/
      config.json                      the model's VrshqConfig and the checkpoint layout (CONFIG_NAME)
      model.safetensors                the weights (WEIGHTS_NAME), or for big models
      model-00001-of-00003.safetensors ... plus model.safetensors.index.json (WEIGHTS_INDEX_NAME), HF layout
      tokenizer.json, tokenizer_config.json, ...   the tokenizer (with [SEG]/[TAK]), if one was given

Three kinds of content are written (``content`` in the safetensors metadata and in ``config.json``):

* ``"full"``: every entry of ``model.state_dict()`` under its own name;
* ``"merged"``: the same with every LoRA adapter folded into its base weight (``W + scale * B @ A``)
  and the peft names (``base_model.model.``, ``.base_layer``, ``lora_*``) removed, so a model built
  without LoRA loads it;
* ``"trainable"``: only the parameters with ``requires_grad`` (what training changes: LoRA, heads, ...).
  Training writes these; inference loads ``[base_uri, trainable_uri]`` in one call, later files
  overriding earlier ones, and strictness is checked on the union.

Loading is strict (sam2's ``_load_checkpoint`` trait, but the keys are in the message): missing and
unexpected keys and shape mismatches (with both shapes) are collected first, from the safetensors
headers alone, and reported in one :class:`CheckpointMismatchError` before any weight is copied.
Pickle files (``.bin``/``.pt``/``.pth``/``.ckpt``, e.g. an official release) are read only with
``torch.load(weights_only=True)`` (memory-mapped where the file is local, so its pages are read as
tensors are copied); a file holding anything but tensors is refused with
:class:`UnsafeCheckpointError` and nothing in it is executed.

The released VRS-HQ weights use the official module names; load them with
:func:`vrshq.checkpoint.official_names.load_official_checkpoint`, which renames them first.

Example (tiny preset; on S3 pass ``storage_options`` and an ``s3://`` URI)::

    model = build_vrshq(tiny_config(trainable="lora"))
    save_vrshq_checkpoint(model, "/ckpt/step-100", trainable_only=True)      # training
Modules: :mod:`~vrshq.checkpoint.save` writes a folder, :mod:`~vrshq.checkpoint.load` reads one into a
model, :mod:`~vrshq.checkpoint.state` builds the state dicts, :mod:`~vrshq.checkpoint.weight_files` opens
safetensors and pickle files, :mod:`~vrshq.checkpoint.config_io` (de)serialises configs,
:mod:`~vrshq.checkpoint.official_names` renames the official release's keys and
:mod:`~vrshq.checkpoint.release` checks and loads a release folder.
"""
