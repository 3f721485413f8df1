"""Weight soups: exact averages, the greedy rule on the selection part, and the soup as one
candidate of the ensemble (shown, never ranked among members, shipped by ``combine: soup``)."""

from __future__ import annotations

import numpy as np
import torch

from ffdi_tune.data.layout import load_images, read_split
from ffdi_tune.data.settings import DataConfig
from ffdi_tune.ensemble.build import MemberPredictions, build_ensemble
from ffdi_tune.ensemble.recipe import EnsembleRecipe
from ffdi_tune.ensemble.soup import average_state_dicts, greedy_soup, soup_group_key
from ffdi_tune.models.factory import create_model
from ffdi_tune.scoring.metrics import roc_auc
from ffdi_tune.scoring.predict import member_from_checkpoint, predict_views

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_state_dicts_are_averaged_exactly_with_batch_norm_statistics():
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = create_model("test_resnet")
        m.train()
        m(torch.randn(4, 3, 32, 32))  # move the batch-norm statistics off their start
        models.append(m.state_dict())
    soup = average_state_dicts(models)
    for key, value in soup.items():
        if value.is_floating_point():
            expected = (models[0][key].double() + models[1][key] + models[2][key]) / 3
            assert torch.allclose(value.double(), expected, atol=1e-7), key
        else:  # batch-norm step counts: the first's
            assert torch.equal(value, models[0][key])
    assert "bn1.running_mean" in soup and not torch.equal(
        soup["bn1.running_mean"], models[0]["bn1.running_mean"]
    )


def _checkpoint(state_dict) -> dict:
    return {
        "state_dict": state_dict,
        "backbone": "test_resnet",
        "input": "rgb",
        "img_size": 32,
        "eval_img_size": 32,
        "mean": MEAN,
        "std": STD,
        "weights_sha256": "same",
    }


def _auc(checkpoint, images, targets) -> float:
    member = member_from_checkpoint(checkpoint, "m", torch.device("cpu"))
    return roc_auc(targets, predict_views(member, images, ["identity"])[0])


def test_a_member_joins_the_soup_only_when_the_selection_auc_rises(tiny_data):
    """Two heads with opposite noise around a good head: each alone is worse, their average is
    the good head itself, so the second joins; a head pointing the other way would drag the soup
    to a constant and is left out; an identical copy adds nothing and is left out."""
    from sklearn.linear_model import LogisticRegression

    val = read_split(DataConfig(root=str(tiny_data)), "val")
    images, targets = load_images(val, 32), val.targets
    torch.manual_seed(0)
    model = create_model("test_resnet").eval()
    state = model.state_dict()
    # the good head: a logistic regression on the body's features of these very images
    x = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    fit = LogisticRegression(C=100.0, max_iter=5000).fit(features, targets)
    coef = torch.tensor(fit.coef_[0], dtype=torch.float32)
    w = torch.stack([-coef / 2, coef / 2])  # log-odds = (w1 - w0) . f + b1 - b0
    bias = torch.tensor([-fit.intercept_[0] / 2, fit.intercept_[0] / 2], dtype=torch.float32)
    noise = 3 * coef.abs().max() * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))

    def with_head(weight):
        return _checkpoint({**state, "fc.weight": weight, "fc.bias": bias})

    a, b, flipped = with_head(w + noise), with_head(w - noise), with_head(-w)
    alone = {"a": _auc(a, images, targets), "b": _auc(b, images, targets)}
    together = _auc(with_head(w), images, targets)  # the average of a and b
    assert together > max(alone.values()) + 0.05  # the case this test is built on
    soup = greedy_soup([a, b, flipped, a], ["a", "b", "flipped", "copy"], images, targets)
    assert soup.ingredients == sorted(alone, key=lambda n: -alone[n])  # best first, both in
    assert abs(soup.select_auc - together) < 1e-9
    assert soup.checkpoint["soup_ingredients"] == soup.ingredients
    assert torch.allclose(soup.checkpoint["state_dict"]["fc.weight"], w, atol=1e-5)
    assert soup_group_key(soup.checkpoint) == soup_group_key(a)


def test_the_soup_is_a_candidate_of_its_own_that_combine_soup_ships():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 40)
    idx = np.arange(80)
    sel, rep = idx[(idx // 2) % 2 == 0], idx[(idx // 2) % 2 == 1]

    def member(name, strength, soup=False):
        val = strength * (2 * y - 1) + rng.normal(0, 1, 80)
        return MemberPredictions(name, name, ["identity"], val[None], val[None, :5], soup=soup)

    members = [member("m1", 0.5), member("m2", 0.4), member("soup-m1", 1.5, soup=True)]
    recipe = EnsembleRecipe(top_k=2, combine="soup", tta=["identity"])
    result = build_ensemble(members, y, recipe, sel, rep)
    # shown after the ranked members, never among them
    assert list(result.table["kind"][:3]) == ["member", "member", "soup"]
    assert result.members == ["soup-m1"] and result.chosen == "soup"
    assert np.allclose(result.test_pred, 1 / (1 + np.exp(-members[2].test[0])))
    # auto weighs the soup against every combination of members on the selection part
    auto = build_ensemble(members, y, EnsembleRecipe(top_k=2, tta=["identity"]), sel, rep)
    assert auto.chosen == "soup"
    # without a soup, combine: soup ships the best member
    plain = build_ensemble(members[:2], y, recipe, sel, rep)
    assert plain.members == ["m1"] or plain.members == ["m2"]
    assert len(plain.members) == 1 and plain.members[0] == plain.table.iloc[0]["member"]
