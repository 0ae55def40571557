"""Generation: samplers, the XLA-compiled decode loop, stop sequences and streaming."""
