"""WordPiece tokenisation of a text corpus with the ``tokenizers`` library, cached as token-id tensors.

``tokenizer: bert`` uses the BERT (bert-base-uncased) vocabulary when its vocab.txt is cached at
``$PAPERZOO_CACHE/bert-base-uncased/vocab.txt`` (30,522 pieces, as the Grassmann paper) and otherwise trains a
WordPiece vocabulary of ``vocab_size`` on the training split; ``tokenizer: wordpiece`` always trains one; a path to
a tokenizer.json file uses that tokenizer. The first two use BERT's normaliser (lower case, accents stripped) and
pre-tokeniser.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import heapq
import json
import sys
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from safetensors.torch import load_file

from weights.checkpoint import atomic_write, save_safetensors
from weights.manifest import cache_dir, sha256_of

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KINDS = ("bert", "wordpiece")


def bert_vocab_file() -> Path:
    return cache_dir() / "bert-base-uncased" / "vocab.txt"


def _bert_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def word_counts(text: str) -> collections.Counter:
    """How often each word of BERT's normaliser and pre-tokeniser occurs in the non-empty lines of ``text``."""
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = collections.Counter()
    for line in text.splitlines():
        if line.strip():
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    return counts


def wordpiece_vocabulary(counts: dict[str, int], vocab_size: int) -> list[str]:
    """The pieces of a WordPiece vocabulary, learned as the ``tokenizers`` library's WordPieceTrainer does: words
    split into characters (later ones with the ``##`` prefix), then the most frequent adjacent pair merged until
    ``vocab_size`` pieces (special tokens, then every character alone and as it occurs after the first, then the
    merges in order). Ties go to the pair that sorts first, so the same text gives the same vocabulary in every
    process; the library's trainer breaks them by hash order (three processes gave three vocabularies of the pytext
    corpus)."""
    words = sorted(counts)
    freq = [counts[w] for w in words]
    seqs = [[w[0], *("##" + c for c in w[1:])] for w in words]
    alphabet = {piece for seq in seqs for piece in seq} | {c for w in words for c in w}  # every character plain too
    vocab = [*SPECIAL, *sorted(alphabet - set(SPECIAL))]
    known = set(vocab)
    pairs, holding = collections.Counter(), collections.defaultdict(set)  # pair -> count, pair -> word indices
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pairs[pair] += freq[i]
            holding[pair].add(i)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        count, pair = heapq.heappop(heap)
        if pairs.get(pair) != -count:  # an entry from before the pair's count changed
            continue
        first, second = pair
        merged = first + second[2:]
        changed = set()
        for i in sorted(holding.pop(pair)):
            seq, f = seqs[i], freq[i]
            for old in zip(seq, seq[1:]):
                pairs[old] -= f
                changed.add(old)
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == first and seq[j + 1] == second:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for new in zip(out, out[1:]):
                pairs[new] += f
                holding[new].add(i)
                changed.add(new)
        del pairs[pair]
        for other in changed - {pair}:
            if pairs[other] > 0:
                heapq.heappush(heap, (-pairs[other], other))
            else:
                del pairs[other]
                holding.pop(other, None)
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
    return vocab


def train_wordpiece(text: str, vocab_size: int) -> Tokenizer:
    """A WordPiece tokenizer with ``vocab_size`` pieces (special tokens first: [PAD]=0 ... [MASK]=4) trained on
    the non-empty lines of ``text`` (``wordpiece_vocabulary``: the same pieces and ids from the same text)."""
    pieces = wordpiece_vocabulary(word_counts(text), vocab_size)
    return _bert_pipeline(Tokenizer(WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]")))


def tokenizer_source(kind: str, vocab_size: int) -> tuple[dict, Callable[[str], Tokenizer]]:
    """What identifies the tokenizer (for the token cache: a file by its content) and how to make it from the
    training text. ``kind``: ``bert``, ``wordpiece`` or a tokenizer.json file (a run's own, which ``zoo eval``
    passes so that other data is read with the pieces the model was trained on)."""
    vocab = bert_vocab_file()
    if kind == "bert" and vocab.is_file():
        return ({"bert_vocab": sha256_of(vocab)},
                lambda text: _bert_pipeline(Tokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]"))))
    if kind not in KINDS:
        path = Path(str(kind)).expanduser()
        if not path.is_file():
            raise ValueError(f"data.tokenizer must be one of {KINDS} or a tokenizer.json file, got {kind!r}"
                             + (" (no such file)" if path.suffix == ".json" else ""))
        try:
            given = Tokenizer.from_file(str(path))
        except Exception as err:
            raise ValueError(f"data.tokenizer {path} is not a tokenizers JSON file: {err}") from err
        if given.token_to_id("[SEP]") is None:  # encode() ends every line with it
            raise ValueError(f"data.tokenizer {path} has no [SEP] piece, which the LM tasks put after every line; "
                             "add it (tokenizer.add_special_tokens(['[SEP]']) before saving) or use "
                             f"data.tokenizer: {' or '.join(KINDS)}")
        return {"tokenizer_file": sha256_of(path)}, lambda text: given

    def train(text: str) -> Tokenizer:
        if kind == "bert":
            print(f"BERT vocabulary not cached at {vocab}; training a WordPiece vocabulary of {vocab_size} instead",
                  file=sys.stderr)
        return train_wordpiece(text, vocab_size)

    # "trainer": entries cached before the trainer was deterministic are not reused
    return {"tokenizer": kind, "vocab_size": vocab_size, "trainer": "sorted-ties"}, train


def encode(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """Token ids of every non-empty line, each line followed by [SEP], as one int64 stream."""
    sep = tokenizer.token_to_id("[SEP]")
    lines = [line for line in text.splitlines() if line.strip()]
    ids = [i for enc in tokenizer.encode_batch(lines, add_special_tokens=False) for i in enc.ids + [sep]]
    return torch.tensor(ids, dtype=torch.long)


def cache_folder(name: str, identity: dict) -> Path:
    """``$PAPERZOO_CACHE/lm/<name>-<hash of identity>``: the cache entry of a corpus read with a tokenizer."""
    key = json.dumps(identity, sort_keys=True)
    return cache_dir() / "lm" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def _one_at_a_time(folder: Path):
    """Hold an exclusive lock on the cache entry ``folder``: processes that build it at once (torchrun's ranks) take
    turns, and the later ones read what the first built, the same tokenizer and ids for all."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def tokenized_splits(name: str, settings: dict, read_splits: Callable[[], dict[str, str]], kind: str,
                     vocab_size: int) -> tuple[Tokenizer, dict[str, torch.Tensor]]:
    """Tokenizer and {split: ids} for a corpus, cached under ``$PAPERZOO_CACHE/lm/<name>-<hash of settings>``.

    ``read_splits`` is called only on a cache miss. A corrupt cache entry is rebuilt, never trusted.
    """
    identity, make = tokenizer_source(kind, vocab_size)
    folder = cache_folder(name, {**settings, **identity})
    tok_path, ids_path = folder / "tokenizer.json", folder / "tokens.safetensors"
    with _one_at_a_time(folder):
        if tok_path.is_file() and ids_path.is_file():
            try:
                return Tokenizer.from_file(str(tok_path)), load_file(str(ids_path))
            except Exception:
                tok_path.unlink()
        texts = read_splits()
        tokenizer = make(texts["train"])
        ids = {split: encode(tokenizer, text) for split, text in texts.items()}
        save_safetensors(ids, ids_path)
        atomic_write(tok_path, lambda tmp: tokenizer.save(tmp))
        return tokenizer, ids
