"""The predictor runtime (``lmtp_runtime``, a package of its own) and ``requirements.txt``, the one
place the image's Python packages are pinned (lmtp-cog ships it as ``lmtp_cog.predictors``)."""
