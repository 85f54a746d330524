"""Hugging Face text encoders: ``model="hf:<directory>"``, texts as ``X``.

Nothing is downloaded: tiny BERT / DistilBERT encoders are built from configs
with a word-level tokenizer made here, saved with ``save_pretrained`` and
loaded back through the public ``"hf:<directory>"`` path.
"""

import pickle
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from sktransfer import (  # noqa: E402
    FeatureExtractorTransformer,
    FineTunedClassifier,
    FineTunedRegressor,
    WeightsUnavailableError,
    clear_cache,
    list_blocks,
)

# a small language: sentiment adjectives, nouns of two domains, filler words
POS = ("good great excellent superb lovely wonderful fine nice brilliant perfect amazing "
       "pleasant solid charming delightful fantastic splendid decent enjoyable marvellous").split()
NEG = ("bad awful terrible poor horrible dreadful weak boring nasty mediocre disappointing "
       "lousy bland sloppy annoying rude dull cheap broken stale").split()
MOVIES = "film movie plot actor script scene ending cast soundtrack director".split()
FOOD = "food waiter pizza service dessert table menu price coffee staff".split()
FILL = "the a was is and but really very quite so truly rather it this".split()
ADVERBS = ["really", "very", "quite", "so", "truly", "rather"]


def make_tokenizer():
    """A word-level tokenizer with BERT's special tokens, built without any download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + POS + NEG + MOVIES + FOOD + FILL)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def save_encoder(directory, kind="bert", seed=0, dropout=0.1):
    """A randomly initialised tiny encoder and its tokenizer, saved to ``directory``."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32,
                                     hidden_dropout_prob=dropout,
                                     attention_probs_dropout_prob=dropout))
    else:
        model = DistilBertModel(DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2,
                                                 n_heads=2, hidden_dim=64,
                                                 max_position_embeddings=32))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def reviews(rng, n, nouns, n_adjectives=(1, 3)):
    """Short reviews of ``nouns``; label 1 when the adjectives are positive."""
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.randint(2))
        words = ["the", str(rng.choice(nouns)), str(rng.choice(["was", "is"]))]
        adjectives = rng.choice(POS if label else NEG, rng.randint(*n_adjectives), replace=False)
        for i, adjective in enumerate(adjectives):
            words += (["and"] if i else []) + ([str(rng.choice(ADVERBS))] * (rng.rand() < 0.5))
            words.append(str(adjective))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one torch thread is faster than two on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_encoder(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory):
    return save_encoder(tmp_path_factory.mktemp("distilbert"), "distilbert")


@pytest.fixture(scope="module")
def texts():
    X, y = reviews(np.random.RandomState(0), 48, MOVIES + FOOD)
    return X, y


def hf_last_hidden(directory, texts):
    """What transformers itself computes: last_hidden_state and the attention mask."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(directory).eval()
    enc = AutoTokenizer.from_pretrained(directory)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"],
                       attention_mask=enc["attention_mask"]).last_hidden_state
    return hidden, enc["attention_mask"]


# --------------------------------------------------------------------------
# feature extraction: the split reproduces the encoder, pooling over the mask
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_sentence_embeddings_match_transformers(kind, bert_dir, distilbert_dir, texts):
    directory = bert_dir if kind == "bert" else distilbert_dir
    X = texts[0][:10]
    hidden, mask = hf_last_hidden(directory, X)
    m = mask.unsqueeze(-1).float()
    expected = {"mean": (hidden * m).sum(1) / m.sum(1), "cls": hidden[:, 0],
                "max": hidden.masked_fill(m == 0, float("-inf")).amax(1)}
    for pooling, want in expected.items():
        # batch_size=3: every batch is padded to its own longest text
        fx = FeatureExtractorTransformer(model=f"hf:{directory}", pooling=pooling,
                                         batch_size=3, device="cpu").fit(X)
        got = fx.transform(X)
        assert got.shape == (10, 32) and got.dtype == np.float32
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    assert fx.blocks_ == ["embeddings", "layer.0", "layer.1"]
    assert list(fx.get_feature_names_out()[:2]) == ["head_input_0", "head_input_1"]


def test_padding_does_not_change_embeddings(bert_dir, texts):
    X = texts[0][:12]
    one = FeatureExtractorTransformer(model=f"hf:{bert_dir}", batch_size=1, device="cpu")
    many = FeatureExtractorTransformer(model=f"hf:{bert_dir}", batch_size=12, device="cpu")
    np.testing.assert_allclose(one.fit_transform(X), many.fit_transform(X), rtol=1e-4,
                               atol=1e-5)


def test_layer_selects_a_block_output(bert_dir, texts):
    X = texts[0][:6]
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(bert_dir).eval()
    enc = AutoTokenizer.from_pretrained(bert_dir)(X, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**enc, output_hidden_states=True).hidden_states  # embeddings, layers
    for layer, index in [(0, 0), ("layer.0", 1), (-1, 2)]:
        fx = FeatureExtractorTransformer(model=f"hf:{bert_dir}", layer=layer, pooling="cls",
                                         device="cpu").fit(X)
        np.testing.assert_allclose(fx.transform(X), states[index][:, 0].numpy(), rtol=1e-4,
                                   atol=1e-5)


def test_list_blocks_of_a_text_encoder(bert_dir):
    blocks = list_blocks(f"hf:{bert_dir}")
    assert blocks["name"].tolist() == ["embeddings", "layer.0", "layer.1"]
    assert blocks.attrs["split_kind"] == "hf:bert"
    assert blocks.attrs["head"]["name"] is None  # an encoder: a new head goes on top
    # every parameter of the encoder except BERT's (unused) pooler is in a block
    from transformers import AutoModel

    model = AutoModel.from_pretrained(bert_dir)
    n_pooler = sum(p.numel() for p in model.pooler.parameters())
    assert blocks["n_params"].sum() == sum(p.numel() for p in model.parameters()) - n_pooler


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------


def test_text_input_containers_agree(bert_dir, texts):
    X = texts[0][:5]
    fx = FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu").fit(X)
    want = fx.transform(X)
    for other in (tuple(X), np.array(X), np.array(X, dtype=object), pd.Series(X),
                  pd.DataFrame({"review": X}), np.array(X, dtype=object).reshape(-1, 1),
                  pd.Series(X, dtype="category")):
        np.testing.assert_allclose(fx.transform(other), want, rtol=1e-5, atol=1e-6)
    assert not hasattr(fx, "n_features_in_") and fx.input_kind_ == "text"


def test_missing_texts_are_empty_texts(bert_dir):
    fx = FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu")
    got = fx.fit_transform(pd.Series(["the film was good", None, np.nan, "bad"]))
    empty = fx.transform([""])[0]
    np.testing.assert_allclose(got[1], empty, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], empty, rtol=1e-5, atol=1e-6)
    # numbers among texts are their spelling
    mixed = fx.transform(pd.Series(["the film was good", 1999], dtype=object))
    np.testing.assert_allclose(mixed[1], fx.transform(["1999"])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, error, match", [
    ("the film was good", TypeError, r"single string.*\[X\]"),
    (pd.DataFrame({"a": ["x", "y"], "b": ["z", "w"]}), ValueError,
     r"2 columns.*ColumnTransformer.*'column'"),
    (np.arange(4.0), TypeError, r"no strings.*astype\(str\)"),
    ([], ValueError, "0 texts"),
    (np.array([["a", "b"], ["c", "d"]]), ValueError, r"shape \(2, 2\)"),
])
def test_bad_text_input(bert_dir, bad, error, match):
    with pytest.raises(error, match=match):
        FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu").fit(bad)


def test_flatten_pooling_is_refused_for_texts(bert_dir, texts):
    fx = FeatureExtractorTransformer(model=f"hf:{bert_dir}", pooling="flatten", device="cpu")
    with pytest.raises(ValueError, match=r"pooling='flatten'.*'mean'.*'cls'"):
        fx.fit(texts[0][:4])


def test_preprocess_none_is_refused_for_texts(bert_dir, texts):
    fx = FeatureExtractorTransformer(model=f"hf:{bert_dir}", preprocess=None, device="cpu")
    with pytest.raises(ValueError, match=r"tokenizer.*preprocess='auto'"):
        fx.fit(texts[0][:4])
    # a fitted text network without its estimator has no tokenizer either
    net = FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu").fit(
        texts[0][:2]).module_
    with pytest.raises(ValueError, match=r"no(ne| tokenizer).*model='hf:<directory>'"):
        FeatureExtractorTransformer(model=net, device="cpu").fit(texts[0][:4])


# --------------------------------------------------------------------------
# loading: errors that say what to do
# --------------------------------------------------------------------------


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_hub_id_error(hub_offline):
    with pytest.raises(WeightsUnavailableError) as info:
        FeatureExtractorTransformer(model="hf:someone/tiny-encoder", device="cpu").fit(["a"])
    msg = str(info.value)
    assert isinstance(info.value, OSError)
    assert "'someone/tiny-encoder'" in msg and str(hub_offline) in msg
    assert "save_pretrained(d)" in msg and "model='hf:/path/to/d'" in msg


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no directory.*save_pretrained"):
        list_blocks(f"hf:{tmp_path / 'nothing'}")


def test_directory_without_tokenizer(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=1, intermediate_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"tokenizer.save_pretrained"):
        list_blocks(f"hf:{tmp_path}")


def test_weights_do_not_apply(bert_dir):
    with pytest.raises(ValueError, match=r"weights='DEFAULT'.*holds the weights"):
        list_blocks(f"hf:{bert_dir}", weights="DEFAULT")


def test_decoder_models_are_refused_clearly(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(vocab_size=len(make_tokenizer()), n_embd=8, n_layer=1,
                         n_head=1, n_positions=16)).save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"cannot split a GPT2Model.*encoder\.layer"):
        list_blocks(f"hf:{tmp_path}")


def test_missing_encoder_weights_are_reported(tmp_path, bert_dir):
    from safetensors.torch import load_file, save_file

    import shutil

    shutil.copytree(bert_dir, tmp_path / "partial")
    path = tmp_path / "partial" / "model.safetensors"
    state = load_file(path)
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, path,
              metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"start from random values.*layer\.1\."):
        list_blocks(f"hf:{tmp_path / 'partial'}")


def test_missing_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"sktransfer\[hf\]"):
        list_blocks("hf:anything")


# --------------------------------------------------------------------------
# fine-tuning by path, in Pipeline + GridSearchCV, pickling, save_weights
# --------------------------------------------------------------------------


def _frozen_state(module, n_blocks):
    return {k: v.clone() for k, v in module.state_dict().items()
            if k.startswith(tuple(f"blocks.{i}." for i in range(n_blocks)))}


def test_extraction_in_pipeline_and_grid_search(bert_dir, texts):
    X, y = texts
    pipe = Pipeline([("fx", FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu")),
                     ("clf", LogisticRegression(max_iter=1000))])
    search = GridSearchCV(pipe, {"fx__pooling": ["mean", "cls"], "fx__layer": [None, 1]},
                          cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    proba = search.predict_proba(X)
    again = pickle.loads(pickle.dumps(search))
    np.testing.assert_array_equal(again.predict_proba(X), proba)


def test_finetune_in_pipeline_and_grid_search(bert_dir, texts, tmp_path):
    X, y = texts
    pipe = Pipeline([("net", FineTunedClassifier(model=f"hf:{bert_dir}", max_epochs=3,
                                                 batch_size=16, lr=3e-3, random_state=0,
                                                 device="cpu"))])
    search = GridSearchCV(pipe, {"net__freeze_depth": [1, "all"]}, cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    best = search.best_estimator_
    clf = best.named_steps["net"]
    assert clf.input_kind_ == "text" and clf.blocks_ == ["embeddings", "layer.0", "layer.1"]
    proba = best.predict_proba(X)
    assert proba.shape == (len(X), 2)
    # frozen blocks are the pretrained encoder's, bit for bit
    fresh = FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu").fit(X[:2])
    depth = clf.freeze_depth_
    for key, value in _frozen_state(fresh.module_, depth).items():
        assert torch.equal(clf.module_.state_dict()[key], value), key
    # pickling, and save_weights / load_weights, predict exactly as before
    again = pickle.loads(pickle.dumps(best))
    np.testing.assert_array_equal(again.predict_proba(X), proba)
    path = tmp_path / "text.safetensors"
    clf.save_weights(path)
    loaded = FineTunedClassifier(model=f"hf:{bert_dir}", device="cpu").load_weights(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), proba)
    assert loaded.input_kind_ == "text"


def test_finetuning_learns_and_policies_apply(bert_dir, texts):
    X, y = texts
    fresh = FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu").fit(X[:2])
    clf = FineTunedClassifier(model=f"hf:{bert_dir}", freeze_depth=1, penalty="l2_sp",
                              alpha=1e-3, layer_decay=0.5, lr=1e-2, backbone_lr_scale=0.3,
                              max_epochs=15, batch_size=16, random_state=0,
                              device="cpu").fit(X, y)
    assert clf.score(X, y) >= 0.9  # sentiment words are easy to fit
    state = clf.module_.state_dict()
    for key, value in _frozen_state(fresh.module_, 1).items():
        assert torch.equal(state[key], value), key  # the embeddings block is frozen
    moved = [key for key, value in fresh.module_.state_dict().items()
             if key.startswith("blocks.2.") and not torch.equal(state[key], value)]
    assert moved  # the top layer was fine-tuned

    reg = FineTunedRegressor(model=f"hf:{bert_dir}", freeze_depth="all", lr=1e-2,
                             max_epochs=30, batch_size=16, random_state=0,
                             device="cpu").fit(X, y.astype(float))
    assert reg.predict(X).shape == (len(X),)
    assert reg.score(X, y.astype(float)) > 0.3


def test_lora_on_a_text_encoder_merges_low_rank_updates(bert_dir, texts):
    X, y = texts
    fresh = FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu").fit(X[:2])
    clf = FineTunedClassifier(model=f"hf:{bert_dir}", freeze_depth=1, adapter="lora",
                              adapter_rank=2, lr=1e-2, max_epochs=10, batch_size=16,
                              random_state=0, device="cpu").fit(X, y)
    assert clf.score(X, y) >= 0.8  # the adapters alone (and the head) learn the task
    before, after = fresh.module_.state_dict(), clf.module_.state_dict()
    # merged: the encoder's tensors only, no lora_A / lora_B left
    assert {k for k in after if not k.startswith("head.")} == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # peft wrapped BERT's query/key/value/dense Linear layers of the trained blocks
    assert "blocks.1.layer.attention.self.query.weight" in changed
    assert "blocks.2.layer.output.dense.weight" in changed
    assert all(k.endswith(".weight") and k.startswith(("blocks.1.", "blocks.2."))
               and "LayerNorm" not in k for k in changed)
    for key in changed:  # each update is B A, of rank adapter_rank
        s = torch.linalg.svdvals((after[key] - before[key]).double())
        assert s[2] < 1e-4 * s[0], key


def test_frozen_prefix_cache_on_texts(tmp_path, texts, capsys):
    """Cached frozen outputs (padded to the longest text) give the same fit.

    Without dropout: with it, the trained layers draw their dropout masks for
    sequences of other lengths (each batch's longest text vs. all texts' longest).
    """
    X, y = texts
    directory = save_encoder(tmp_path, "bert", dropout=0.0)
    kwargs = dict(model=f"hf:{directory}", freeze_depth=2, max_epochs=4, batch_size=8,
                  lr=3e-3, random_state=0, device="cpu")
    clear_cache()
    cached = FineTunedClassifier(**kwargs, verbose=1).fit(X, y)
    assert "computed once" in capsys.readouterr().out
    plain = FineTunedClassifier(**kwargs, cache_size=0).fit(X, y)
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X), rtol=1e-4,
                               atol=1e-5)
    FineTunedClassifier(**kwargs, alpha=1e-2, verbose=1).fit(X, y)
    assert "reused from an earlier fit" in capsys.readouterr().out
    clear_cache()


def test_chained_text_estimator_takes_texts(bert_dir, texts):
    X, y = texts
    source = FineTunedClassifier(model=f"hf:{bert_dir}", max_epochs=2, batch_size=16,
                                 random_state=0, device="cpu").fit(X, y)
    fx = FeatureExtractorTransformer(model=source, device="cpu").fit(X)
    assert fx.transform(X).shape == (len(X), 32)
    target = FineTunedClassifier(model=source, freeze_depth="all", max_epochs=2,
                                 random_state=0, device="cpu").fit(X, y)
    assert target.predict(X[:3]).shape == (3,)


# --------------------------------------------------------------------------
# a text column in a table
# --------------------------------------------------------------------------


def test_text_column_recipe(bert_dir):
    rng = np.random.RandomState(1)
    reviews_, sentiment = reviews(rng, 60, FOOD)
    price = rng.normal(20, 5, size=60)
    table = pd.DataFrame({"review": reviews_, "price": price,
                          "visits": rng.poisson(3, size=60).astype(float)})
    y = (sentiment + (price > 22)).clip(0, 1)
    features = ColumnTransformer([
        ("text", FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu"), "review"),
        ("numbers", StandardScaler(), ["price", "visits"]),
    ])
    pipe = make_pipeline(features, LogisticRegression(max_iter=1000)).fit(table, y)
    assert pipe.predict(table).shape == (60,)
    names = features.get_feature_names_out()
    assert len(names) == 34 and names[0] == "text__head_input_0" and names[-1] == "numbers__visits"
    features.set_output(transform="pandas")
    out = features.fit_transform(table)
    assert isinstance(out, pd.DataFrame) and out.shape == (60, 34)


# --------------------------------------------------------------------------
# transfer: a pretrained encoder beats TF-IDF with few labels
# --------------------------------------------------------------------------


def test_pretrained_text_encoder_beats_tfidf_with_few_labels(bert_dir):
    """Pretrain on movie reviews (many labels), classify restaurant reviews (10 labels).

    The target reviews use sentiment adjectives that the few labelled examples
    mostly do not contain: TF-IDF cannot score an unseen word, while the encoder
    learned all of them on the source task (and a random encoder did not).
    """
    rng = np.random.RandomState(0)
    X_source, y_source = reviews(rng, 1200, MOVIES)
    X_target, y_target = reviews(rng, 500, FOOD)
    source = FineTunedClassifier(model=f"hf:{bert_dir}", penalty=None, backbone_lr_scale=1.0,
                                 lr=3e-3, max_epochs=4, batch_size=64, random_state=0,
                                 device="cpu").fit(X_source, y_source)
    scores = {"tfidf": [], "pretrained": [], "random": []}
    for seed in range(3):
        draw = np.random.RandomState(seed)
        idx = np.concatenate([draw.choice(np.flatnonzero(y_target[:200] == c), 5, replace=False)
                              for c in (0, 1)])
        X_few, y_few = [X_target[i] for i in idx], y_target[idx]
        X_test, y_test = X_target[200:], y_target[200:]
        candidates = {
            "tfidf": TfidfVectorizer(),
            "pretrained": FeatureExtractorTransformer(model=source, device="cpu"),
            "random": FeatureExtractorTransformer(model=f"hf:{bert_dir}", device="cpu"),
        }
        for name, features in candidates.items():
            pipe = make_pipeline(features, LogisticRegression(C=10, max_iter=1000))
            scores[name].append(pipe.fit(X_few, y_few).score(X_test, y_test))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["pretrained"] >= 0.9, mean
    assert mean["pretrained"] >= mean["tfidf"] + 0.15, mean
    assert mean["pretrained"] >= mean["random"] + 0.15, mean
