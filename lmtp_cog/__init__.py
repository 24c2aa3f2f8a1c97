"""lmtp-cog: build Cog models for Replicate that serve LMQL's LMTP protocol."""

__version__ = "0.1.0"
