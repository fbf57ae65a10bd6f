"""Text: the frozen BERT-family encoder, its Hugging Face files, tokenizers."""
