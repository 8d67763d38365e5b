"""Inside the transformer: tokens, embeddings, positions and attention of the suite's own models, and one block
written from scratch that matches the library's layer."""
