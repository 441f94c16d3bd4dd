"""The offline data's splits: each follows its seed (the same seed repeats it, another seed gives another split), and
the documented fractions and defaults hold."""
import numpy as np
import pytest
import torch

from train.data.emt import split_frames
from train.data.ib12bit import split
from train.data.mil import fold_split
from train.data.pytext import split_of
from train.data.tabular import load_tabular
from train.data.wordpiece import word_counts, wordpiece_vocabulary
from train.tasks.image import load_digits_images

LABELS = np.repeat([0, 1], 20)
SPLITS = {  # seed -> the indices (or labels, in split order) that a split puts into its test part
    "ib12bit": lambda seed: split(4096, 0.85, seed)[1],
    "tabular": lambda seed: load_tabular("wine", 0.25, seed)["x_test"],
    "mil folds": lambda seed: torch.from_numpy(fold_split(LABELS, 5, 0, seed)[1]),
    "digits images": lambda seed: load_digits_images(8, 0.25, seed)["y_test"],
    "emt frames": lambda seed: torch.tensor(split_frames(list(range(50)), seed)["test"]),
}


@pytest.mark.parametrize("name", SPLITS)
def test_a_split_follows_its_seed(name):
    draw = SPLITS[name]
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(3))


def test_the_ib12bit_split_is_a_seeded_permutation_cut_at_the_train_fraction():
    train, test = split(4096, 0.85, 3)
    order = torch.randperm(4096, generator=torch.Generator().manual_seed(3))
    assert len(train) == round(0.85 * 4096)
    assert sorted(train.tolist() + test.tolist()) == list(range(4096))
    assert set(train.tolist()) == set(order[:len(train)].tolist())


def test_the_classification_tasks_default_train_fraction_is_the_papers_85_percent():
    from train import load_recipe
    from train.tasks import make_task

    recipe = load_recipe("ib-tanh-12bit")
    recipe["data"].pop("train_fraction", None)
    assert len(make_task(recipe).data["y_train"]) == round(0.85 * 4096)


def test_pytext_documents_split_by_hash_in_the_requested_fractions():
    keys = [f"document {i}" for i in range(20000)]
    shares = {s: sum(split_of(k, 0.05, 0.1) == s for k in keys) / len(keys) for s in ("valid", "test")}
    assert shares["valid"] == pytest.approx(0.05, abs=0.005) and shares["test"] == pytest.approx(0.1, abs=0.005)


def test_wordpiece_counts_lowercased_words_and_merges_by_frequency():
    """BERT's uncased pipeline: words are counted lowercased. Merges go to the pair with the highest count
    weighted by word frequency: 'xy' (10 times) is merged before the pairs of words seen once."""
    assert word_counts("The THE the") == {"the": 3}
    assert wordpiece_vocabulary({"xy": 10, "ab": 1, "ac": 1}, 14)[-1] == "xy"
