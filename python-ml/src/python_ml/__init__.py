"""RAG and embeddings services the gateway fronts."""
