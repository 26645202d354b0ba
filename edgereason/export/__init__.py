"""Export: merge an adapter, convert and quantize with llama.cpp, verify every artifact, write the manifest."""
