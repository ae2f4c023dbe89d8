"""Serving engines: what vLLM can load (constraints) and vLLM as a measurement engine (vllm)."""
