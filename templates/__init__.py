"""The Jinja2 templates of a generated Cog project (lmtp-cog ships them as ``lmtp_cog.templates``)."""
