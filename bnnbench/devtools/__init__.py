"""Developer tools that are not part of training or CI (e.g. the mutation check)."""
