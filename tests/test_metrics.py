"""Pins odedit.metrics on hand-made logits; every expected value is worked out in a comment."""

import math

import pytest
import torch

from odedit import metrics
from odedit.metrics import (EditScores, aggregate, locality_agreement, retention,
                            token_accuracy)

X = -100  # ignored label


def argmax_logits(ids, vocab):
    """[T, V] logits whose argmax at position t is ids[t]."""
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float() * 5.0


def ranked_logits(orders):
    """[T, V] logits; orders[t] is a permutation of the vocab, most probable first."""
    vocab = len(orders[0])
    out = torch.empty(len(orders), vocab)
    for t, order in enumerate(orders):
        for rank, tok in enumerate(order):
            out[t, tok] = float(vocab - rank)
    return out


# Example A: 2 prompt positions, target tokens [3, 1, 4] at positions 2..4.
# Shifted: logits[1] -> 3 (argmax 3, right), logits[2] -> 1 (argmax 1, right),
# logits[3] -> 4 (argmax 0, wrong)  => 2/3.  logits[0], logits[4] predict nothing scored.
A_LABELS = [X, X, 3, 1, 4]
A_ARGMAX = [4, 3, 1, 0, 2]
# Example B (right-padded to 5): 2 prompt positions, one target token 2 at position 2, 2 pads.
# Shifted: logits[1] -> 2 (argmax 2, right) => 1/1.  Pad positions argmax 0/1 are not scored.
B_LABELS = [X, X, 2, X, X]
B_ARGMAX = [0, 2, 1, 0, 1]


def test_two_of_three_target_tokens():
    acc = token_accuracy(argmax_logits(A_ARGMAX, 5)[None], torch.tensor([A_LABELS]))
    assert acc.shape == (1,)
    assert acc.item() == pytest.approx(2 / 3)


def test_per_example_not_per_batch_and_padding_ignored():
    logits = torch.stack([argmax_logits(A_ARGMAX, 5), argmax_logits(B_ARGMAX, 5)])
    acc = token_accuracy(logits, torch.tensor([A_LABELS, B_LABELS]))
    # per example [2/3, 1/1]; pooling the batch would give 3/4, counting pads 1/3 for B.
    assert acc.tolist() == pytest.approx([2 / 3, 1.0])
    # B alone, unpadded, gives the same number: batching does not change it.
    alone = token_accuracy(argmax_logits(B_ARGMAX[:3], 5)[None], torch.tensor([B_LABELS[:3]]))
    assert alone.item() == acc[1].item()


def test_no_target_tokens_is_an_error():
    with pytest.raises(ValueError, match="no target tokens"):
        token_accuracy(torch.zeros(1, 3, 5), torch.tensor([[X, X, X]]))


# Locality probe: vocab 12, answer tokens at positions 2, 3 => scored logits positions 1, 2.
V = 12
IDENT = list(range(V))
SWAP01 = [1, 0] + list(range(2, V))          # ranks 0 and 1 swapped
SWAP_10_11 = list(range(10)) + [11, 10]      # change below the top 10
REVERSED = IDENT[::-1]
LOC_LABELS = torch.tensor([[X, X, 5, 6]])
PRE = ranked_logits([IDENT, IDENT, IDENT, IDENT])[None]
# position 0 and 3 are not answer-predicting positions: scrambled on purpose.
POST = ranked_logits([REVERSED, SWAP01, SWAP_10_11, REVERSED])[None]


def test_top10_partial_agreement_rank_swap_costs_two_slots():
    # pos 1: swap of ranks 0/1 -> 8 of 10 slots agree; pos 2: top 10 unchanged -> 10 of 10.
    # (8 + 10) / 20 = 0.9
    assert locality_agreement(PRE, POST, LOC_LABELS, k=10).item() == pytest.approx(0.9)


def test_top1_locality():
    # pos 1: top-1 changed 0 -> 1; pos 2: top-1 still 0  => 1/2
    assert locality_agreement(PRE, POST, LOC_LABELS, k=1).item() == pytest.approx(0.5)


def test_unchanged_model_is_fully_local():
    assert locality_agreement(PRE, PRE.clone(), LOC_LABELS, k=10).item() == 1.0


def test_k_clamped_to_vocab():
    # vocab 3, k=10 -> k=3; scored position 0: pre [0,1,2] vs post [0,2,1] => 1/3 agree
    pre = ranked_logits([[0, 1, 2], [0, 1, 2]])[None]
    post = ranked_logits([[0, 2, 1], [2, 1, 0]])[None]
    labels = torch.tensor([[X, 1]])
    assert locality_agreement(pre, post, labels, k=10).item() == pytest.approx(1 / 3)


def test_locality_per_example():
    # example 2: one answer position (labels [X, X, 5, X]), logits[1] is SWAP_10_11 -> 10/10.
    # per example [0.9, 1.0]; pooled slots would be 28/30.
    pre = torch.cat([PRE, PRE])
    post = torch.cat([POST, ranked_logits([REVERSED, SWAP_10_11, REVERSED, REVERSED])[None]])
    labels = torch.tensor([[X, X, 5, 6], [X, X, 5, X]])
    assert locality_agreement(pre, post, labels, k=10).tolist() == pytest.approx([0.9, 1.0])


def test_these_tests_can_fail(monkeypatch):
    """An off-by-one alignment (logits[t] scored against labels[t]) changes the numbers."""

    def unshifted(logits, labels):
        labels = labels[:, 1:]
        return logits[:, 1:], labels, labels != X

    monkeypatch.setattr(metrics, "_shifted", unshifted)
    # accuracy: logits[2..4] argmax [1, 0, 2] vs labels [3, 1, 4] -> 0/3, not 2/3
    acc = token_accuracy(argmax_logits(A_ARGMAX, 5)[None], torch.tensor([A_LABELS]))
    assert acc.item() == 0.0
    # locality: positions 2, 3 -> 10/10 + 0/10 (reversed vs identity) = 0.5, not 0.9
    assert locality_agreement(PRE, POST, LOC_LABELS, k=10).item() == pytest.approx(0.5)


def test_retention_is_mean_reliability_after_all_edits():
    assert retention([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        retention([])


def test_edit_scores_and_aggregate_ignore_none():
    a = EditScores(reliability=1.0, t_generality=0.5, t_locality=1.0)
    b = EditScores(reliability=0.5, t_generality=0.0, m_generality=1.0, t_locality=0.0)
    assert {k: a.to_dict()[k] for k in metrics.SCORE_FIELDS} == {
        "reliability": 1.0, "t_generality": 0.5, "m_generality": None, "t_locality": 1.0,
        "m_locality": None, "t_locality_easyedit": None, "m_locality_easyedit": None}
    agg = aggregate([a, b])
    assert agg["reliability"] == pytest.approx(0.75)
    assert agg["t_generality"] == pytest.approx(0.25)
    assert agg["m_generality"] == 1.0  # only b has it
    assert agg["m_locality"] is None
    assert set(agg) == set(metrics.SCORE_FIELDS)
    with pytest.raises(ValueError):
        EditScores(reliability=1.5)
    assert not math.isnan(agg["t_locality"])


def test_matches_easyedit_formulas_on_a_batch_of_one():
    """EasyEdit's accuracy expression, and the ANSWER-position locality variant (protocol
    "answer", LiveEdit-style), on random logits (one example per batch)."""
    g = torch.Generator().manual_seed(0)
    pre, post = torch.randn(2, 1, 7, 20, generator=g)
    post = pre + 0.3 * post
    labels = torch.tensor([[X, X, X, 4, 9, 2, 11]])
    lg, tg = pre[:, :-1], labels[:, 1:]
    mask = tg != X
    ee_acc = ((lg.argmax(-1) == tg) & mask).sum() / mask.sum()
    assert token_accuracy(pre, labels).item() == pytest.approx(ee_acc.item())
    ans = mask[0]  # EasyEdit slices the answer positions, then compares flattened top-k indices
    for k in (1, 10):
        top = [torch.topk(torch.softmax(x[:, :-1][:, ans], -1), k).indices.view(-1)
               for x in (pre, post)]
        ee_loc = (top[0] == top[1]).float().mean()
        assert 0.0 < ee_loc < 1.0 or k == 1  # a non-trivial value for the top-10 case
        assert locality_agreement(pre, post, labels, k).item() == pytest.approx(ee_loc.item())


# ---------------------------------------------------------------- protocol "easyedit"
# zjunlp/EasyEdit `easyeditor/util/vl_utils.py::topk_token_match` (called from
# `easyeditor/editors/multimodal_editor.py` for locality_acc k=1 and multimodal_locality_acc
# k=10): keep the LAST L = min(T_pre, T_post) positions of both, top-k indices of raw logits,
# element-wise equality of the flattened index tensors, mean over all slots.

def test_easyedit_whole_sequence_not_answer_positions():
    # 4 positions, labels only at the last one (answer slot = shifted position 2).
    pre = argmax_logits([0, 1, 2, 3], 5)[None]
    post = argmax_logits([4, 4, 2, 3], 5)[None]  # prompt positions 0, 1 changed, answer kept
    labels = torch.tensor([[X, X, X, 3]])
    # answer protocol scores only shifted position 2 (argmax 2 == 2): 1.0
    assert metrics.locality_answer_positions(pre, post, labels, 1).item() == 1.0
    # easyedit compares every position (image and prompt too): 2 of 4 agree = 0.5
    assert metrics.topk_token_match(pre, post, 1).item() == pytest.approx(0.5)
    assert metrics.locality_easyedit(pre, post, 1).tolist() == pytest.approx([0.5])


def test_easyedit_last_L_alignment_with_differing_lengths():
    # pre has 5 positions, post 3: EasyEdit keeps pre[-3:] against post[:] (L = 3).
    pre = argmax_logits([9, 9, 1, 2, 3], 10)[None]
    post = argmax_logits([1, 7, 3], 10)[None]
    # pairs (1,1) yes, (2,7) no, (3,3) yes -> 2/3; aligning from the start would give 0/3.
    assert metrics.topk_token_match(pre, post, 1).item() == pytest.approx(2 / 3)
    assert metrics.topk_token_match(post, pre, 1).item() == pytest.approx(2 / 3)  # symmetric in L


def test_easyedit_ordered_topk_and_mean_over_all_slots():
    # one position, vocab 4, k=3: pre order [0,1,2,...], post [1,0,2,...]: ranks 0,1 swapped
    # -> slots (0 vs 1) no, (1 vs 0) no, (2 vs 2) yes = 1/3 (a set comparison would give 1).
    pre = ranked_logits([[0, 1, 2, 3]])[None]
    post = ranked_logits([[1, 0, 2, 3]])[None]
    assert metrics.topk_token_match(pre, post, 3).item() == pytest.approx(1 / 3)
    # a second, identical position: 4 of 6 slots agree (mean over ALL (position, rank) slots).
    pre2 = torch.cat([pre, ranked_logits([[3, 2, 1, 0]])[None]], dim=1)
    post2 = torch.cat([post, ranked_logits([[3, 2, 1, 0]])[None]], dim=1)
    assert metrics.topk_token_match(pre2, post2, 3).item() == pytest.approx(4 / 6)
    assert metrics.topk_token_match(pre2, post2, 99).item() == pytest.approx(6 / 8)  # k clamped to V=4


def test_easyedit_batch_strips_padding_per_row():
    # row 0: 3 real positions then 2 pads; row 1: 5 real. Pads disagree but must not count.
    pre = torch.stack([argmax_logits([1, 2, 3, 0, 0], 5), argmax_logits([1, 1, 1, 1, 1], 5)])
    post = torch.stack([argmax_logits([1, 2, 4, 3, 3], 5), argmax_logits([1, 1, 1, 1, 2], 5)])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    per = metrics.locality_easyedit(pre, post, 1, mask, mask)
    assert per.tolist() == pytest.approx([2 / 3, 4 / 5])
    # row 0 alone, unpadded, as EasyEdit (batch size 1) computes it: the same number
    assert metrics.topk_token_match(pre[:1, :3], post[:1, :3], 1).item() == pytest.approx(per[0].item())
    # with differently padded pre/post of one row (e.g. an in-context prefix): last-L on real tokens
    post_long = torch.cat([argmax_logits([4, 4], 5), argmax_logits([1, 2, 3], 5)])[None]
    v = metrics.locality_easyedit(pre[:1], post_long, 1, mask[:1], torch.ones(1, 5))
    assert v.item() == pytest.approx(1.0)


def test_protocols_differ_on_the_same_edit():
    # the edit changes prompt positions only: answer protocol 1.0, easyedit protocol lower.
    pre = ranked_logits([[0, 1, 2], [0, 1, 2], [2, 1, 0]])[None]
    post = ranked_logits([[1, 0, 2], [0, 1, 2], [2, 1, 0]])[None]
    labels = torch.tensor([[X, X, 0]])
    assert metrics.locality_answer_positions(pre, post, labels, 2).item() == 1.0
    assert metrics.locality_easyedit(pre, post, 2).item() == pytest.approx(4 / 6)


def test_exact_match_option():
    logits = torch.stack([argmax_logits(A_ARGMAX, 5), argmax_logits(B_ARGMAX, 5)])
    labels = torch.tensor([A_LABELS, B_LABELS])
    assert metrics.exact_match(logits, labels).tolist() == [0.0, 1.0]  # A has 2/3 tokens right


def test_scores_carry_their_protocol():
    s = EditScores(reliability=1.0, t_locality=0.9, m_locality=0.94, t_locality_easyedit=0.8,
                   m_locality_easyedit=0.54)
    d = s.to_dict()
    assert d["tagged"]["t_locality@answer"] == 0.9 and d["tagged"]["t_locality@easyedit"] == 0.8
    assert d["tagged"]["m_locality@easyedit"] == 0.54 and d["tagged"]["reliability@easyedit"] == 1.0
    assert d["metric_meta"]["m_locality"] == {"protocol": "answer", "scorer": "top10_ordered_match",
                                              "comparable_group": "answer/top10_ordered_match"}
    assert d["metric_meta"]["m_locality_easyedit"]["protocol"] == "easyedit"
    em = EditScores(reliability=0.0, rel_gen_scorer="exact_match").to_dict()
    assert em["metric_meta"]["reliability"]["scorer"] == "exact_match"
    assert "reliability@easyedit-em" in em["tagged"]
    assert metrics.tagged({"t_locality_easyedit": 0.5}, sep="/", prefix="post.") == {"post.t_locality/easyedit": 0.5}
    agg = aggregate([s, EditScores(t_locality_easyedit=0.6)])
    assert agg["t_locality_easyedit"] == pytest.approx(0.7)
