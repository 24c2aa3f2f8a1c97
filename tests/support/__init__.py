"""What the tests need beside the product: checkouts' paths, the Hub stand-in, tiny checkpoints."""
