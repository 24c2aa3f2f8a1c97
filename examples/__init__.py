"""The bundled example configurations (lmtp-cog ships them as ``lmtp_cog.examples``)."""
