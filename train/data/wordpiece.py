"""WordPiece tokenisation of a text corpus with the ``tokenizers`` library, cached as token-id tensors.

``tokenizer: bert`` uses the BERT (bert-base-uncased) vocabulary when its vocab.txt is cached at
``$PAPERZOO_CACHE/bert-base-uncased/vocab.txt`` (30,522 pieces, as the Grassmann paper) and otherwise trains a
WordPiece vocabulary of ``vocab_size`` on the training split; ``tokenizer: wordpiece`` always trains one.
Either way the normaliser (lower case, accents stripped) and pre-tokeniser are BERT's.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KINDS = ("bert", "wordpiece")


def bert_vocab_file() -> Path:
    from weights.manifest import cache_dir

    return cache_dir() / "bert-base-uncased" / "vocab.txt"


def _bert_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def train_wordpiece(text: str, vocab_size: int) -> Tokenizer:
    """A WordPiece tokenizer with ``vocab_size`` pieces (special tokens first: [PAD]=0 ... [MASK]=4) trained on
    the non-empty lines of ``text``."""
    tokenizer = _bert_pipeline(Tokenizer(WordPiece(unk_token="[UNK]")))
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    tokenizer.train_from_iterator((line for line in text.splitlines() if line.strip()), trainer)
    return tokenizer


def make_tokenizer(kind: str, train_text: str, vocab_size: int) -> Tokenizer:
    if kind not in KINDS:
        raise ValueError(f"data.tokenizer must be one of {KINDS}, got {kind!r}")
    vocab = bert_vocab_file()
    if kind == "bert" and vocab.is_file():
        return _bert_pipeline(Tokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]")))
    if kind == "bert":
        print(f"BERT vocabulary not cached at {vocab}; training a WordPiece vocabulary of {vocab_size} instead",
              file=sys.stderr)
    return train_wordpiece(train_text, vocab_size)


def encode(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """Token ids of every non-empty line, each line followed by [SEP], as one int64 stream."""
    sep = tokenizer.token_to_id("[SEP]")
    lines = [line for line in text.splitlines() if line.strip()]
    ids = [i for enc in tokenizer.encode_batch(lines, add_special_tokens=False) for i in enc.ids + [sep]]
    return torch.tensor(ids, dtype=torch.long)


def tokenized_splits(name: str, settings: dict, read_splits: Callable[[], dict[str, str]], kind: str,
                     vocab_size: int) -> tuple[Tokenizer, dict[str, torch.Tensor]]:
    """Tokenizer and {split: ids} for a corpus, cached under ``$PAPERZOO_CACHE/lm/<name>-<hash of settings>``.

    ``read_splits`` is called only on a cache miss. A corrupt cache entry is rebuilt, never trusted.
    """
    from safetensors.torch import load_file

    from weights.checkpoint import atomic_write, save_safetensors
    from weights.manifest import cache_dir

    bert = kind == "bert" and bert_vocab_file().is_file()
    key = json.dumps({**settings, "tokenizer": kind, "bert_vocab": bert, "vocab_size": vocab_size}, sort_keys=True)
    folder = cache_dir() / "lm" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    tok_path, ids_path = folder / "tokenizer.json", folder / "tokens.safetensors"
    if tok_path.is_file() and ids_path.is_file():
        try:
            return Tokenizer.from_file(str(tok_path)), load_file(str(ids_path))
        except Exception:
            tok_path.unlink()
    texts = read_splits()
    tokenizer = make_tokenizer(kind, texts["train"], vocab_size)
    ids = {split: encode(tokenizer, text) for split, text in texts.items()}
    save_safetensors(ids, ids_path)
    atomic_write(tok_path, lambda tmp: tokenizer.save(tmp))
    return tokenizer, ids
