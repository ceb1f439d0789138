"""greengate's bundled inference engine: a paged-KV decoder in plain PyTorch.

Model side (config, model, kv_cache, attention, loader, tokenizer, sampler, runner, checkpoint)
turns a flat batch of tokens from many sequences into logits over a block-paged KV cache; the
serving side (sequence, block_manager, scheduler, engine) decides which tokens run each step.
Nothing here does work at import time.
"""
