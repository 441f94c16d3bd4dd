import collections
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import zoo
from train import fit, load_recipe
from train.data.pytext import pydoc_topics, pytext_splits, split_of
from train.cli import _recipe_for
from train.data.wordpiece import SPECIAL, encode, train_wordpiece
from train.tasks import make_task
from weights import load_checkpoint

from .conftest import NLI_WORDS, free_port, random_snli_rows, write_snli

ENCODER = {"model_type": "distilbert", "vocab_size": 100, "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64,
           "max_position_embeddings": 64}
TINY_LM = ["model_args.num_hidden_layers=1", "model_args.hidden_size=32", "model_args.intermediate_size=64",
           "model_args.vocab_size=1000", "data.vocab_size=1000", "data.docstrings=false", "task_args.seq_len=32",
           "task_args.eval_tokens=1024", "train.steps=30", "train.batch_size=8", "train.eval_every=0",
           "train.ckpt_every=0", "train.log_every=10", "schedule.warmup=5", "optim.lr=3.0e-3"]
# the Grassmann head's own size (the Transformer head refuses settings it does not use)
HEAD_ONLY = {"grassmann_nli_head": {"reduced_dim": 6}}


def test_pytext_split_is_deterministic_and_partitions_the_documents():
    ids = [doc_id for doc_id, _ in pydoc_topics()]
    assert len(ids) > 50
    assignment = [split_of(i, 0.1, 0.1) for i in ids]
    assert assignment == [split_of(i, 0.1, 0.1) for i in ids]
    # pinned values: the split depends on the id's sha256 only, never on the process (Python's hash() is salted)
    assert [split_of(f"topic:{n}", 0.1, 0.1) for n in (3, 4, 12, 15, 16)] == ["train", "test", "valid", "test", "valid"]
    assert {"train", "valid", "test"} == set(assignment)
    splits = pytext_splits(docstrings=False, valid=0.1, test=0.1)
    words = {s: len(t.split()) for s, t in splits.items()}
    assert 50_000 < sum(words.values()) < 90_000  # the pydoc topics: about 65k words
    assert words["train"] > 5 * words["valid"] > 0 and words["test"] > 0


def test_pytext_copies_of_a_document_share_a_split(monkeypatch):
    """The stdlib repeats some docstrings verbatim under other ids; a split by id put copies in train and test."""
    import train.data.pytext as pytext

    texts = [f"document number {i} about nothing" for i in range(100)]
    docs = [(f"doc:a.py:f:{i}", t) for i, t in enumerate(texts)] + [(f"doc:b.py:g:{i}", t) for i, t in enumerate(texts)]
    monkeypatch.setattr(pytext, "pydoc_topics", lambda: docs)
    splits = pytext_splits(docstrings=False, valid=0.2, test=0.2)
    homes = [[s for s, text in splits.items() if t in text.split("\n\n")] for t in texts]
    assert all(len(h) == 1 for h in homes) and {h[0] for h in homes} == {"train", "valid", "test"}
    assert all(splits[h[0]].split("\n\n").count(t) == 2 for h, t in zip(homes, texts))


def test_trained_wordpiece_tokenizer():
    tok = train_wordpiece(pytext_splits(docstrings=False)["train"], vocab_size=800)
    assert tok.get_vocab_size() == 800
    assert [tok.token_to_id(s) for s in SPECIAL] == [0, 1, 2, 3, 4]
    enc = tok.encode("The Return statement", add_special_tokens=False)
    assert tok.decode(enc.ids) == "the return statement"


def test_wordpiece_training_merges_the_most_frequent_pair_as_the_tokenizers_trainer_does():
    """On words whose pair counts never tie (abc x5, abd x3, cd x2: pairs a##b 8, then ab##c 5, ab##d 3, c##d 2)
    the vocabulary equals the one of the tokenizers library's WordPieceTrainer: the same characters, alone and
    with ##, and the same merges in the same order. Ties go to the pair that sorts first (ab before cd)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    from train.data.wordpiece import _bert_pipeline, word_counts, wordpiece_vocabulary

    text = "\n".join(["abc"] * 5 + ["abd"] * 3 + ["cd"] * 2)
    ours = wordpiece_vocabulary(word_counts(text), 16)
    assert ours == [*SPECIAL, "##b", "##c", "##d", "a", "b", "c", "d", "ab", "abc", "abd", "cd"]
    theirs = _bert_pipeline(Tokenizer(WordPiece(unk_token="[UNK]")))
    theirs.train_from_iterator(text.splitlines(), WordPieceTrainer(vocab_size=16, special_tokens=SPECIAL,
                                                                   show_progress=False))
    vocab = theirs.get_vocab()
    theirs = sorted(vocab, key=vocab.get)
    assert theirs[:5] == SPECIAL and set(theirs[5:12]) == set(ours[5:12])  # its alphabet's order varies by run
    assert theirs[12:] == ours[12:]
    assert wordpiece_vocabulary({"ab": 1, "cd": 1}, 12)[-1] == "ab"  # 5 special, 6 characters, 1 merge
    assert wordpiece_vocabulary({"cd": 1, "ab": 1}, 12)[-1] == "ab"


def _wordpiece_by_recounting(counts, vocab_size):
    """WordPiece training written the slow way: every round recounts all adjacent pairs (weighted by word
    frequency) and merges the most frequent one, ties to the pair that sorts first, left to right in every word."""
    words = sorted(counts)
    seqs = [[w[0], *("##" + c for c in w[1:])] for w in words]
    vocab = [*SPECIAL, *sorted({p for seq in seqs for p in seq} | {c for w in words for c in w})]
    while len(vocab) < vocab_size:
        pairs = collections.Counter()
        for word, seq in zip(words, seqs):
            for pair in zip(seq, seq[1:]):
                pairs[pair] += counts[word]
        if not pairs:
            break
        first, second = min(pairs, key=lambda pair: (-pairs[pair], pair))
        for i, seq in enumerate(seqs):
            out, j = [], 0
            while j < len(seq):
                if seq[j:j + 2] == [first, second]:
                    out.append(first + second[2:])
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
        if first + second[2:] not in vocab:
            vocab.append(first + second[2:])
    return vocab


def test_wordpiece_training_equals_recounting_every_pair_each_round():
    """The trainer keeps pair counts in a heap and updates only the pairs a merge touched; on tie-heavy corpora
    (three letters, counts 1 to 3) it learns the same pieces in the same order as recounting every round."""
    from train.data.wordpiece import wordpiece_vocabulary

    rng = np.random.default_rng(0)
    for _ in range(30):
        words = {"".join(rng.choice(list("abc"), rng.integers(1, 7))) for _ in range(rng.integers(5, 25))}
        counts = {w: int(rng.integers(1, 4)) for w in words}
        size = int(rng.integers(12, 60))
        assert wordpiece_vocabulary(counts, size) == _wordpiece_by_recounting(counts, size), counts


def test_wordpiece_training_gives_the_same_vocabulary_in_every_process():
    """The tokenizers library's trainer breaks ties by hash order, so every process (a fresh machine, a second
    run) trained other pieces and numbers, and an LM run could not be repeated elsewhere; ours does not depend on
    Python's hash seed either."""
    code = ("import json; from train.data.pytext import pydoc_topics; from train.data.wordpiece import train_wordpiece; "
            "text = '\\n'.join(t for _, t in pydoc_topics()[:40]); "
            "print(json.dumps(train_wordpiece(text, 600).get_vocab(), sort_keys=True))")
    vocabs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert vocabs[0] == vocabs[1] and len(json.loads(vocabs[0])) == 600


def test_lm_recipes_share_budget_and_seeds():
    g, t = load_recipe("grassmann-lm-pytext"), load_recipe("transformer-lm-pytext")
    for key in ("data", "task_args", "optim", "schedule", "train", "model_args"):
        assert g[key] == t[key]
    assert (g["model"], t["model"]) == ("grassmann_lm_13m", "transformer_lm_13m")


@pytest.mark.filterwarnings("ignore:task 'lm' does not use data.docstrings")
def test_validation_loss_is_the_models_own_next_token_loss_over_windows():
    """valid_loss is the mean next-token cross-entropy that transformers' labels= loss gives each window (T - 1
    predictions per window of T tokens), averaged over the windows, and valid_ppl its exponential."""
    recipe = load_recipe("grassmann-lm-pytext", TINY_LM)
    task = make_task(recipe)
    torch.manual_seed(0)
    model = zoo.create_model(recipe["model"], **recipe["model_args"]).eval()
    T = task.seq_len
    ids = task.valid_ids[: 6 * T]
    with torch.no_grad():
        expected = torch.stack([model(input_ids=w[None], labels=w[None]).loss for w in ids.view(-1, T)]).mean()
    assert task.stream_loss(model, ids) == pytest.approx(expected.item(), rel=1e-5)
    metrics = task.evaluate(model)
    assert metrics["valid_ppl"] == pytest.approx(math.exp(metrics["valid_loss"]))


@pytest.mark.filterwarnings("ignore:task 'lm' does not use data.docstrings")  # pytext's key, kept for wikitext
def test_lm_task_batches_and_training_lowers_perplexity(tmp_path, capsys):
    recipe = load_recipe("grassmann-lm-pytext", TINY_LM)
    task = make_task(recipe)
    b1, b2 = (task.batch(4, torch.Generator().manual_seed(7)) for _ in range(2))
    assert b1["input_ids"].shape == (4, 32) and torch.equal(b1["input_ids"], b2["input_ids"])
    torch.manual_seed(0)
    untrained = zoo.create_model(recipe["model"], **recipe["model_args"]).eval()
    before = task.evaluate(untrained)["valid_ppl"]
    assert before == pytest.approx(1000, rel=0.5)  # close to uniform over the vocabulary
    after = fit(recipe, out=tmp_path / "run")
    assert after["valid_ppl"] < before / 2 and math.isfinite(after["test_ppl"])
    assert (tmp_path / "run" / "samples.txt").read_text().count("PROMPT:") == 3
    # zoo eval on other data reads it with the run's own tokenizer (a new one would renumber the pieces)
    from tokenizers import Tokenizer

    from train.cli import main
    from train.data.wikitext import FILES

    saved = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
    assert saved.get_vocab() == task.tokenizer.get_vocab()
    text = " = Heading = \n the quick brown fox jumps over the lazy dog . \n" * 200
    for name in FILES.values():
        (tmp_path / name).write_text(text)
    other = ["data.source=wikitext2", f"data.path={tmp_path}"]
    wiki = make_task(_recipe_for(tmp_path / "run" / "model.safetensors", None, other)[0])
    assert wiki.tokenizer.get_vocab() == saved.get_vocab()
    assert torch.equal(wiki.train_ids[:12], encode(saved, text)[:12])
    main(["eval", str(tmp_path / "run"), *(f"--set={o}" for o in other)])
    assert math.isfinite(json.loads(capsys.readouterr().out)["test_ppl"])
    retrained = make_task(_recipe_for(tmp_path / "run" / "model.safetensors", None, other + ["data.tokenizer=wordpiece"])[0])
    assert retrained.tokenizer.get_vocab() != saved.get_vocab()  # --set data.tokenizer still chooses
    loose = tmp_path / "loose" / "model.safetensors"  # a checkpoint copied out of its run
    loose.parent.mkdir()
    loose.write_bytes((tmp_path / "run" / "model.safetensors").read_bytes())
    with pytest.warns(UserWarning, match="holds no tokenizer.json, so data.tokenizer is built again"):
        _recipe_for(loose, "grassmann-lm-pytext", [])
    (loose.parent / "tokenizer.json").write_text((tmp_path / "run" / "tokenizer.json").read_text())
    assert _recipe_for(loose, "grassmann-lm-pytext", [])[0]["data"]["tokenizer"] == str(loose.parent / "tokenizer.json")
    # the whole data section given as a mapping chooses too
    assert _recipe_for(loose, "grassmann-lm-pytext", ["data={tokenizer: wordpiece}"])[0]["data"]["tokenizer"] == "wordpiece"


def test_vocab_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="set model_args.vocab_size"):
        make_task(load_recipe("grassmann-lm-pytext", TINY_LM + ["model_args.vocab_size=500"]))
    # an evaluation that would score no token is refused when the task is built, not by a ZeroDivisionError after
    # training
    with pytest.raises(ValueError, match=r"task_args.eval_tokens must be an integer >= 32 or null, got 16"):
        make_task(load_recipe("grassmann-lm-pytext", TINY_LM + ["task_args.eval_tokens=16"]))
    with pytest.raises(ValueError, match=r"task_args.seq_len must be an integer >= 2, got 1"):
        make_task(load_recipe("grassmann-lm-pytext", TINY_LM + ["task_args.seq_len=1"]))


@pytest.mark.parametrize("recipe, names", [
    ("grassmann-lm-wikitext2", ["wiki.train.tokens", "wikitext-2-v1.zip", "data.path"]),
    ("grassmann-lm-wikitext2-12l", ["wiki.valid.tokens", "data.path"]),
    ("transformer-lm-wikitext2-12l", ["wiki.valid.tokens", "data.path"]),
    ("grassmann-nli-snli", ["snli_1.0_train.jsonl", "snli_1.0.zip", "data.path"]),
])
def test_full_size_recipes_say_what_to_download(recipe, names, tmp_path):
    for overrides in ([], [f"data.path={tmp_path}"]):
        with pytest.raises(FileNotFoundError) as err:
            make_task(load_recipe(recipe, overrides))
        assert all(n in str(err.value) for n in names)


@pytest.mark.parametrize("grassmann, transformer, counts", [
    ("grassmann-lm-wikitext2", "transformer-lm-wikitext2", (13_001_920, 12_585_472)),
    ("grassmann-lm-wikitext2-12l", "transformer-lm-wikitext2-12l", (18_156_928 + 32_768, 17_324_032 + 32_768)),
])
def test_wikitext_recipe_pairs_share_the_budget_and_build_the_paper_models(grassmann, transformer, counts):
    """The paper's comparison: same data, sequence length, optimiser, schedule and steps for both models; the 12L
    pair trains at L = 256, so it has 256 position rows (128 x 256 = 32,768 parameters over the paper's count)."""
    recipes = [load_recipe(grassmann), load_recipe(transformer)]
    for key in ("data", "task_args", "optim", "schedule", "train"):
        assert recipes[0][key] == recipes[1][key], key
    for recipe, count in zip(recipes, counts):
        model = zoo.create_model(recipe["model"], **recipe.get("model_args", {}))
        assert model.config.max_position_embeddings >= recipe["task_args"]["seq_len"]
        assert sum(p.numel() for p in model.parameters()) == count


def test_wikitext_recipe_runs_when_the_data_is_given(tmp_path):
    text = "\n".join(" = Heading = \n the quick brown fox jumps over the lazy dog . " * 3 for _ in range(60))
    for split in ("train", "valid", "test"):
        (tmp_path / f"wiki.{split}.tokens").write_text(text)
    task = make_task(load_recipe("grassmann-lm-wikitext2", [f"data.path={tmp_path}", "task_args.seq_len=16"]))
    assert task.batch(2, torch.Generator().manual_seed(0))["input_ids"].shape == (2, 16)
    assert task.tokenizer.decode(task.train_ids[:4].tolist()).startswith("= heading =")


@pytest.mark.parametrize("name", ["grassmann_nli_head", "transformer_nli_head"])
def test_nli_head_trains_only_the_head_and_ignores_padding(name):
    torch.manual_seed(0)
    model = zoo.create_model(name, encoder_config=ENCODER, hidden_size=32, intermediate_size=64,
                             **HEAD_ONLY.get(name, {}))
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    ids = torch.randint(5, 100, (4, 10))
    model.eval()
    logits = model(ids).logits
    padded = torch.cat([ids, torch.zeros(4, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(4, 10), torch.zeros(4, 6)], 1).long()
    assert logits.shape == (4, 3) and torch.allclose(model(padded, mask).logits, logits, atol=1e-5)
    # left padding: the encoder (DistilBERT, learned positions) and the head get positions counted over real tokens
    left = torch.cat([torch.zeros(4, 6, dtype=torch.long), ids], 1)
    assert torch.allclose(model(left, mask.flip(1)).logits, logits, atol=1e-5)
    with pytest.raises(ValueError, match="NLI head: attention_mask has padding between real tokens"):
        model(padded, torch.cat([mask[:, :8], mask.flip(1)[:, :8]], 1))
    both = torch.cat([torch.zeros(4, 3, dtype=torch.long), ids, torch.zeros(4, 3, dtype=torch.long)], 1)
    assert torch.allclose(model(both, (both != 0).long()).logits, logits, atol=1e-5)  # padded on both sides
    loss, as_tuple = model(ids, labels=torch.tensor([0, 1, 2, 0]), return_dict=False)  # transformers' tuple
    assert loss.dim() == 0 and torch.equal(as_tuple, logits)
    narrow = model(ids.to(torch.int16), labels=torch.tensor([0, 1, 2, 0], dtype=torch.uint8))  # any integer dtype
    assert torch.equal(narrow.logits, logits) and torch.equal(narrow.loss, loss)
    with pytest.raises(ValueError, match=r"labels must be integer class ids of shape \(4,\), got torch.float32"):
        model(ids, labels=torch.zeros(4))
    with pytest.raises(ValueError, match=r"NLI head: labels must lie in \[0, num_labels=3\) or be -100 \(ignored\), got \[3\]"):
        model(ids, labels=torch.tensor([0, 1, 3, 0]))
    ignored = model(ids, labels=torch.tensor([0, 1, -100, 0])).loss  # as the cross-entropy ignores -100
    assert torch.allclose(ignored, torch.nn.functional.cross_entropy(logits[[0, 1, 3]], torch.tensor([0, 1, 0])))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=100\)"):
        model(ids + 100)
    with pytest.raises(ValueError, match=r"input_ids must be integer token ids \(batch >= 1, tokens >= 1\)"):
        model(ids[0])
    with pytest.raises(ValueError, match=r"input_ids must be integer token ids \(batch >= 1"):
        model(ids[:0])
    with pytest.raises(ValueError, match=r"rows \[1\] of attention_mask mask every token"):  # not constant logits
        model(ids, torch.ones_like(ids).index_fill(0, torch.tensor([1]), 0))
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        model(ids, mask)
    model.train()
    assert not model.encoder.training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1, 2, 0])
    losses = []
    for _ in range(15):
        out = model(ids, labels=labels)
        assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, frozen[k]) for k, v in model.encoder.state_dict().items())
    assert all(p.grad is None for p in model.encoder.parameters())


@pytest.mark.parametrize(("name", "trainable"), [("grassmann_nli_head", 1_916_483),
                                                 ("transformer_nli_head", 1_777_667)])
def test_nli_head_parameter_count_follows_from_the_lm_blocks(name, trainable):
    """Over a 768-wide encoder (DistilBERT's width): W_in 768x256 + 2 blocks + LayerNorm + 3-way classifier. A
    block's size comes from the paper-checked LM totals: (13,001,920 - embeddings - final LN) / 6 for Grassmann,
    (12,585,472 - the same) / 6 for the Transformer; the encoder's own parameters are frozen and not counted."""
    embeddings_and_final_norm = 30522 * 256 + 128 * 256 + 2 * 256
    lm = {"grassmann_nli_head": 13_001_920, "transformer_nli_head": 12_585_472}[name]
    block, rest = divmod(lm - embeddings_and_final_norm, 6)
    assert rest == 0
    assert trainable == (768 * 256 + 256) + 2 * block + 2 * 256 + (256 * 3 + 3)
    model = zoo.create_model(name, encoder_config={**ENCODER, "dim": 768, "n_heads": 2})
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    if name == "grassmann_nli_head":  # without the d x d projection per block
        plain = zoo.create_model(name, encoder_config={**ENCODER, "dim": 768, "n_heads": 2}, out_proj=False)
        assert sum(p.numel() for p in plain.parameters() if p.requires_grad) == trainable - 2 * (256 * 256 + 256)


@pytest.mark.parametrize("name", ["grassmann_nli_head", "transformer_nli_head"])
def test_nli_head_checkpoints_its_blocks_and_passes_segment_ids_to_an_encoder_that_takes_them(name):
    """activation_checkpointing_enable() (Trainer's gradient_checkpointing) gives the same gradients (it raised: no
    support declared); token_type_ids reach a BERT encoder (they were a TypeError) and are refused by DistilBERT's."""
    ids, labels = torch.randint(5, 100, (3, 9)), torch.tensor([0, 1, 2])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = zoo.create_model(name, encoder_config=ENCODER, hidden_size=32, intermediate_size=64,
                                 **HEAD_ONLY.get(name, {}), dropout=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(ids, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=0, rtol=0, msg=n)
    with pytest.raises(ValueError, match=r"the encoder \(DistilBertModel\) has no segment embeddings"):
        model(ids, token_type_ids=torch.zeros_like(ids))
    bert = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 64, "type_vocab_size": 2}
    model = zoo.create_model(name, encoder_config=bert, hidden_size=32, intermediate_size=64,
                             **HEAD_ONLY.get(name, {})).eval()
    segments = (torch.arange(9) >= 5).long().expand(3, -1)
    assert not torch.allclose(model(ids, token_type_ids=segments).logits, model(ids).logits)


@pytest.mark.parametrize("name", ["grassmann_nli_head", "transformer_nli_head"])
def test_nli_head_saves_and_loads_through_the_auto_classes(tmp_path, name):
    """save_pretrained writes safetensors with the encoder inside; AutoConfig/AutoModelForSequenceClassification
    rebuild the head offline from the folder alone, frozen encoder included, with identical logits. An encoder
    given as a local folder has its weights copied in unchanged."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    spec = dict(ENCODER)
    encoder = AutoModel.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    encoder.save_pretrained(tmp_path / "encoder")
    torch.manual_seed(0)
    model = zoo.create_model(name, encoder=str(tmp_path / "encoder"), hidden_size=32, intermediate_size=64,
                             **HEAD_ONLY.get(name, {})).eval()
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())
    ids = torch.randint(5, 100, (3, 7))
    model.save_pretrained(tmp_path / "head")
    assert (tmp_path / "head" / "model.safetensors").exists()
    assert type(AutoConfig.from_pretrained(tmp_path / "head")).__name__ == "NLIHeadConfig"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "head")
    assert type(loaded) is type(model) and loaded.config.mixer == model.config.mixer
    assert type(AutoModel.from_pretrained(tmp_path / "head")) is type(model)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert not any(p.requires_grad for p in loaded.encoder.parameters())
    assert not loaded.train().encoder.training


def test_missing_encoder_is_a_clear_error(tmp_path, monkeypatch):
    """A folder is not a hub id: its error says the folder is missing or holds no model, not 'hf download PATH'."""
    with pytest.raises(FileNotFoundError, match=r"encoder folder '.*no-encoder' does not exist; give a folder"):
        zoo.create_model("grassmann_nli_head", encoder=str(tmp_path / "no-encoder"))
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"encoder folder .\./empty. holds no saved model \(no config.json\)"):
        zoo.create_model("grassmann_nli_head", encoder="./empty")
    # model_info (zoo info) still describes the model, without the parameter count the encoder would give
    from zoo._registry import _REGISTRY

    entry = _REGISTRY["grassmann_nli_head"]
    monkeypatch.setitem(_REGISTRY, "grassmann_nli_head",
                        dataclasses.replace(entry, config=dataclasses.replace(entry.config, encoder=str(tmp_path / "x"))))
    info = zoo.model_info("grassmann_nli_head")
    assert info["params"] is None and "does not exist" in info["params_unavailable"]
    assert info["recipes"] == ["grassmann-nli-snli"] and info["family"] == "grassmann"


def test_unreachable_hub_fails_at_once_from_the_local_cache(monkeypatch):
    """Offline (the hub's host does not resolve), a hub id is read from the local cache only: a clear error at
    once, where a download would retry for about 25 s first."""
    import socket

    import transformers

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    seen = {}
    real = transformers.AutoModel.from_pretrained

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    with pytest.raises(FileNotFoundError, match="hf download paperzoo-tests/no-such-encoder"):
        zoo.create_model("grassmann_nli_head", encoder="paperzoo-tests/no-such-encoder")
    assert seen == {"local_files_only": True}


@pytest.mark.parametrize("recipe", ["grassmann-nli-snli", "transformer-nli-snli"])
def test_snli_recipe_runs_when_the_data_is_given(tmp_path, recipe):
    """SNLI jsonl files and a WordPiece vocabulary written here, a tiny DistilBERT config as the encoder: the
    recipe trains with the shared loop and reports validation and test accuracy; pairs without a gold label are
    dropped; held-out batches come from the validation file."""
    import random

    from train import fit

    rng = random.Random(0)
    splits = {name: random_snli_rows(n, rng, unlabeled_every=10) for name, n in (("train", 40), ("dev", 20),
                                                                                  ("test", 20))}
    encoder = json.dumps({**ENCODER, "vocab_size": 21})
    r = load_recipe(recipe, write_snli(tmp_path, splits) + [
                             f"model_args.encoder_config={encoder}", "model_args.hidden_size=32",
                             "model_args.intermediate_size=64", "train.steps=4", "train.eval_every=0",
                             "train.ckpt_every=0", "train.log_every=2", "schedule.warmup=1"])
    task = make_task(r)
    assert len(task.splits["train"]["labels"]) == 36 and len(task.splits["valid"]["labels"]) == 18
    first = splits["train"][0]  # [CLS] premise [SEP] hypothesis [SEP], by the vocabulary's ids (NLI_WORDS from 5)
    words = [[5 + NLI_WORDS.index(w) for w in first[key].split()] for key in ("sentence1", "sentence2")]
    pair = [2, *words[0], 3, *words[1], 3]
    assert task.splits["train"]["input_ids"][0].tolist() == pair + [0] * (task.max_len - len(pair))
    held = task.held_out_batch(5, torch.Generator().manual_seed(0))
    valid_rows = {tuple(row) for row in task.splits["valid"]["input_ids"].tolist()}
    assert all(tuple(row) in valid_rows for row in held["input_ids"].tolist())
    final = fit(r, out=tmp_path / "run")
    model = load_checkpoint(tmp_path / "run" / "model.safetensors").eval()  # the trained head, rebuilt offline
    for split, key in (("valid", "valid_acc"), ("test", "test_acc")):  # accuracy = argmax agreement, all rows
        data = task.splits[split]
        with torch.no_grad():
            predicted = model(data["input_ids"], data["attention_mask"]).logits.argmax(-1)
        assert final[key] == pytest.approx(float((predicted == data["labels"]).float().mean()))
    assert len(task.splits["test"]["labels"]) == 18


def _hub_layout(root, config, columns):
    """A dataset repository's layout as the hub's parquet conversion writes it: <config>/<split>-00000-of-00001."""
    from datasets import Dataset

    (root / config).mkdir(parents=True, exist_ok=True)
    for split, rows in columns.items():
        Dataset.from_dict(rows).to_parquet(root / config / f"{split}-00000-of-00001.parquet")
    return root


def test_wikitext_and_snli_from_a_hub_dataset_layout(tmp_path):
    """data.path may hold the Hugging Face repository's files (what `hf download` puts in the cache): Wikitext-2
    rows are the token file's lines; SNLI's label -1 (no gold label) is dropped."""
    lines = [" = Heading = \n", " the quick brown fox jumps over the lazy dog . \n", "\n"] * 60
    wiki = _hub_layout(tmp_path / "wikitext", "wikitext-2-v1",
                       {s: {"text": lines} for s in ("train", "validation", "test")})
    task = make_task(load_recipe("grassmann-lm-wikitext2", [f"data.path={wiki}", "task_args.seq_len=16"]))
    assert task.tokenizer.decode(task.train_ids[:4].tolist()).startswith("= heading =")
    assert task.held_out_batch(2, torch.Generator().manual_seed(0))["input_ids"].shape == (2, 16)
    changed = [line.replace("quick", "sleepy") for line in lines]  # same rows, new content: not the cached tokens
    _hub_layout(wiki, "wikitext-2-v1", {s: {"text": changed} for s in ("train", "validation", "test")})
    task = make_task(load_recipe("grassmann-lm-wikitext2", [f"data.path={wiki}", "task_args.seq_len=16"]))
    assert "sleepy" in task.tokenizer.decode(task.train_ids[:12].tolist())

    from train.data.snli import snli_splits

    pairs = {"premise": ["a dog runs", "a cat sleeps", "a man sits"], "hypothesis": ["an animal", "x", "a person"],
             "label": [0, -1, 2]}
    snli = _hub_layout(tmp_path / "snli", "plain_text", {s: pairs for s in ("train", "validation", "test")})
    splits = snli_splits(snli)
    assert set(splits) == {"train", "valid", "test"}
    assert splits["valid"] == (["a dog runs", "a man sits"], ["an animal", "a person"], [0, 2])
    (snli / "plain_text" / "test-00000-of-00001.parquet").write_bytes(b"PAR1garbage")  # a damaged download
    with pytest.raises(ValueError, match=r"plain_text cannot be read as a dataset .*test-00000-of-00001.parquet"):
        snli_splits(snli)


def test_wikitext_token_files_edited_in_place_are_tokenised_again(tmp_path):
    """The token cache is keyed on the files' path, size and modification time: a word replaced by one of the same
    length (same size) is not served from the old tokens."""
    import os

    from train.data.wikitext import FILES

    text = " = Heading = \n the quick brown fox jumps over the lazy dog . \n" * 80
    for name in FILES.values():
        (tmp_path / name).write_text(text)
    recipe = load_recipe("grassmann-lm-wikitext2", [f"data.path={tmp_path}", "task_args.seq_len=16"])
    task = make_task(recipe)
    assert "quick" in task.tokenizer.decode(task.train_ids[:12].tolist())
    train = tmp_path / FILES["train"]
    train.write_text(text.replace("quick", "sleep"))  # same length
    stat = train.stat()
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later edit, even on a coarse clock
    task = make_task(recipe)
    assert "sleep" in task.tokenizer.decode(task.train_ids[:12].tolist())


def test_snli_jsonl_files_drop_pairs_without_gold_label_and_name_a_bad_line(tmp_path):
    """The original SNLI 1.0 jsonl: '-' (no gold label) dropped, blank lines skipped, a line that is not a record
    named with its file and number."""
    from train.data.snli import FILES, snli_splits

    rows = [{"gold_label": "neutral", "sentence1": "a dog runs", "sentence2": "it is fast", "annotator_labels": []},
            {"gold_label": "-", "sentence1": "a cat", "sentence2": "x"},
            {"gold_label": "contradiction", "sentence1": "a man sits", "sentence2": "he runs"}]
    for name in FILES.values():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert snli_splits(tmp_path)["test"] == (["a dog runs", "a man sits"], ["it is fast", "he runs"], [1, 2])
    (tmp_path / FILES["valid"]).write_text(json.dumps(rows[0]) + "\n{\"gold_label\": \"neutral\"}\n")
    with pytest.raises(ValueError, match=r"snli_1.0_dev.jsonl, line 2, is not an SNLI 1.0 record .*KeyError"):
        snli_splits(tmp_path)
    (tmp_path / FILES["valid"]).write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[0], "sentence2": None}))
    with pytest.raises(ValueError, match=r"snli_1.0_dev.jsonl, line 2: the sentences must be text, got \{'sentence2'"):
        snli_splits(tmp_path)
    (tmp_path / FILES["valid"]).write_bytes(b"\n" + json.dumps(rows[0]).encode().replace(b"dog", b"caf\xe9"))
    with pytest.raises(ValueError, match=r"snli_1.0_dev.jsonl, line 2, is not UTF-8 text"):
        snli_splits(tmp_path)


def test_hub_id_not_in_the_cache_is_a_clear_error_at_once(monkeypatch):
    """Offline (the hub's host does not resolve) a hub id is looked up in the local cache only."""
    import socket

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for recipe, name in (("grassmann-lm-wikitext2", "Salesforce/wikitext"), ("grassmann-nli-snli", "stanfordnlp/snli")):
        unreachable = r"in the local cache \(the hub is unreachable\)"
        with pytest.raises(FileNotFoundError, match=f"{unreachable}.*hf download {name}"):
            make_task(load_recipe(recipe, ["data.path=paperzoo-tests/no-such-dataset"]))


def test_token_cache_follows_the_bert_vocabulary_file_and_reads_a_given_tokenizer_file(tmp_path):
    from train.data.wordpiece import bert_vocab_file, tokenized_splits

    def read():
        return {"train": "the quick fox", "valid": "brown", "test": "fox"}

    vocab = bert_vocab_file()
    vocab.parent.mkdir(parents=True)
    words = ["the", "quick", "brown", "fox"]
    vocab.write_text("\n".join(SPECIAL + words))
    tokenizer, ids = tokenized_splits("t", {}, read, "bert", 100)
    assert tokenizer.get_vocab_size() == 9 and ids["test"].tolist() == [8, 3]  # fox, [SEP]
    vocab.write_text("\n".join(SPECIAL + words[::-1]))  # the same size, other ids: not served from the cache
    assert tokenized_splits("t", {}, read, "bert", 100)[1]["test"].tolist() == [5, 3]
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert tokenized_splits("t", {}, read, str(tmp_path / "tokenizer.json"), 100)[1]["test"].tolist() == [8, 3]
    with pytest.raises(ValueError, match=r"one of \('bert', 'wordpiece'\) or a tokenizer.json file, .*no such file"):
        tokenized_splits("t", {}, read, str(tmp_path / "missing.json"), 100)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json is not a tokenizers JSON file"):
        tokenized_splits("t", {}, read, str(tmp_path / "bad.json"), 100)
    # a tokenizer without [SEP] (a GPT-2 style BPE): named, where encoding failed on None as a token id
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    Tokenizer(WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]")).save(
        str(tmp_path / "nosep.json"))
    with pytest.raises(ValueError, match=r"nosep.json has no \[SEP\] piece, which the LM tasks put after every line"):
        tokenized_splits("t", {}, read, str(tmp_path / "nosep.json"), 100)


def test_the_samples_report_takes_shorter_prompts_from_a_short_validation_split(tmp_path):
    """Three 16-token prompts need 48 validation tokens; with fewer than 16 the report asked generate() for an empty
    batch and the run ended without its summary. Now the prompts are as long as the split allows."""
    from train.data.wikitext import FILES

    text = " the quick brown fox jumps over the lazy dog . \n" * 40
    for split, words in (("train", text), ("valid", " the lazy dog . \n"), ("test", text)):
        (tmp_path / FILES[split]).write_text(words)
    recipe = load_recipe("grassmann-lm-wikitext2", [f"data.path={tmp_path}", "task_args.seq_len=4",
                                                    "model_args.num_hidden_layers=1", "model_args.hidden_size=32",
                                                    "model_args.intermediate_size=64"])
    task = make_task(recipe)
    assert len(task.valid_ids) < 16
    model = zoo.create_model(recipe["model"], **recipe["model_args"]).eval()
    (path,) = task.report(model, tmp_path)
    text = path.read_text()
    assert text.count("PROMPT:") == 1 and text.count("MODEL:") == 1


def test_wikitext_files_that_cannot_be_read_are_named(tmp_path):
    from train.data.wikitext import FILES

    text = " = Heading = \n the quick brown fox jumps over the lazy dog . \n" * 80
    for name in FILES.values():
        (tmp_path / name).write_text(text)
    recipe = load_recipe("grassmann-lm-wikitext2", [f"data.path={tmp_path}", "task_args.seq_len=16"])
    (tmp_path / FILES["valid"]).write_bytes(b" caf\xe9 au lait \n")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"wiki.valid.tokens is not UTF-8 text \(invalid continuation byte at byte 4\)"):
        make_task(recipe)
    (tmp_path / FILES["valid"]).write_text("\n \n")
    with pytest.raises(ValueError, match="wiki.valid.tokens holds no text"):
        make_task(recipe)
    (tmp_path / FILES["valid"]).write_text(" the fox . \n")
    with pytest.raises(ValueError, match=r"seq_len=16 is longer than the valid split of the wikitext2 corpus \(\d+ tokens\)"):
        make_task(recipe)


def test_a_resumed_lm_run_reads_its_data_with_its_saved_tokenizer(tmp_path, monkeypatch):
    """WordPiece training is not deterministic (ties between pieces), so a run resumed after the token cache is
    gone must not train a tokenizer again: it reads the data with the one in RUN_DIR/tokenizer.json."""
    import shutil

    recipe = load_recipe("grassmann-lm-pytext", TINY_LM + ["train.steps=4", "train.ckpt_every=2", "schedule.warmup=1"])
    first = fit(recipe, out=tmp_path / "run")
    shutil.rmtree(tmp_path / "cache")
    again = fit(recipe, out=tmp_path / "run", resume=True)  # finished: evaluates the final model again
    assert again["valid_loss"] == first["valid_loss"] and again["test_loss"] == first["test_loss"]


def test_torchrun_ranks_build_one_tokenizer_from_a_cold_cache(tmp_path):
    """Two ranks miss the token cache at once: they take turns, so both read with the tokenizer the first trained
    (each training its own would give different pieces, which the loop's cross-rank check refuses)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PAPERZOO_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "train.cli", "train", "grassmann-lm-pytext", "--out", str(tmp_path / "ddp")]
    for o in TINY_LM + ["train.steps=2", "schedule.warmup=1", "train.threads=1", "train.device=cpu"]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rank 1/2]" in proc.stderr
    cached = list((tmp_path / "cache" / "lm").glob("*/tokenizer.json"))
    assert len(cached) == 1 and cached[0].read_text() == (tmp_path / "ddp" / "tokenizer.json").read_text()


def _rank_with_its_own_digest(rank: int, port: int, errors):
    import os

    import torch.distributed as dist

    from train.distributed import Dist
    from train.loop import _check_ranks_agree

    class Built:
        def digest(self):
            return f"tokenizer of rank {rank}"

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        _check_ranks_agree(Built(), Dist(rank, 2))
    except ValueError as err:
        errors.put(str(err))
    finally:
        dist.destroy_process_group()


def test_ranks_whose_data_state_differs_are_refused():
    import torch.multiprocessing as mp

    errors = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_rank_with_its_own_digest, args=(29521, errors), nprocs=2, start_method="spawn")
    messages = [errors.get() for _ in range(2)]
    assert all("the 2 ranks read the data in 2 different ways" in m and "$PAPERZOO_CACHE" in m for m in messages)


def test_a_process_that_misses_the_token_cache_while_another_builds_it_waits_and_reads_it():
    import threading
    import time

    from tokenizers import Tokenizer

    from train.data import wordpiece

    def read():
        return {"train": "the quick fox", "valid": "brown", "test": "fox"}

    identity, make = wordpiece.tokenizer_source("wordpiece", 100)
    folder = wordpiece.cache_folder("t", identity)
    got = {}
    with wordpiece._one_at_a_time(folder):  # this process is building the entry
        waiter = threading.Thread(target=lambda: got.update(zip(("tok", "ids"), wordpiece.tokenized_splits(
            "t", {}, read, "wordpiece", 100))))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()  # blocked on the lock, not training a tokenizer of its own
        built = make(read()["train"])
        wordpiece.save_safetensors({s: wordpiece.encode(built, t) for s, t in read().items()},
                                   folder / "tokens.safetensors")
        built.save(str(folder / "tokenizer.json"))
    waiter.join(timeout=30)
    assert got["tok"].to_str() == Tokenizer.from_file(str(folder / "tokenizer.json")).to_str()


def test_snli_unknown_gold_labels_and_splits_without_labelled_pairs_are_named(tmp_path):
    """Only '-' (no gold label) is dropped: another label is an error naming its file and line; a split whose pairs
    are all dropped is an error naming its file, not an empty batch deep inside the tokenizer."""
    from train.data.snli import FILES, snli_splits

    rows = [{"gold_label": "neutral", "sentence1": "a dog runs", "sentence2": "it is fast"},
            {"gold_label": "-", "sentence1": "a cat", "sentence2": "x"}]
    for name in FILES.values():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert snli_splits(tmp_path)["valid"] == (["a dog runs"], ["it is fast"], [1])
    (tmp_path / FILES["test"]).write_text("".join(json.dumps({**r, "gold_label": g}) + "\n"
                                                  for r, g in zip(rows * 2, ["neutral", "-", "Entailment", "-"])))
    with pytest.raises(ValueError, match=r"snli_1.0_test.jsonl, line 3: gold_label 'Entailment' is not one of "
                                         r"entailment, neutral, contradiction or '-'"):
        snli_splits(tmp_path)
    (tmp_path / FILES["test"]).write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match=r"snli_1.0_test.jsonl holds no labelled SNLI pairs"):
        snli_splits(tmp_path)

    pairs = {"premise": ["a dog runs", "a cat sleeps"], "hypothesis": ["an animal", "x"], "label": [0, -1]}
    hub = _hub_layout(tmp_path / "hub", "plain_text", {"train": pairs, "validation": {**pairs, "label": [-1, -1]},
                                                       "test": pairs})
    with pytest.raises(ValueError, match=r"hub \(plain_text, split 'valid'\) holds no labelled SNLI pairs"):
        snli_splits(hub)
    _hub_layout(hub, "plain_text", {"validation": {**pairs, "label": [0, 7]}})
    with pytest.raises(ValueError, match=r"split 'valid'\): labels \[7\] are not SNLI's"):
        snli_splits(hub)


def test_nli_tokenizer_path_expands_the_home_folder(tmp_path, monkeypatch):
    row = {"gold_label": "neutral", "sentence1": "a dog", "sentence2": "a dog"}
    write_snli(tmp_path, {split: [row] for split in ("train", "dev", "test")})
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    task = make_task(load_recipe("grassmann-nli-snli", [f"data.path={tmp_path}",
                                                        f"data.tokenizer=~/{tmp_path.name}/tok"]))
    assert task.splits["train"]["input_ids"][0, :4].tolist() == [2, 5, 8, 3]  # [CLS] a dog [SEP]


@pytest.mark.filterwarnings("ignore:task 'lm' does not use data.docstrings")
def test_lm_task_draws_and_scores_each_split_from_its_own_stream():
    """Held-out batches are windows of the validation stream; test_loss is the loss on the test stream (not valid's);
    task_args.eval_tokens (64, two windows) caps the tokens scored; a stream of exactly seq_len tokens still gives
    its one window, and distinct training samples cannot ask for more windows than there are. A model one piece short of
    the tokenizer is refused."""
    recipe = load_recipe("grassmann-lm-pytext", TINY_LM + ["task_args.eval_tokens=64"])
    task = make_task(recipe)
    T = task.seq_len
    valid_windows = {tuple(task.valid_ids[s:s + T].tolist()) for s in range(len(task.valid_ids) - T + 1)}
    held = task.held_out_batch(6, torch.Generator().manual_seed(0))["input_ids"]
    assert held.shape == (6, T) and all(tuple(w) in valid_windows for w in held.tolist())
    torch.manual_seed(0)
    model = zoo.create_model(recipe["model"], **recipe["model_args"]).eval()
    metrics = task.evaluate(model)
    assert len(task.test_ids) > 3 * T and len(task.valid_ids) > 3 * T
    for split, ids in (("test", task.test_ids), ("valid", task.valid_ids)):
        with torch.no_grad():
            two = torch.stack([model(input_ids=w[None], labels=w[None]).loss for w in ids[:2 * T].view(2, T)]).mean()
        assert metrics[f"{split}_loss"] == pytest.approx(two.item(), rel=1e-5)
    assert metrics["test_loss"] != pytest.approx(metrics["valid_loss"], rel=1e-6)
    assert metrics["test_ppl"] == pytest.approx(math.exp(metrics["test_loss"]))
    task.train_ids = task.valid_ids[:T + 2].clone()  # three windows: starts 0, 1, 2
    one = task.train_ids[:T]
    assert torch.equal(task._windows(one, 2, torch.Generator().manual_seed(0))["input_ids"], one.expand(2, T))
    sample = task.train_sample(3, torch.Generator().manual_seed(0))["input_ids"]
    assert sorted(sample.tolist()) == sorted(task.train_ids[s:s + T].tolist() for s in range(3))  # each start once
    with pytest.raises(ValueError, match="fewer than the 4 distinct ones"):
        task.train_sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="set model_args.vocab_size"):  # 1000 pieces, ids up to 999: one too many
        make_task(load_recipe("grassmann-lm-pytext", TINY_LM + ["model_args.vocab_size=999"]))


def test_encoding_skips_blank_lines_and_ends_each_line_with_sep():
    """Blank and whitespace-only lines add nothing (not a lone [SEP]); each non-empty line ends with one [SEP]."""
    tok = train_wordpiece("the quick fox\nthe lazy dog\n", vocab_size=60)
    sep = tok.token_to_id("[SEP]")
    spaced = encode(tok, "the quick fox\n\n   \nthe lazy dog\n\n").tolist()
    assert spaced == encode(tok, "the quick fox\nthe lazy dog").tolist()
    assert spaced.count(sep) == 2 and spaced[-1] == sep


def test_pytext_fractions_must_leave_every_split_some_text():
    """valid and test fractions must each be > 0 and sum to < 1 (else a split is empty)."""
    for valid, test in ((0.0, 0.1), (0.1, 0.0), (0.5, 0.5), (0.7, 0.4)):
        with pytest.raises(ValueError, match="valid and test fractions must be > 0 with sum < 1"):
            pytext_splits(docstrings=False, valid=valid, test=test)


@pytest.mark.parametrize("name", ["grassmann_nli_head", "transformer_nli_head"])
def test_nli_head_logits_are_the_pooled_blocks_written_out(name):
    """logits = W_cls LN(mean over real tokens of Blocks(W_in E(x))), written with the model's own modules on a
    right-padded batch (LayerNorm weights away from (1, 0), so a missing norm shows); labels of another batch size
    are a named error; in training the blocks' dropout makes two passes differ (the frozen encoder stays in eval)."""
    torch.manual_seed(0)
    model = zoo.create_model(name, encoder_config=ENCODER, hidden_size=32, intermediate_size=64,
                             **HEAD_ONLY.get(name, {})).eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    ids = torch.randint(5, 100, (3, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:], mask[2, 3:] = 0, 0
    with torch.no_grad():
        x = model.proj(model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state)
        pooled = []
        for row, n in enumerate(mask.sum(1).tolist()):  # each pair alone, unpadded: positions 0..n-1, causal
            h = x[row:row + 1, :n]
            for block in model.blocks:
                h = block(h, torch.arange(n)) if name == "grassmann_nli_head" else block(h)
            pooled.append(h[0].mean(0))
        expected = model.classifier(model.norm(torch.stack(pooled)))
    torch.testing.assert_close(model(ids, mask).logits, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"labels must be integer class ids of shape \(3,\), got torch.int64 \(2,\)"):
        model(ids, mask, labels=torch.tensor([0, 1]))
    model.train()
    torch.manual_seed(1)
    first = model(ids, mask).logits
    assert not torch.allclose(first, model(ids, mask).logits)
