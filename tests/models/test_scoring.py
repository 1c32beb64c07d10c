"""Propensity scorers: the ONNX model, the fixed priors and the online learner."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from models.customer.profile import Profile
from models.errors import ModelError
from models.learning.features import FeatureBuilder
from models.learning.scoring import BetaBernoulliScorer, OnnxScorer, PriorScorer, PropensityScorer

NOW = 1_750_000_000.0
FEATURES = [
    {"name": "attr.age", "kind": "numeric", "default": 40},
    {"name": "offer.id", "kind": "onehot", "values": ["a", "b", "c"]},
]
WEIGHTS = np.array([0.02, -1.0, 0.5, 1.5], dtype=np.float32)  # age, offer=a, offer=b, offer=c


@dataclass(frozen=True)
class Cand:
    offer_id: str
    group: str = "g"
    channel: str = "web"
    placement: str | None = None
    treatment_id: str = "default"
    value: float = 1.0
    tags: tuple[str, ...] = ()


def logistic_model(
    weights: np.ndarray = WEIGHTS,
    bias: float = -2.0,
    output: str = "two_columns",
    input_name: str = "features",
    width: int | str | None = None,
) -> bytes:
    """A hand-built logistic regression in the shapes skl2onnx and others produce."""
    pytest.importorskip("onnx")  # building graphs needs the train extra; serving does not
    from onnx import TensorProto, helper

    n = len(weights)
    w = helper.make_tensor("w", TensorProto.FLOAT, [n, 1], weights.tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [bias])
    nodes = [
        helper.make_node("MatMul", [input_name, "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
    ]
    inits = [w, b]
    out_type = helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 1])
    if output in ("two_columns", "zipmap"):
        one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
        inits.append(one)
        nodes += [
            helper.make_node("Sub", ["one", "p"], ["q"]),
            helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
        ]
        out_type = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    if output == "zipmap":
        nodes.append(
            helper.make_node(
                "ZipMap", ["probabilities"], ["output_probability"],
                domain="ai.onnx.ml", classlabels_int64s=[0, 1],
            )
        )  # fmt: skip
        out_type = helper.make_value_info(
            "output_probability",
            helper.make_sequence_type_proto(
                helper.make_map_type_proto(
                    TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
                )
            ),
        )
    if output == "raw":  # a score, not a probability
        nodes[-1] = helper.make_node("Identity", ["z"], ["p"])
    graph = helper.make_graph(
        nodes,
        "lr",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, width or n])],
        [out_type],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    return model.SerializeToString()


def expected(age: float, offers: list[str]) -> np.ndarray:
    onehot = {"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1]}
    X = np.array([[age, *onehot[o]] for o in offers], dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(X @ WEIGHTS - 2.0)))


@pytest.fixture
def profile() -> Profile:
    return Profile("c1", attrs={"age": 30})


class CountingSession:
    """Wraps an InferenceSession to count ``run`` calls."""

    def __init__(self, session: object) -> None:
        self.session, self.runs = session, 0

    def run(self, *args: object) -> list:
        self.runs += 1
        return self.session.run(*args)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("output", "output_name", "fmt"),
    [
        ("two_columns", "probabilities", "probabilities"),
        ("one_column", "p", "probability"),
        ("zipmap", "output_probability", "zipmap"),
    ],
)
def test_onnx_scorer_scores_all_candidates_in_one_run(
    profile: Profile, output: str, output_name: str, fmt: str
) -> None:
    scorer = OnnxScorer(
        logistic_model(output=output), FeatureBuilder(FEATURES), "t1",
        output_name=output_name, output_format=fmt,
    )  # fmt: skip
    counting = CountingSession(scorer._session)
    scorer._session = counting  # type: ignore[assignment]
    offers = ["a", "b", "c", "a", "b", "c", "c"]
    X = scorer.features(profile, {"channel": "web"}, [Cand(o) for o in offers], NOW)
    p = scorer.predict(X)
    assert counting.runs == 1
    assert p.shape == (7,) and ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p, expected(30, offers), rtol=1e-5)
    assert isinstance(scorer, PropensityScorer)
    assert scorer.predict(X[:0]).shape == (0,)


def test_onnx_scorer_refuses_a_model_narrower_than_its_features() -> None:
    with pytest.raises(ModelError, match="3 features wide but the manifest lists 4"):
        OnnxScorer(logistic_model(WEIGHTS[:3]), FeatureBuilder(FEATURES), "t1")


def test_onnx_scorer_refuses_symbolic_width_that_fails_at_run_time() -> None:
    model = logistic_model(WEIGHTS[:3], width="n_features")
    with pytest.raises(ModelError, match="fails on a \\[2, 4\\] input"):
        OnnxScorer(model, FeatureBuilder(FEATURES), "t1")


def test_onnx_scorer_refuses_wrong_input_name_and_missing_output() -> None:
    model = logistic_model(input_name="X")
    with pytest.raises(ModelError, match="input is 'X'"):
        OnnxScorer(model, FeatureBuilder(FEATURES), "t1")
    with pytest.raises(ModelError, match="no output 'label'"):
        OnnxScorer(logistic_model(), FeatureBuilder(FEATURES), "t1", output_name="label")


def test_onnx_scorer_refuses_outputs_that_are_not_probabilities() -> None:
    with pytest.raises(ModelError, match="does not give one probability per row"):
        OnnxScorer(
            logistic_model(output="raw", bias=5.0), FeatureBuilder(FEATURES), "t1",
            output_name="p", output_format="probability",
        )  # fmt: skip


def test_onnx_scorer_refuses_bytes_that_are_not_onnx() -> None:
    with pytest.raises(ModelError, match="cannot load the ONNX model"):
        OnnxScorer(b"not a model", FeatureBuilder(FEATURES), "t1")


def test_prior_scorer_uses_offer_then_group_then_default(profile: Profile) -> None:
    scorer = PriorScorer({"a": 0.3}, {"credit": 0.1}, default=0.01, name="bank")
    cands = [Cand("a", "credit"), Cand("b", "credit"), Cand("c", "service")]
    p = scorer.predict(scorer.features(profile, {}, cands, NOW))
    assert p.tolist() == pytest.approx([0.3, 0.1, 0.01])
    assert scorer.version == "prior-bank"
    assert isinstance(scorer, PropensityScorer)
    assert scorer.features(profile, {}, [], NOW).shape == (0, 1)


def test_prior_scorer_refuses_probabilities_outside_0_1() -> None:
    with pytest.raises(ModelError) as err:
        PriorScorer({"a": 1.5})
    assert err.value.field == "by_offer.a"


def test_beta_bernoulli_learns_from_outcomes(profile: Profile) -> None:
    scorer = BetaBernoulliScorer(alpha=1, beta=9)
    cands = [Cand("a"), Cand("b")]
    before = scorer.predict(scorer.features(profile, {}, cands, NOW))
    assert before.tolist() == pytest.approx([0.1, 0.1])
    for _ in range(10):
        scorer.learn_one(cands[0], True)
        scorer.learn_one("b", False)
    after = scorer.predict(scorer.features(profile, {}, cands, NOW))
    assert after.tolist() == pytest.approx([11 / 20, 1 / 20])
    assert scorer.posterior("a") == (11.0, 9.0)
    assert isinstance(scorer, PropensityScorer) and scorer.version == "beta-online"


def test_beta_bernoulli_per_channel_keeps_channels_apart(profile: Profile) -> None:
    scorer = BetaBernoulliScorer(alpha=1, beta=1, per_channel=True, sample=True, seed=3)
    scorer.learn_one("a", True, channel="web")
    assert scorer.posterior("a@web") == (2.0, 1.0)
    assert scorer.posterior("a@sms") == (1.0, 1.0)
    p = scorer.predict(scorer.features(profile, {}, [Cand("a", channel="sms")] * 5, NOW))
    assert ((p >= 0) & (p <= 1)).all()
